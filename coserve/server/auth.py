"""API keys: which bearer tokens the server accepts, held as sha256 digests only.

Keys come from the library's ``server.api_keys`` (hex digests, or entries with limits and a
``revoked`` flag) and from the environment variable named by ``server.api_keys_env``
(comma-separated plaintext keys, hashed when the server starts; a variable named but unset or
empty, with no digest listed, stops the start rather than serve without keys). A presented key is hashed and
compared with every digest in constant time; a revoked key is refused with its own code. No key,
plaintext or digest, is ever logged or put in an error message. The per-key limits themselves are
kept by coserve.server.quota.

This module knows nothing about routes or HTTP beyond the ``Authorization`` header's value.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable, Mapping

from coserve.config import ApiKey
from coserve.errors import ConfigError, Unauthorized

__all__ = ["KeyRing", "hash_key"]


def hash_key(key: str) -> str:
    """The sha256 hex digest of a key, as ``server.api_keys`` holds it."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class KeyRing:
    """The accepted keys' digests, and which of them are revoked."""

    def __init__(self, keys: Iterable[str | ApiKey] = ()):
        entries = [ApiKey(sha256=key) if isinstance(key, str) else key for key in keys]
        self._digests = tuple(bytes.fromhex(key.sha256) for key in entries)
        self._revoked = tuple(key.revoked for key in entries)

    @classmethod
    def from_settings(
        cls, keys: Iterable[str | ApiKey], env_name: str | None, environ: Mapping[str, str] | None = None
    ) -> KeyRing:
        """Keys from the config plus the hashed plaintext keys of ``environ[env_name]``; ConfigError
        when ``env_name`` is named but gives no key and the config lists none: naming a key variable
        asks for keys, and an unset one must not leave the server open to anyone."""
        environ = os.environ if environ is None else environ
        plain = environ.get(env_name, "") if env_name else ""
        from_env = [hash_key(key.strip()) for key in plain.split(",") if key.strip()]
        ring = cls([*keys, *from_env])
        if env_name and not ring.required:
            raise ConfigError(
                f"server.api_keys_env: {env_name} is not set or holds no key, and server.api_keys lists none: "
                f"the server would be open to anyone; set {env_name}, or leave api_keys_env out to serve without keys"
            )
        return ring

    @property
    def required(self) -> bool:
        """Whether any key is configured (if none, the server is open)."""
        return bool(self._digests)

    def check(self, authorization: str | None) -> str:
        """The key's hex digest; Unauthorized unless ``authorization`` is ``Bearer <a known, live key>``."""
        if not authorization:
            raise Unauthorized("no API key: send the header 'Authorization: Bearer <key>'", code="missing_api_key")
        scheme, _, key = authorization.strip().partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise Unauthorized("the Authorization header must be 'Bearer <key>'", code="missing_api_key")
        presented = hashlib.sha256(key.encode("utf-8")).digest()
        match = -1
        for i, digest in enumerate(self._digests):  # every digest is compared: the time does not tell which
            if hmac.compare_digest(presented, digest) and match < 0:
                match = i
        if match < 0:
            raise Unauthorized("the API key is not valid", code="invalid_api_key")
        if self._revoked[match]:
            raise Unauthorized("the API key has been revoked", code="revoked_api_key")
        return presented.hex()
