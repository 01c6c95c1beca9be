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

from coserve.backends.base import Backend
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
from coserve.config import ExpertSpec, LibraryConfig
from coserve.errors import ConfigError

__all__ = [
    "BACKENDS",
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
    capabilities: frozenset[str] = frozenset()  # request parameters it can apply (SAMPLING_CAPABILITIES)

    def install_hint(self) -> str:
        """How to install what the backend needs."""
        if self.extra is None:
            return "reinstall coserve (scripts/setup)"
        return f"pip install 'coserve[{self.extra}]'"


# Request parameters not every backend can apply: a request that sets one is routed only among
# experts whose backend can (coserve.router.policy); each backend also refuses what it cannot
# (coserve.backends.chores.refuse_sampling with the same flags), a check behind the routing.
SAMPLING_CAPABILITIES = ("logprobs", "presence_penalty", "frequency_penalty")
_ALL = frozenset(SAMPLING_CAPABILITIES)
_PENALTIES = frozenset({"presence_penalty", "frequency_penalty"})

_ENTRIES = (
    BackendEntry("llamacpp", "llamacpp:LlamaCppBackend", LlamaCppOptions, True, None, _ALL),  # xllamacpp: core
    BackendEntry("llamacpp-split", "llamacpp_split:LlamaCppSplitBackend", LlamaCppSplitOptions, True, None, _ALL),
    BackendEntry("openai", "openai_http:OpenAIHTTPBackend", OpenAIOptions, False, None, _ALL),
    BackendEntry("transformers", "transformers_hf:TransformersBackend", TransformersOptions, True, "torch"),
    BackendEntry("vllm", "vllm_engine:VLLMBackend", VllmOptions, True, "vllm", _PENALTIES),
    BackendEntry("fake", "fake:FakeBackend", FakeOptions, False, None, _ALL),
)  # fmt: skip
BACKENDS: dict[str, BackendEntry] = {entry.name: entry for entry in _ENTRIES}


def backend_entry(name: str) -> BackendEntry:
    """The registry entry of a backend; ConfigError naming the known ones for an unknown name."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise ConfigError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}") from None


def capabilities(spec: ExpertSpec) -> frozenset[str]:
    """The request parameters this expert can apply: its backend's, less ``logprobs`` when its
    options say ``logprobs: false`` (the fake backend's stand-in for a runtime without them)."""
    entry = BACKENDS.get(spec.backend)
    if entry is None:
        return frozenset()
    return entry.capabilities - ({"logprobs"} if spec.options.get("logprobs") is False else set())


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
    for i, spec in enumerate(library.experts):
        if spec.backend not in BACKENDS:
            problems.append(f"experts[{i}].backend: unknown backend {spec.backend!r}; known: {', '.join(BACKENDS)}")
            continue
        try:
            experts.append(check_expert(spec))
        except ValueError as exc:
            problems.append(f"experts[{i}]: {exc}")
    if problems:
        where = f"{library.path}: " if library.path is not None else ""
        raise ConfigError(where + "; ".join(problems))
    return library.model_copy(update={"experts": tuple(experts)})


def shares_cores(library: LibraryConfig) -> bool:
    """Whether an expert of the library decodes on the cores the router runs on."""
    return any(BACKENDS[spec.backend].options.on_host_cores(spec.options) for spec in library.experts)
