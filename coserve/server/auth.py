"""API keys: which bearer tokens the server accepts, held as sha256 digests only.

Keys come from the library's ``server.api_keys`` (hex digests) and from the environment variable
named by ``server.api_keys_env`` (comma-separated plaintext keys, hashed when the server starts).
A presented key is hashed and compared with every digest in constant time. No key, plaintext or
digest, is ever logged or put in an error message.

This module knows nothing about routes or HTTP beyond the ``Authorization`` header's value.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable, Mapping

from coserve.errors import Unauthorized

__all__ = ["KeyRing", "hash_key"]


def hash_key(key: str) -> str:
    """The sha256 hex digest of a key, as ``server.api_keys`` holds it."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class KeyRing:
    """The accepted keys' digests."""

    def __init__(self, digests: Iterable[str] = ()):
        self._digests = tuple(bytes.fromhex(d) for d in digests)

    @classmethod
    def from_settings(
        cls, digests: Iterable[str], env_name: str | None, environ: Mapping[str, str] | None = None
    ) -> KeyRing:
        """Digests from the config plus the hashed plaintext keys of ``environ[env_name]``."""
        environ = os.environ if environ is None else environ
        plain = environ.get(env_name, "") if env_name else ""
        from_env = [hash_key(key.strip()) for key in plain.split(",") if key.strip()]
        return cls([*digests, *from_env])

    @property
    def required(self) -> bool:
        """Whether any key is configured (if none, the server is open)."""
        return bool(self._digests)

    def check(self, authorization: str | None) -> None:
        """Unauthorized unless ``authorization`` is ``Bearer <a known key>``."""
        if not authorization:
            raise Unauthorized("no API key: send the header 'Authorization: Bearer <key>'", code="missing_api_key")
        scheme, _, key = authorization.strip().partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise Unauthorized("the Authorization header must be 'Bearer <key>'", code="missing_api_key")
        presented = hashlib.sha256(key.encode("utf-8")).digest()
        match = False
        for digest in self._digests:  # every digest is compared: the time does not tell which matched
            match |= hmac.compare_digest(presented, digest)
        if not match:
            raise Unauthorized("the API key is not valid", code="invalid_api_key")
