"""The cluster file (YAML) -> validated, frozen settings for the placement planner.

A cluster file names the nodes experts can be placed on, each with its host memory and accelerator
memory in bytes (``16GiB`` and the like, read by ``config.parse_bytes``), its relative speed
(``speed``, default 1.0) and optional labels; an optional ``planner`` section sets the objective's
weights, and an optional ``experts`` section gives footprints for experts whose model files are not
on the planning host, and the measured seconds of work one request gives an expert. Every key is checked: an
unknown key, a negative size or a duplicate node name is a ConfigError naming the file and the key's
path (``nodes[1].ram``), as for the library file.

This module knows nothing about Ray, the engine or how footprints are measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from coserve.config import check_name, parse_bytes, read_yaml, validation_error
from coserve.errors import ConfigError

__all__ = ["Cluster", "ExpertFootprint", "Footprint", "NodeSpec", "PlannerSettings", "load_cluster"]


@dataclass(frozen=True)
class Footprint:
    """What one loaded replica of an expert holds on its node."""

    ram_bytes: int  # host memory (on a CPU backend: weights + KV caches + buffers, Backend.footprint)
    accelerator_bytes: int = 0  # device memory (0 for an expert served on CPU)
    # Seconds a speed-1.0 node spends on one request to this expert (None: unknown; the planner then
    # counts it as the traffic-weighted mean of the known ones, or all as equal when none is known).
    seconds_per_request: float | None = None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _size(value: Any) -> int:
    return parse_bytes(value)


class NodeSpec(_Strict):
    """One node experts can be placed on."""

    name: str
    ram: int  # bytes of host memory coserve may fill with experts
    accelerator: int = 0  # bytes of accelerator (GPU) memory coserve may fill; 0: none
    speed: float = Field(1.0, gt=0)  # relative compute speed: a request takes 1/speed the seconds of 1.0
    labels: dict[str, str] = Field(default_factory=dict)  # free-form (zone, instance type...)

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return check_name(value, "node")

    @field_validator("ram", "accelerator", mode="before")
    @classmethod
    def _bytes(cls, value: Any) -> int:
        return _size(value)


class PlannerSettings(_Strict):
    """Weights of the planner's objective (see coserve.distributed.planner) and when to re-plan."""

    cold_load_weight: float = Field(1.0, ge=0)  # per unit of request share that may need a cold load
    move_weight: float = Field(0.05, ge=0)  # per replica started by a re-plan (one cold load each)
    drift_threshold: float = Field(0.1, gt=0, le=1)  # total variation distance of traffic shares
    time_limit_s: float | None = Field(None, gt=0)  # HiGHS time limit; the gap is reported when hit
    # Every needed expert resident on every node, its traffic split by node speed, no program solved:
    # for a cluster with memory to spare (a ConfigError names a node that cannot hold them all).
    everywhere: bool = False


class ExpertFootprint(_Strict):
    """What the cluster file says of an expert: its footprint (for experts whose files the planning
    host lacks) and/or the seconds of work one request gives it (measured, e.g. ``coserve bench experts``)."""

    ram: int | None = None  # None: measured from the expert's backend
    accelerator: int = 0
    seconds_per_request: float | None = Field(None, gt=0)  # on a speed-1.0 node; None: estimated

    @field_validator("ram", "accelerator", mode="before")
    @classmethod
    def _bytes(cls, value: Any) -> int | None:
        return None if value is None else _size(value)

    @model_validator(mode="after")
    def _something(self) -> ExpertFootprint:
        if self.ram is None and self.seconds_per_request is None:
            raise ValueError("give ram (with accelerator) and/or seconds_per_request")
        if self.ram is None and self.accelerator:
            raise ValueError("accelerator needs ram too")
        return self

    def footprint(self) -> Footprint:
        """The footprint given (ram must be given)."""
        if self.ram is None:
            raise ConfigError("experts: this entry gives no ram")
        return Footprint(self.ram, self.accelerator, self.seconds_per_request)


class Cluster(_Strict):
    """A whole cluster file, validated."""

    nodes: tuple[NodeSpec, ...]
    planner: PlannerSettings = PlannerSettings()
    experts: dict[str, ExpertFootprint] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _distinct_names(self) -> Cluster:
        if not self.nodes:
            raise ValueError("nodes: a cluster needs at least one node")
        seen: set[str] = set()
        for i, node in enumerate(self.nodes):
            if node.name in seen:
                raise ValueError(f"nodes[{i}].name: duplicate node name {node.name!r}")
            seen.add(node.name)
        for name in self.experts:
            try:
                check_name(name, "expert")
            except ValueError as exc:
                raise ValueError(f"experts.{name}: {exc}") from None
        return self


def load_cluster(path: str | Path) -> Cluster:
    """Read and validate a cluster file."""
    path = Path(path)
    raw = read_yaml(path, "cluster file")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the cluster file must be a mapping with nodes")
    try:
        return Cluster.model_validate(raw)
    except ValidationError as exc:
        raise validation_error(path, exc) from None
