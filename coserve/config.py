"""The library file (YAML) -> validated, frozen settings.

A library file names the experts, the categories the router knows (with example prompts), the
router's settings and the memory budgets. Every key is checked: an unknown key, a missing file, a
duplicate name or a dangling expert reference is a ConfigError that names the file and the key's
path (``experts[1].bakend``). A missing model file is not: the engine starts without that expert
(coserve.assets.missing_files) and its requests fall back.

The file is an input edge like an HTTP body, so it is parsed with pydantic (``extra="forbid"``
gives the key paths for free); the parsed models are frozen and passed around as they are.
This module is a leaf: it knows nothing about models' weights, runtimes, routers or HTTP. What
only a backend knows (its name, its ``options``, whether it serves a file) is checked by
coserve.backends.registry; a map solved from ``router.outcomes`` by coserve.router.measured.
The ``server``, ``routing`` and ``server.log`` sections live in coserve.config_server,
coserve.config_routing and coserve.config_log, re-exported here.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from coserve.config_log import DecisionLogSettings, RetentionSettings
from coserve.config_routing import OnlineSettings, RoutingSettings, routing_problem
from coserve.config_server import ApiKey, ServerSettings, parse_bytes
from coserve.errors import ConfigError
from coserve.paths import default_library_path
from coserve.types import ROUTED_MODEL

__all__ = [
    "ApiKey",
    "Category",
    "DecisionLogSettings",
    "ExpertSpec",
    "FallbackSettings",
    "LibraryConfig",
    "MemorySettings",
    "OnlineSettings",
    "Price",
    "RetentionSettings",
    "RouterSettings",
    "ServerSettings",
    "check_name",
    "load_library",
    "parse_bytes",
    "read_yaml",
    "validation_error",
]


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")  # expert, category and node names (HTTP headers, labels)
_NAME_RULE = "1 to 64 ASCII letters, digits, '_', '.', ':' or '-', the first a letter or digit"


def check_name(name: str, kind: str) -> str:
    """``name`` if it is a valid name of an expert, category or node (``kind``); else a ValueError
    that says the rule in words."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a valid {kind} name: use {_NAME_RULE}")
    return name


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Price(_Strict):
    """USD per million tokens."""

    input: float = Field(0.0, ge=0)
    output: float = Field(0.0, ge=0)

    @property
    def mean(self) -> float:
        return round((self.input + self.output) / 2, 9)  # 0.2/0.4 -> 0.3, not 0.30000000000000004


class ExpertSpec(_Strict):
    """One expert of the library."""

    name: str
    backend: str  # a name of coserve.backends.registry.BACKENDS (checked there, with ``options``)
    # A model file: "pkg:<python_package>/<path>" (a file inside an installed PyPI package) or a
    # filesystem path (relative to the library file). A list means raw parts to concatenate in order.
    source: str | list[str] | None = None
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    params_b: float = Field(gt=0)  # billions of parameters active per token
    price: Price = Price()
    context: int = Field(4096, ge=128)  # tokens the expert is served with
    tags: tuple[str, ...] = ()
    options: dict[str, Any] = Field(default_factory=dict)  # backend-specific (threads, n_parallel...)
    # What the expert can do (coserve.backends.registry.CAPABILITIES): None measures it (its
    # backend's, less ``tools`` when its chat template does not render them); a list declares it.
    capabilities: tuple[str, ...] | None = None

    @model_validator(mode="after")
    def _sha256_for_parts(self) -> ExpertSpec:
        if isinstance(self.source, list) and len(self.source) > 1 and self.sha256 is None:
            raise ValueError("a source in parts needs a sha256 to verify the assembled file")
        return self

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return check_name(value, "expert")

    @field_validator("source")
    @classmethod
    def _nonempty_source(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and not value:
            raise ValueError("a list of parts cannot be empty")
        return value

    @property
    def parts(self) -> tuple[str, ...]:
        """The source as a tuple of locations (one for a single file)."""
        if self.source is None:
            return ()
        return (self.source,) if isinstance(self.source, str) else tuple(self.source)


class Category(_Strict):
    """A category the router classifies prompts into."""

    description: str = ""
    examples: tuple[str, ...] = Field(min_length=2)

    @field_validator("examples")
    @classmethod
    def _no_blank_examples(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for i, text in enumerate(value):
            if not text.strip():
                raise ValueError(f"example {i} is empty")
        return value


class FallbackSettings(_Strict):
    """Where uncertain prompts go."""

    expert: str
    min_confidence: float = Field(0.5, ge=0, le=1)  # top category probability below this -> fallback


class Budget(_Strict):
    """The operator's budget: average active parameters (billions) or price per million tokens."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    avg_params_b: float | None = Field(None, gt=0)
    avg_price: float | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _one_axis(self) -> Budget:
        if self.avg_params_b is not None and self.avg_price is not None:  # the readers would pick different ones
            raise ValueError("set avg_params_b or avg_price, not both")
        return self


class RouterSettings(_Strict):
    """How prompts become decisions."""

    embedder: Literal["minilm", "minilm-static", "minilm-int8", "hashing"] = "minilm-static"
    classifier: Literal["logistic"] = "logistic"
    map: dict[str, str] = Field(default_factory=dict)  # category -> expert (unless ``trained`` is given)
    # Or: an outcome file (``coserve outcomes`` JSONL, relative to the library file) from which the
    # map is solved by the budget optimiser when the router is built, over categories weighted by
    # ``priors`` (default: equal). See coserve.router.measured.
    outcomes: str | None = None
    priors: dict[str, float] = Field(default_factory=dict)
    # A router directory written by ``coserve train`` (relative to the library file): its classifier,
    # per-prompt predictor and budget-optimal map replace ``categories`` and ``map``.
    trained: str | None = None
    fallback: FallbackSettings
    budget: Budget = Budget()
    online: OnlineSettings | None = None  # learn from traffic (checked when the router is built)


class MemorySettings(_Strict):
    """Byte budgets per tier."""

    ram: int = 4 * 2**30  # bytes of expert weights kept resident in host memory
    active: int = 4 * 2**30  # bytes of loaded runtimes: weights + KV caches + buffers (Backend.footprint)
    min_residency_s: float = Field(0.0, ge=0)  # an expert stays ACTIVE at least this long unless room is needed
    max_wait_s: float = Field(10.0, gt=0)  # scheduler: a request waiting longer makes its expert go next

    @field_validator("ram", "active", mode="before")
    @classmethod
    def _size(cls, value: Any) -> int:
        return parse_bytes(value)


class LibraryConfig(_Strict):
    """A whole library file, validated."""

    experts: tuple[ExpertSpec, ...] = Field(min_length=1)
    categories: dict[str, Category] = Field(default_factory=dict)
    router: RouterSettings
    routing: RoutingSettings = RoutingSettings()  # one choice per request, or a cascade
    memory: MemorySettings = MemorySettings()
    server: ServerSettings = ServerSettings()
    # Not part of the file's schema: where it was read from (for relative paths) and its digest.
    path: Path | None = None
    content_hash: str = ""

    @field_validator("categories")
    @classmethod
    def _category_names(cls, value: dict[str, Category]) -> dict[str, Category]:
        for name in value:  # category names travel in HTTP headers (x-coserve-category) and metric labels
            check_name(name, "category")
        return value

    @model_validator(mode="after")
    def _references(self) -> LibraryConfig:
        names = [e.name for e in self.experts]
        seen: set[str] = set()
        for i, name in enumerate(names):
            if name in seen:
                raise ValueError(f"experts[{i}].name: duplicate expert name {name!r}")
            if name == ROUTED_MODEL:
                raise ValueError(f"experts[{i}].name: {ROUTED_MODEL!r} is reserved for the routed model")
            seen.add(name)
        if self.router.trained is None and len(self.categories) < 2:
            raise ValueError("categories: at least two categories (or router.trained: a trained router directory)")
        if self.router.online is not None and self.router.trained is None:
            raise ValueError("router.online: needs router.trained (a `coserve train` directory) to learn from traffic")
        if self.router.trained is not None and self.router.map:  # it would be ignored: the router's map routes
            raise ValueError("router.map: a trained router brings its own map (router.trained); drop router.map")
        if self.router.outcomes is not None and (self.router.map or self.router.trained is not None):
            raise ValueError("router.outcomes: the map is solved from outcomes; drop router.map and router.trained")
        for category, weight in self.router.priors.items():
            if category not in self.categories:
                raise ValueError(f"router.priors.{category}: not a category of this library")
            if not weight >= 0:
                raise ValueError(f"router.priors.{category}: must be >= 0")
        if self.router.priors and not sum(self.router.priors.values()) > 0:
            raise ValueError("router.priors: at least one category needs a positive weight")
        for category, expert in self.router.map.items():
            if category not in self.categories:
                raise ValueError(f"router.map.{category}: not a category of this library")
            if expert not in seen:
                raise ValueError(f"router.map.{category}: unknown expert {expert!r}")
        solved = self.router.trained is not None or self.router.outcomes is not None
        missing = [c for c in self.categories if c not in self.router.map and not solved]
        if missing:
            raise ValueError(f"router.map: no expert for categories {missing}")
        if self.router.fallback.expert not in seen:
            raise ValueError(f"router.fallback.expert: unknown expert {self.router.fallback.expert!r}")
        if problem := routing_problem(self.routing, self.categories, names):
            raise ValueError(problem)
        return self

    def expert(self, name: str) -> ExpertSpec:
        for spec in self.experts:
            if spec.name == name:
                return spec
        raise KeyError(name)

    @property
    def expert_names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.experts)


def read_yaml(path: Path, what: str) -> Any:
    """A YAML file's content; a ConfigError naming ``what`` when it is missing, unreadable or not YAML."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"{what} {path} cannot be read: {exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def validation_error(path: Path, exc: ValidationError) -> ConfigError:
    """A pydantic error as one ConfigError naming the file and each key's path (``nodes[1].ram``)."""
    problems = []
    for err in exc.errors():
        loc = _format_loc(tuple(err["loc"]))
        message = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        message = message.removeprefix("Value error, ")
        problems.append(f"{loc}: {message}" if loc else message)
    return ConfigError(f"{path}: " + "; ".join(problems))


def load_library(path: str | Path | None = None) -> LibraryConfig:
    """Read and validate a library file; ``categories`` may name a separate YAML file."""
    path = Path(path) if path is not None else default_library_path()
    raw = read_yaml(path, "library file")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the library file must be a mapping with experts, categories and router")
    categories = raw.get("categories")
    if isinstance(categories, str):
        raw = {**raw, "categories": read_yaml(path.parent / categories, f"categories file named by {path}")}
    for key in ("path", "content_hash"):
        if key in raw:
            raise ConfigError(f"{path}: {key}: unknown key")
    try:
        config = LibraryConfig.model_validate(raw)
    except ValidationError as exc:
        raise validation_error(path, exc) from None
    # The digest names the router's cache: server and routing settings do not change what the router learns.
    mine = config.model_dump(mode="json", exclude={"path", "content_hash", "server", "routing"})
    digest = hashlib.sha256(json.dumps(mine, sort_keys=True).encode()).hexdigest()
    return config.model_copy(update={"path": path.resolve(), "content_hash": digest})
