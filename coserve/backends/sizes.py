"""Sizes of a model's runtime state that the memory budgets count (KV cache), from its files."""

from __future__ import annotations

import json
from pathlib import Path

from coserve.backends.gguf_header import kv_cache_bytes, read_header
from coserve.errors import AssetError

__all__ = ["model_kv_bytes"]


def model_kv_bytes(path: Path, n_ctx: int, width: int) -> int:
    """KV-cache bytes for ``n_ctx`` tokens, from a GGUF header or a model folder's config.json."""
    if not path.is_dir():
        return kv_cache_bytes(read_header(path), n_ctx, width)
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise AssetError(f"{path}: no readable config.json ({exc})") from None
    config = config.get("text_config", config)
    heads = int(config.get("num_attention_heads", 1))
    head_dim = int(config.get("head_dim") or int(config.get("hidden_size", 0)) // max(heads, 1))
    kv_heads = int(config.get("num_key_value_heads") or heads)
    return 2 * int(config.get("num_hidden_layers", 0)) * kv_heads * head_dim * n_ctx * width
