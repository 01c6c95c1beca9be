"""A transformers model's weights as one flat host buffer, and device copies made from it.

``pack`` moves every parameter and buffer of a model into one (optionally pinned) uint8 host
buffer and makes the model use views of it; ``to_device`` builds a device model from that buffer
with one allocation and one copy; ``release_device`` gives the device memory back while keeping
the module tree. Used by coserve.backends.transformers_hf; this module knows nothing about
experts' tiers or generation, and imports torch only when called.
"""

from __future__ import annotations

from typing import Any

from coserve.config import ExpertSpec
from coserve.errors import ExpertLoadError

__all__ = ["Layout", "pack", "release_device", "to_device"]

# (name, offset in the flat buffer, dtype, shape, is parameter) of every tensor of a model
Layout = list[tuple[str, int, Any, tuple[int, ...], bool]]

_ALIGN = 256  # bytes: every tensor of the flat buffer starts on this boundary


def _entries(model: Any) -> list[tuple[str, Any, bool]]:
    """(name, tensor, is parameter) of every parameter and buffer, tied names included."""
    params = [(n, t, True) for n, t in model.named_parameters(remove_duplicate=False)]
    return params + [(n, t, False) for n, t in model.named_buffers(remove_duplicate=False)]


def pack(model: Any, pin: bool) -> tuple[Any, Layout]:
    """Move every tensor of ``model`` into one flat uint8 host buffer (pinned if asked) and make the
    model use views of it. Tied tensors share one offset. Returns (buffer, layout)."""
    import torch

    offsets: dict[int, int] = {}
    layout: Layout = []
    total = 0
    for name, tensor, is_param in _entries(model):
        key = tensor.data_ptr()
        if key not in offsets:
            offsets[key] = total
            total += -(-tensor.numel() * tensor.element_size() // _ALIGN) * _ALIGN
        layout.append((name, offsets[key], tensor.dtype, tuple(tensor.shape), is_param))
    flat = torch.empty(total, dtype=torch.uint8, pin_memory=pin)
    views: dict[int, Any] = {}
    with torch.no_grad():
        for (_name, offset, dtype, shape, _), (_, tensor, _) in zip(layout, _entries(model), strict=True):
            if offset not in views:
                size = tensor.numel() * tensor.element_size()
                views[offset] = flat[offset : offset + size].view(dtype).view(shape)
                views[offset].copy_(tensor)
            tensor.data = views[offset]
    return flat, layout


def _set(model: Any, name: str, tensor: Any, is_param: bool) -> None:
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    (module._parameters if is_param else module._buffers)[leaf] = tensor


def to_device(spec: ExpertSpec, like: Any, flat_host: Any, layout: Layout, device: str, skeleton: Any = None) -> Any:
    """A device model filled from the host copy: ONE allocation and ONE asynchronous copy of the
    flat (pinned) buffer, then every parameter and buffer made a view of it. ``skeleton`` is the
    module tree kept from an earlier unload (built on the meta device otherwise: no weight init);
    ``like`` is the host model (its config and dtype)."""
    import torch
    from transformers import AutoModelForCausalLM

    if skeleton is None:
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(like.config, dtype=like.dtype)
        skeleton.eval()
    model = skeleton
    flat = torch.empty(flat_host.numel(), dtype=torch.uint8, device=device)
    flat.copy_(flat_host, non_blocking=True)
    made: dict[int, Any] = {}
    for name, offset, dtype, shape, is_param in layout:
        if offset not in made:
            size = int(torch.Size(shape).numel()) * torch.empty((), dtype=dtype).element_size()
            view = flat[offset : offset + size].view(dtype).view(shape)
            made[offset] = torch.nn.Parameter(view, requires_grad=False) if is_param else view
        _set(model, name, made[offset], is_param)
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    left = [n for n, t, _ in _entries(model) if t.is_meta]
    _check_filled(spec, model, left, [])
    return model


def release_device(model: Any) -> None:
    """Point every parameter and buffer back at the meta device, freeing the device memory."""
    import torch

    made: dict[int, Any] = {}
    for name, tensor, is_param in _entries(model):
        key = id(tensor)
        if key not in made:
            meta = torch.empty(tensor.shape, dtype=tensor.dtype, device="meta")
            made[key] = torch.nn.Parameter(meta, requires_grad=False) if is_param else meta
        _set(model, name, made[key], is_param)


def _check_filled(spec: ExpertSpec, model: Any, missing: list[str], unexpected: list[str]) -> None:
    """Every device parameter came from the host copy (a missing one is fine only if tied to a filled one)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    filled = {params[n].data_ptr() for n in params if n not in missing}
    unfilled = [n for n in missing if n in params and params[n].data_ptr() not in filled]
    if unexpected or unfilled:
        raise ExpertLoadError(
            f"expert {spec.name!r}: the device model does not match its weights (missing {unfilled[:3]}, "
            f"unexpected {unexpected[:3]})"
        )
