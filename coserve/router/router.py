"""CoERouter: embed the last user turn, classify it into a category, apply the policy.

Fitted on the library's example prompts at first start and cached in a directory keyed by the
library's content hash and the embedder (a JSON manifest plus ``.npz`` arrays; no pickle), so a
restart with an unchanged library loads in milliseconds and a changed library retrains.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from coserve.config import LibraryConfig, check_name
from coserve.errors import ConfigError, InfeasibleConstraints, UnprocessableRequest
from coserve.router.classify import CLASSIFIERS, Classifier, make_classifier
from coserve.router.embed import Embedder
from coserve.router.embedders import make_embedder
from coserve.router.measured import with_measured_map
from coserve.router.online_live import LiveOnline, online_for
from coserve.router.policy import allowed, decide, decide_ranked
from coserve.router.trained import TrainedRouter, load_trained, read_router_directory
from coserve.types import ROUTED_MODEL, Decision, Request

log = logging.getLogger("coserve.router")

__all__ = ["CACHE_FORMAT_VERSION", "CoERouter", "check_trained", "library_trained"]

CACHE_FORMAT_VERSION = 1  # layout of a cached router directory; bump when it changes and old caches are ignored


class CoERouter:
    """Category router over one library."""

    def __init__(
        self,
        library: LibraryConfig,
        embedder: Embedder,
        classifier: Classifier | None = None,
        trained: TrainedRouter | None = None,
    ):
        self.library = library
        self.embedder = embedder
        self.classifier = classifier
        self.trained = trained  # a router trained from outcome data (``coserve train``), if the library names one
        self.online: LiveOnline | None = None  # learning from traffic (``router.online``), over ``trained``

    # -- training -------------------------------------------------------------------------------
    def fit(self) -> CoERouter:
        """Train the category classifier on the library's example prompts."""
        texts: list[str] = []
        labels: list[str] = []
        for name, category in self.library.categories.items():
            texts.extend(category.examples)
            labels.extend([name] * len(category.examples))
        X = self.embedder.encode(texts)
        self.classifier = make_classifier(self.library.router.classifier).fit(X, labels)
        return self

    # -- routing --------------------------------------------------------------------------------
    def probabilities(self, texts: list[str]) -> list[dict[str, float]]:
        """Category probabilities for each text."""
        if self.trained is not None:
            if self.trained.classifier is None:
                return [{} for _ in texts]
            proba = self.trained.category_proba(self.embedder.encode(texts))
            return [dict(zip(self.trained.classes, map(float, row), strict=True)) for row in proba]
        if self.classifier is None:
            raise RuntimeError("the router is not fitted")
        proba = self.classifier.predict_proba(self.embedder.encode(texts))
        classes = [str(c) for c in self.classifier.classes_]
        return [dict(zip(classes, map(float, row), strict=True)) for row in proba]

    def route(self, request: Request) -> Decision:
        """The Decision for one request (pinned requests skip the embedding)."""
        if request.model != ROUTED_MODEL:
            return decide({}, self.library, request.constraints, pinned=request.model)
        if self.trained is not None:
            return self._route_trained(request)
        if request.constraints.budget is not None:
            raise UnprocessableRequest(
                "a budget override needs a router trained from outcome data (router.trained in the library)",
                param="coserve.budget",
            )
        (probabilities,) = self.probabilities([request.last_user_turn()])
        return decide(probabilities, self.library, request.constraints)

    def _route_trained(self, request: Request) -> Decision:
        trained = self.trained
        assert trained is not None
        X = self.embedder.encode([request.last_user_turn()])
        scores = trained.scores(X)[0]
        ranking = [trained.experts[i] for i in sorted(range(len(scores)), key=lambda i: (-scores[i], trained.cost[i]))]
        probabilities: dict[str, float] = {}
        category, confidence = None, float(scores.max())
        if trained.classifier is not None:
            proba = trained.category_proba(X)[0]
            probabilities = dict(zip(trained.classes, map(float, proba), strict=True))
            category, confidence = trained.classes[int(proba.argmax())], float(proba.max())
        uncertain = bool(trained.fallback_mask(X)[0])
        version, predicted = None, None
        if self.online is not None and category is not None and not uncertain and request.constraints.budget is None:
            permitted = allowed(self.library, request.constraints)
            chosen, version = self.online.choose(request.id, category, permitted, scores)
            if self.online.per_prompt:  # logged with the decision: a later score is learnt against it
                predicted = dict(zip(trained.experts, map(float, scores), strict=True))
        else:
            try:
                (chosen,) = trained.expert_for(X, request.constraints.budget)
            except InfeasibleConstraints as exc:
                raise InfeasibleConstraints(exc.message, param="coserve.budget") from None
        decision = decide_ranked(
            chosen,
            ranking,
            self.library,
            request.constraints,
            category=category,
            confidence=confidence,
            uncertain=uncertain,
            probabilities=probabilities,
        )
        if self.online is None:
            return decision
        return replace(
            decision, map_version=version if version is not None else self.online.version, predicted=predicted
        )

    # -- persistence ----------------------------------------------------------------------------
    def cache_key(self) -> str:
        return f"v{CACHE_FORMAT_VERSION}-{self.embedder.name}{self.embedder.dim}-{self.library.content_hash[:24]}"

    def save(self, directory: Path) -> None:
        """Write ``manifest.json`` and ``arrays.npz`` atomically into ``directory``."""
        if self.classifier is None:
            raise RuntimeError("the router is not fitted")
        params, arrays = self.classifier.get_state()
        manifest = {
            "format_version": CACHE_FORMAT_VERSION,
            "classifier": self.classifier.name,
            "params": params,
            "embedder": self.embedder.name,
            "embedding_dim": self.embedder.dim,
            "library_hash": self.library.content_hash,
            "created": time.time(),
        }
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=".tmp-"))
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        np.savez(tmp / "arrays.npz", **arrays)  # type: ignore[arg-type]
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)

    @classmethod
    def load(cls, directory: Path, library: LibraryConfig, embedder: Embedder) -> CoERouter:
        """Load a saved router; refuse one trained for another library or embedder."""
        manifest, arrays = read_router_directory(directory, "the router cache cannot be read")
        if manifest.get("format_version") != CACHE_FORMAT_VERSION:
            raise ConfigError(
                f"{directory}: router format {manifest.get('format_version')}, expected {CACHE_FORMAT_VERSION}"
            )
        if manifest.get("embedder") != embedder.name:
            raise ConfigError(f"{directory}: trained with embedder {manifest.get('embedder')!r}, not {embedder.name!r}")
        if manifest.get("embedding_dim") != embedder.dim:
            raise ConfigError(
                f"{directory}: trained on {manifest.get('embedding_dim')}-dim embeddings, "
                f"the embedder gives {embedder.dim}"
            )
        if manifest.get("library_hash") != library.content_hash:
            raise ConfigError(f"{directory}: trained for another version of the library")
        factory = CLASSIFIERS.get(manifest.get("classifier", ""))
        if factory is None:
            raise ConfigError(f"{directory}: unknown classifier {manifest.get('classifier')!r}")
        return cls(library, embedder, factory.from_state(manifest["params"], arrays))

    @classmethod
    def from_trained(cls, library: LibraryConfig, embedder: Embedder | None = None) -> CoERouter:
        """The router a library names with ``router.trained`` (a ``coserve train`` directory)."""
        trained, directory = library_trained(library)
        _note_other_sizes(library, trained, directory)
        embedder = embedder or make_embedder(str(trained.hyper.get("embedder", library.router.embedder)))
        router = cls(library, embedder, trained=trained)
        if library.router.online is not None:
            router.online = online_for(library, trained, directory)
        return router

    @classmethod
    def load_or_fit(cls, library: LibraryConfig, cache: Path, embedder: Embedder | None = None) -> CoERouter:
        """Load the cached router for this library, or train and cache it (its map solved from
        ``router.outcomes`` where it names them)."""
        library = with_measured_map(library)
        if library.router.trained is not None:
            return cls.from_trained(library, embedder)
        embedder = embedder or make_embedder(library.router.embedder)
        router = cls(library, embedder)
        directory = cache / "routers" / router.cache_key()
        if (directory / "manifest.json").is_file():
            try:
                return cls.load(directory, library, embedder)
            except ConfigError:
                pass  # a stale or damaged cache entry: retrain and overwrite it
        router.fit()
        router.save(directory)
        return router


def library_trained(library: LibraryConfig) -> tuple[TrainedRouter, Path]:
    """The trained router ``router.trained`` names, and its directory; ConfigError where it routes to
    experts the library lacks."""
    assert library.router.trained is not None
    base = library.path.parent if library.path else Path.cwd()
    directory = base / library.router.trained
    try:
        trained = load_trained(directory)
    except ConfigError as exc:  # say which file and key named it, as for every other missing file
        raise ConfigError(f"{library.path}: router.trained: {exc.message}") from None
    for category in trained.classes:  # a router trained before `coserve train` checked the names
        try:
            check_name(category, "category")
        except ValueError as exc:  # it travels in a response header and metric labels: a 500 at each request
            raise ConfigError(f"{library.path}: router.trained: {directory}: {exc}; retrain with it renamed") from None
    missing = [name for name in trained.experts if name not in library.expert_names]
    for name in missing:  # one no library can name: say why rather than ask for it
        try:
            check_name(name, "expert")
        except ValueError as exc:
            raise ConfigError(f"{library.path}: router.trained: {directory}: {exc}; retrain with it renamed") from None
    if missing:
        raise ConfigError(
            f"{library.path}: router.trained: {directory} routes to experts this library lacks: {missing}"
        )
    return trained, directory


def _note_other_sizes(library: LibraryConfig, trained: TrainedRouter, directory: Path) -> None:
    """A warning where the library gives an expert other active parameters than the router was trained with:
    the router chooses with its own (its map or cost weight was solved at them), while the library's are what
    the server counts as spent."""
    other = {
        name: (float(size), library.expert(name).params_b)
        for name, size in zip(trained.experts, trained.params_b, strict=True)
        if np.isfinite(size) and not np.isclose(size, library.expert(name).params_b)
    }
    if other:
        sizes = ", ".join(f"{name} {mine:g} B (library {theirs:g} B)" for name, (mine, theirs) in other.items())
        log.warning(
            "%s: router.trained: %s was trained with other sizes than the library gives: %s; it chooses with its"
            " own, the server counts the library's (retrain with the library's sizes to match)",
            library.path, directory, sizes,
        )  # fmt: skip


def check_trained(library: LibraryConfig) -> None:
    """ConfigError where ``CoERouter.from_trained`` would refuse ``library`` (its trained router, or a
    ``router.online`` that cannot start: a budget it cannot hold, ...), without making an embedder: a Ray
    cluster's driver says it before the cluster starts, as the one-host server does at its start."""
    if library.router.trained is None:
        return
    trained, directory = library_trained(library)
    if library.router.online is not None:
        online_for(library, trained, directory)
