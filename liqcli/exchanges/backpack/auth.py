"""Backpack ED25519 request signing (TRADING-VENUES.md §1.1, §1.2, §1.7).

The signed string is ``instruction=<X>&<params sorted by key>&timestamp=<ms>&window=<ms>``:
``instruction`` first, then the body keys (or the query keys of a GET) sorted alphabetically,
values rendered as JSON text without quotes (strings as-is, booleans ``true``/``false``), no
URL-encoding. A batch of orders is one ``instruction=orderExecute&...`` group per order, joined
with ``&``, then ``timestamp`` and ``window`` once. The signature is base64 of the 64-byte ED25519
signature; the secret is base64 of the 32-byte seed, the API key base64 of the public key.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from liqcli.errors import UsageError

DEFAULT_WINDOW_MS = 5_000
MAX_WINDOW_MS = 60_000


def render_value(value: Any) -> str:
    """A parameter value as Backpack signs it: JSON text with surrounding quotes trimmed."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)


def _pairs(params: Mapping[str, Any]) -> str:
    return "&".join(
        f"{k}={render_value(params[k])}" for k in sorted(params) if params[k] is not None
    )


def signing_string(
    instruction: str, params: Mapping[str, Any] | None, timestamp: int, window: int
) -> str:
    body = _pairs(params or {})
    head = f"instruction={instruction}" + (f"&{body}" if body else "")
    return f"{head}&timestamp={timestamp}&window={window}"


def batch_signing_string(
    instruction: str, items: Sequence[Mapping[str, Any]], timestamp: int, window: int
) -> str:
    groups = []
    for item in items:
        body = _pairs(item)
        groups.append(f"instruction={instruction}" + (f"&{body}" if body else ""))
    return "&".join(groups) + f"&timestamp={timestamp}&window={window}"


class BackpackSigner:
    """Holds the key pair; never prints or logs the secret (``repr`` shows the key id only)."""

    def __init__(self, api_key: str, api_secret: str, *, window_ms: int = DEFAULT_WINDOW_MS):
        if not api_key or not api_secret:
            raise UsageError(
                "Backpack keys missing: set LIQ_BACKPACK_API_KEY and LIQ_BACKPACK_API_SECRET "
                "(or api_key/api_secret under [mm.backpack] in the config file)"
            )
        try:
            seed = base64.b64decode(api_secret, validate=True)
        except (binascii.Error, ValueError):
            raise UsageError("LIQ_BACKPACK_API_SECRET is not valid base64") from None
        if len(seed) != 32:
            raise UsageError(
                f"LIQ_BACKPACK_API_SECRET must be base64 of a 32-byte ED25519 seed (got {len(seed)} bytes)"
            )
        if not 0 < window_ms <= MAX_WINDOW_MS:
            raise UsageError(f"window must be 1..{MAX_WINDOW_MS} ms, got {window_ms}")
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        public = self._key.public_key().public_bytes_raw()
        if base64.b64encode(public).decode() != api_key.strip():
            raise UsageError(
                "LIQ_BACKPACK_API_KEY does not match LIQ_BACKPACK_API_SECRET "
                "(the key is the base64 public key of that seed)"
            )
        self.api_key = api_key.strip()
        self.window_ms = window_ms

    def __repr__(self) -> str:
        return f"BackpackSigner(api_key={self.api_key[:6]}…)"

    def sign(self, message: str) -> str:
        return base64.b64encode(self._key.sign(message.encode())).decode()

    def headers(
        self, instruction: str, params: Mapping[str, Any] | None, timestamp: int
    ) -> dict[str, str]:
        message = signing_string(instruction, params, timestamp, self.window_ms)
        return self._headers(message, timestamp)

    def batch_headers(
        self, instruction: str, items: Sequence[Mapping[str, Any]], timestamp: int
    ) -> dict[str, str]:
        message = batch_signing_string(instruction, items, timestamp, self.window_ms)
        return self._headers(message, timestamp)

    def _headers(self, message: str, timestamp: int) -> dict[str, str]:
        return {
            "X-API-Key": self.api_key,
            "X-Signature": self.sign(message),
            "X-Timestamp": str(timestamp),
            "X-Window": str(self.window_ms),
        }

    def ws_signature(self, timestamp: int) -> list[str]:
        """The ``signature`` array of a private-stream SUBSCRIBE."""
        message = signing_string("subscribe", None, timestamp, self.window_ms)
        return [self.api_key, self.sign(message), str(timestamp), str(self.window_ms)]


def verify(api_key_b64: str, message: str, signature_b64: str) -> bool:
    """Check a signature with the public key (the fake server's side; also handy for users)."""
    try:
        public = Ed25519PublicKey.from_public_bytes(base64.b64decode(api_key_b64))
        public.verify(base64.b64decode(signature_b64), message.encode())
    except (InvalidSignature, ValueError, binascii.Error):
        return False
    return True
