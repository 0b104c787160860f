"""Synchronous bit allocation: ``POST /v1/allocate`` in front of :mod:`solver`."""
