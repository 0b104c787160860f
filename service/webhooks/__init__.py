"""Signed webhooks per the Standard Webhooks spec: endpoints, a transactional outbox and a delivery loop."""
