"""Tenants and API keys: creation (CLI), verification (every non-health route)."""
