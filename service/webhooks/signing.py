"""Standard Webhooks signatures (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``) via the
``standardwebhooks`` library: ``v1,`` + base64 HMAC-SHA256 of ``"{id}.{timestamp}.{body}"``."""

from __future__ import annotations

import base64
import datetime as dt
import secrets

from standardwebhooks.webhooks import Webhook

__all__ = ["new_secret", "signed_headers"]


def new_secret() -> str:
    """A fresh signing secret: ``whsec_`` + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def signed_headers(secret: str, message_id: str, body: str, timestamp: dt.datetime) -> dict[str, str]:
    """The three Standard Webhooks headers for ``body`` (the exact bytes sent) at ``timestamp``."""
    timestamp = timestamp.astimezone(dt.UTC)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": Webhook(secret).sign(message_id, timestamp, body),
        "content-type": "application/json",
    }
