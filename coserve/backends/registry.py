"""The backends coserve knows, by name: where each lives, what it accepts, what it needs installed.

One entry per backend: the class (imported only when a library names the backend, so vLLM or
PyTorch are never imported for a library that does not use them), its ``options`` schema
(coserve.backends.options), whether its experts serve a model file, and the pip extra that
installs its optional packages. ``check_library`` holds a library's experts to their backend's
entry before an engine is built; ``get_backend`` makes one. This module knows nothing about
routing, queues or budgets, and imports no runtime.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from coserve.backends.base import Backend
from coserve.backends.gguf_header import read_header
from coserve.backends.options import (
    BackendOptions,
    FakeOptions,
    LlamaCppOptions,
    LlamaCppSplitOptions,
    OpenAIOptions,
    TransformersOptions,
    VllmOptions,
    check_options,
)
from coserve.backends.structured import renders_tool_calls
from coserve.config import ExpertSpec, LibraryConfig
from coserve.errors import AssetError, ConfigError

__all__ = [
    "BACKENDS",
    "CAPABILITIES",
    "CAPABILITY_PARAMS",
    "SAMPLING_CAPABILITIES",
    "BackendEntry",
    "backend_entry",
    "capabilities",
    "check_expert",
    "check_library",
    "get_backend",
    "shares_cores",
]


@dataclass(frozen=True)
class BackendEntry:
    """One backend a library may name."""

    name: str  # the value of an expert's ``backend``
    target: str  # "module:Class" inside coserve.backends, imported when a library uses it
    options: type[BackendOptions]  # what it accepts under an expert's ``options``
    serves_file: bool  # its experts need a ``source`` (a model file or folder)
    extra: str | None = None  # the pip extra with its optional packages (None: installed with coserve)
    capabilities: frozenset[str] = frozenset()  # what its experts can do (CAPABILITIES)
    reads_template: bool = False  # ``tools`` depends on the model file's chat template

    def install_hint(self) -> str:
        """How to install what the backend needs."""
        if self.extra is None:
            return "reinstall coserve (scripts/setup)"
        return f"pip install 'coserve[{self.extra}]'"


# Request parameters not every backend can apply: a request that sets one is routed only among
# experts whose backend can (coserve.router.policy); each backend also refuses what it cannot
# (coserve.backends.chores.refuse_sampling with the same flags), a check behind the routing.
SAMPLING_CAPABILITIES = ("logprobs", "presence_penalty", "frequency_penalty")
# What an expert can do: the sampling features above, tool calling (``tools``), structured output
# (``json_schema``: response_format json_object/json_schema) and image input (``vision``: only
# declared, for an ``openai`` expert; coserve itself refuses image content today).
CAPABILITIES = (*SAMPLING_CAPABILITIES, "tools", "json_schema", "vision")
# The request parameter that asks for each capability (a 422 names it when no expert has it).
CAPABILITY_PARAMS = {
    **{name: name for name in SAMPLING_CAPABILITIES},
    "tools": "tools",
    "json_schema": "response_format",
}
_DECLARED_ONLY = frozenset({"vision"})  # never assumed: an expert declares it
_SAMPLING = frozenset(SAMPLING_CAPABILITIES)
_PENALTIES = frozenset({"presence_penalty", "frequency_penalty"})
_LOCAL = _SAMPLING | {"tools", "json_schema"}

_ENTRIES = (
    # xllamacpp (core): llama.cpp's server applies response_format; tools: not through its server
    BackendEntry("llamacpp", "llamacpp:LlamaCppBackend", LlamaCppOptions, True, None, _SAMPLING | {"json_schema"}),
    BackendEntry("llamacpp-split", "llamacpp_split:LlamaCppSplitBackend", LlamaCppSplitOptions, True, None, _LOCAL,
                 reads_template=True),
    BackendEntry("openai", "openai_http:OpenAIHTTPBackend", OpenAIOptions, False, None, _LOCAL | _DECLARED_ONLY),
    BackendEntry("transformers", "transformers_hf:TransformersBackend", TransformersOptions, True, "torch"),
    BackendEntry("vllm", "vllm_engine:VLLMBackend", VllmOptions, True, "vllm", _PENALTIES),
    BackendEntry("fake", "fake:FakeBackend", FakeOptions, False, None, _LOCAL),
)  # fmt: skip
BACKENDS: dict[str, BackendEntry] = {entry.name: entry for entry in _ENTRIES}


def backend_entry(name: str) -> BackendEntry:
    """The registry entry of a backend; ConfigError naming the known ones for an unknown name."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise ConfigError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}") from None


def capabilities(spec: ExpertSpec) -> frozenset[str]:
    """What this expert can do: what it declares or ``check_library`` measured (``spec.capabilities``),
    else its backend's (less what only a declaration gives), never more than its backend can; less
    ``logprobs`` when its options say ``logprobs: false`` (the fake backend's stand-in for a runtime
    without them)."""
    entry = BACKENDS.get(spec.backend)
    if entry is None:
        return frozenset()
    own = entry.capabilities - _DECLARED_ONLY if spec.capabilities is None else frozenset(spec.capabilities)
    return own & entry.capabilities - ({"logprobs"} if spec.options.get("logprobs") is False else set())


def measure_capabilities(spec: ExpertSpec, base: Path | None) -> ExpertSpec:
    """The expert with ``capabilities`` measured where its model file tells: without ``tools`` when
    its chat template does not render them in the ``<tool_call>`` convention
    (coserve.backends.structured). A file not there yet (assembled later) is not measured."""
    entry = BACKENDS[spec.backend]
    if not entry.reads_template:
        return spec
    from coserve.assets import present_file

    path = present_file(spec, base)
    try:
        template = read_header(path).metadata.get("tokenizer.chat_template") if path and path.is_file() else None
    except (AssetError, OSError):
        return spec
    if template is None:
        return spec
    if isinstance(template, str) and renders_tool_calls(template):
        return spec
    return spec.model_copy(update={"capabilities": tuple(sorted(capabilities(spec) - {"tools"}))})


def get_backend(name: str) -> Backend:
    """Instantiate a backend by name (lazy import); ConfigError naming the extra when its package is missing."""
    entry = backend_entry(name)
    module_name, _, class_name = entry.target.partition(":")
    try:
        module = importlib.import_module(f"coserve.backends.{module_name}")
    except ImportError as exc:
        raise ConfigError(
            f"backend {name!r} needs a package that is not installed ({exc}); {entry.install_hint()}"
        ) from None
    backend: Backend = getattr(module, class_name)()
    return backend


def check_expert(spec: ExpertSpec) -> ExpertSpec:
    """The expert with its options as checked values; ValueError naming the key when it does not fit
    its backend (ConfigError for an unknown backend)."""
    entry = backend_entry(spec.backend)
    options = check_options(entry.options, entry.name, spec.options)
    entry.options.check_context(options, spec.context)
    if entry.serves_file and spec.source is None:
        raise ValueError(f"the {entry.name} backend serves a model file or folder: give a source")
    return spec.model_copy(update={"options": options})


def check_library(library: LibraryConfig) -> LibraryConfig:
    """The library with every expert checked against its backend (``check_expert``).

    Called before an engine is built, so a typo in ``options`` stops ``coserve serve`` at start:
    ConfigError ``<file>: experts[i]: options.<key>: ...`` for every expert that does not fit.
    """
    experts, problems = [], []
    base = library.path.parent if library.path is not None else None
    for i, spec in enumerate(library.experts):
        if spec.backend not in BACKENDS:
            problems.append(f"experts[{i}].backend: unknown backend {spec.backend!r}; known: {', '.join(BACKENDS)}")
            continue
        unknown = sorted(set(spec.capabilities or ()) - set(CAPABILITIES))
        if unknown:
            problems.append(f"experts[{i}].capabilities: unknown {unknown[0]!r}; known: {', '.join(CAPABILITIES)}")
            continue
        try:
            experts.append(measure_capabilities(check_expert(spec), base))
        except ValueError as exc:
            problems.append(f"experts[{i}]: {exc}")
    if problems:
        where = f"{library.path}: " if library.path is not None else ""
        raise ConfigError(where + "; ".join(problems))
    return library.model_copy(update={"experts": tuple(experts)})


def shares_cores(library: LibraryConfig) -> bool:
    """Whether an expert of the library decodes on the cores the router runs on."""
    return any(BACKENDS[spec.backend].options.on_host_cores(spec.options) for spec in library.experts)
