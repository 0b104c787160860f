"""Standard Webhooks signatures (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``) via the
``standardwebhooks`` library: ``v1,`` + base64 HMAC-SHA256 of ``"{id}.{timestamp}.{body}"``.

During a secret rotation's overlap window a delivery is signed with both secrets: the header holds two
space-separated ``v1,`` entries (new secret first), which the spec allows and every verifying library accepts
when any one of them matches its secret.
"""

from __future__ import annotations

import base64
import datetime as dt
import secrets as _secrets
from collections.abc import Sequence

from standardwebhooks.webhooks import Webhook

__all__ = ["new_secret", "signed_headers"]


def new_secret() -> str:
    """A fresh signing secret: ``whsec_`` + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(_secrets.token_bytes(32)).decode()


def signed_headers(
    secret: str | Sequence[str], message_id: str, body: str, timestamp: dt.datetime
) -> dict[str, str]:
    """The three Standard Webhooks headers for ``body`` (the exact bytes sent) at ``timestamp``.

    ``secret`` is one secret or several (the current one first, then a rotated-out one still in its overlap
    window); the signature header then lists one ``v1,`` entry per secret, separated by spaces.
    """
    timestamp = timestamp.astimezone(dt.UTC)
    keys = [secret] if isinstance(secret, str) else list(secret)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": " ".join(Webhook(key).sign(message_id, timestamp, body) for key in keys),
        "content-type": "application/json",
    }
