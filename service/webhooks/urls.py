"""Which webhook URLs are allowed: http(s) only, and public addresses unless the operator allows private ones.

Checked when an endpoint is registered and again before every delivery (a name may resolve elsewhere later).
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from service.errors import UnprocessableEntity

__all__ = ["check_webhook_url", "is_private_address"]


def is_private_address(address: str) -> bool:
    """True for loopback, private, link-local, multicast, reserved and unspecified IPv4/IPv6 addresses."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def check_webhook_url(url: str, *, allow_private: bool) -> str:
    """Return ``url`` when it may receive webhooks; 422 ``invalid_webhook_url`` saying why otherwise."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnprocessableEntity(f"url: not a valid URL ({exc})", code="invalid_webhook_url") from exc
    if parts.scheme not in ("http", "https"):
        raise UnprocessableEntity(
            "url: only http:// and https:// URLs can receive webhooks", code="invalid_webhook_url"
        )
    host = parts.hostname
    if not host:
        raise UnprocessableEntity("url: the URL has no host", code="invalid_webhook_url")
    if parts.username or parts.password:
        raise UnprocessableEntity("url: credentials in the URL are not accepted", code="invalid_webhook_url")
    if allow_private:
        return url
    try:
        infos = socket.getaddrinfo(
            host, port or (443 if parts.scheme == "https" else 80), type=socket.SOCK_STREAM
        )
    except OSError as exc:
        raise UnprocessableEntity(
            f"url: cannot resolve {host!r} ({exc})", code="invalid_webhook_url"
        ) from exc
    for info in infos:
        address = str(info[4][0])
        if is_private_address(address):
            raise UnprocessableEntity(
                f"url: {host} resolves to the private or loopback address {address}; webhooks go to public "
                "addresses only (an operator may allow private ones with MPQ_WEBHOOK_ALLOW_PRIVATE=true)",
                code="webhook_url_not_public",
            )
    return url
