"""Run a POST handler at most once per ``Idempotency-Key`` (IETF httpapi draft ``idempotency-key-header``).

- no key: the handler just runs;
- first request with a key: the handler runs and its response (status and JSON body) is stored;
- the same key and the same request (method, path, body) again: the stored response, with
  ``Idempotent-Replayed: true``;
- the same key with another request: 422 ``idempotency_key_reused``;
- while the first request is still running: 409 ``idempotency_request_in_progress``.

A handler that fails with an error releases the key, so the client may retry the same request. Keys are per
tenant and expire after ``MPQ_IDEMPOTENCY_TTL`` seconds (24 h).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Header, Request, Response
from pydantic import BaseModel

from service.auth.service import CurrentTenant
from service.idempotency.store import IdempotencyStore

__all__ = ["IDEMPOTENCY_HEADER", "IdempotencyKeyDep", "fingerprint", "run_idempotent"]

IDEMPOTENCY_HEADER = "Idempotency-Key"

IdempotencyKeyDep = Annotated[
    str | None,
    Header(
        alias=IDEMPOTENCY_HEADER,
        min_length=1,
        max_length=255,
        description="Makes retries safe: the same key and body return the first response (kept 24 h)",
    ),
]


def fingerprint(method: str, path: str, body: Any) -> str:
    """sha256 hex of the method, path and canonical JSON of ``body`` (what identifies "the same request")."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(f"{method.upper()} {path}\n{canonical}".encode()).hexdigest()


def _clean_key(raw: str) -> str:
    # The draft sends the key as a structured-field string ("..."); plain tokens are accepted too.
    key = raw.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    return key


def run_idempotent(
    request: Request,
    tenant: CurrentTenant,
    key: str | None,
    body: Any,
    handler: Callable[[], tuple[int, BaseModel]],
) -> Response:
    """Answer with ``handler()``'s ``(status, model)`` as JSON, or replay the response stored for ``key``."""
    if key is None:
        status_code, model = handler()
        return Response(model.model_dump_json(), status_code=status_code, media_type="application/json")
    key = _clean_key(key)
    settings = request.app.state.settings
    store = IdempotencyStore(request.app.state.session_factory, settings.idempotency_ttl)
    stored = store.begin(tenant.id, key, fingerprint(request.method, request.url.path, body))
    if stored is not None:
        return Response(
            json.dumps(stored.body),
            status_code=stored.status_code,
            media_type="application/json",
            headers={"Idempotent-Replayed": "true", IDEMPOTENCY_HEADER: key},
        )
    try:
        status_code, model = handler()
    except BaseException:
        store.release(tenant.id, key)
        raise
    payload = model.model_dump(mode="json")
    store.complete(tenant.id, key, status_code, payload)
    return Response(
        json.dumps(payload),
        status_code=status_code,
        media_type="application/json",
        headers={IDEMPOTENCY_HEADER: key},
    )
