"""Uploaded artifacts: content-addressed safetensors files of weights or images."""
