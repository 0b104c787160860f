"""Quantization jobs: creation, listing, cancel, report, bundle download, reallocation, and their execution."""
