"""The ``server`` section of a library file: admission limits, body limits, API keys with their
per-key limits, and the decision log (``server.log``, coserve.config_log); and ``parse_bytes``,
the size reader every section uses (``4MiB``, ``2GiB``).

A leaf like coserve.config (which embeds ServerSettings and re-exports all of this): it knows
nothing about HTTP, hashing a presented key or counting requests; coserve.server applies what is
validated here (docs/operations.md).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from coserve.config_log import DecisionLogSettings

__all__ = ["ApiKey", "ServerSettings", "parse_bytes"]

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_bytes(value: int | float | str) -> int:
    """``"2GiB"`` / ``"512 MB"`` / ``1048576`` -> bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 2GiB")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return int(value)
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", value)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"cannot read {value!r} as a size; use e.g. 512MiB or 2GiB")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


_DIGEST = re.compile(r"[0-9a-fA-F]{64}")
# What a browser sends in an Origin header: scheme://host[:port], the host a name, an IPv4 or [an IPv6] address.
_ORIGIN = re.compile(r"https?://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?")


class ApiKey(BaseModel):
    """One accepted key with its limits (``server.api_keys`` may also hold a bare digest: no limits)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sha256: str  # hex digest of the key (``coserve keys hash KEY``)
    requests_per_minute: int | None = Field(None, ge=1)  # token bucket: this many per minute, bursts of as many
    tokens_per_day: int | None = Field(None, ge=1)  # prompt + completion tokens per UTC day
    revoked: bool = False  # refused with 401 revoked_api_key

    @field_validator("sha256")
    @classmethod
    def _digest(cls, value: str) -> str:
        if not _DIGEST.fullmatch(value):
            raise ValueError("not a sha256 hex digest; use `coserve keys hash KEY`")  # never echo the value
        return value.lower()


class ServerSettings(BaseModel):
    """Limits and access of the HTTP server."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_pending: int = Field(64, ge=1)  # chat requests admitted at once (in flight + queued)
    max_pending_per_expert: int = Field(32, ge=1)  # the same bound for one routed expert
    max_body_bytes: int = 4 * 2**20  # a chat body larger than this is refused (400)
    max_messages: int = Field(256, ge=1)  # messages in one chat body
    # A chat parameter OpenAI does not define: a 400 naming it, or (ignore) dropped, for clients that send extras.
    unknown_parameters: Literal["refuse", "ignore"] = "refuse"
    api_keys: tuple[ApiKey, ...] = ()  # accepted keys; a bare digest in the file means ApiKey(sha256=digest)
    api_keys_env: str | None = None  # environment variable with comma-separated plaintext keys
    protect_metrics: bool = False  # /health and /metrics need a key too
    # Browser pages on these origins may call the API (CORS; "*" for any); none: same origin only.
    cors_origins: tuple[str, ...] = ()
    log: DecisionLogSettings = DecisionLogSettings()

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for i, origin in enumerate(value):
            if origin != "*" and not _ORIGIN.fullmatch(origin):
                raise ValueError(
                    f"cors_origins[{i}] {origin!r} is not an origin: scheme://host[:port], no path "
                    "(e.g. https://app.example.com), or *"
                )
        return value

    @field_validator("max_body_bytes", mode="before")
    @classmethod
    def _size(cls, value: Any) -> int:
        size = parse_bytes(value)
        if size < 1:
            raise ValueError("must be at least 1 byte")
        return size

    @field_validator("api_keys", mode="before")
    @classmethod
    def _bare_digests(cls, value: Any) -> Any:
        if not isinstance(value, (list, tuple)):
            return value
        entries = []
        for i, entry in enumerate(value):
            if isinstance(entry, str):
                if not _DIGEST.fullmatch(entry):
                    # The message must not echo the value: it may be a plaintext key put here by mistake.
                    raise ValueError(f"api_keys[{i}] is not a sha256 hex digest; use `coserve keys hash KEY`")
                entry = {"sha256": entry}
            entries.append(entry)
        return entries

    @field_validator("api_keys")
    @classmethod
    def _distinct(cls, value: tuple[ApiKey, ...]) -> tuple[ApiKey, ...]:
        seen: set[str] = set()
        for i, key in enumerate(value):
            if key.sha256 in seen:
                raise ValueError(f"api_keys[{i}] repeats an earlier key")
            seen.add(key.sha256)
        return value
