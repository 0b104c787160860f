"""Shared infrastructure of the service: database plumbing, errors, common schemas."""
