"""Outcome data for training and evaluating routers: prompts x experts -> score in [0, 1].

Reads JSONL (one object a line: ``id``, ``prompt``, ``category``, ``scores: {expert: float}``,
optional ``cost: {expert: USD}`` and ``turns``) or CSV with the same columns, where each expert's
score is a column named ``score:<expert>`` (an empty cell is a missing score) and ``cost:<expert>``
columns are optional. Every bad row is reported as a ``Problem`` with its file and line; with
``on_bad="skip"`` bad rows are dropped (and reported), with ``on_bad="refuse"`` loading raises.
Nothing bad is ever used silently; a byte order mark is read past, a file that is not UTF-8 text is
refused naming its line. Also: ``experts.json`` costs (``coserve.eval.costs``, re-exported here),
prompt-grouped folds and the least data they need, and an on-disk cache of prompt embeddings. This
module knows nothing about routers.
"""

from __future__ import annotations

import csv
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from coserve.errors import ConfigError
from coserve.eval.costs import ExpertCosts, load_costs
from coserve.jsonl import Row, read_rows
from coserve.paths import cache_dir

__all__ = [
    "INNER_FOLDS",
    "ExpertCosts",
    "OutcomeSet",
    "Problem",
    "check_foldable",
    "distinct_prompts",
    "embed_cached",
    "grouped_folds",
    "load_costs",
    "load_expert_scores",
    "load_outcomes",
    "read_outcome_rows",
    "sparse_experts",
]

OnBad = Literal["skip", "refuse"]
MAX_LISTED = 20  # problems listed in a refusal message
INNER_FOLDS = 5  # the grouped split a router is tuned on, inside the rows it is fitted on


@dataclass(frozen=True)
class Problem:
    """One unusable row of an outcome file."""

    file: str
    line: int  # 1-based line (JSONL) or row number counting the header as line 1 (CSV)
    id: str | None
    reason: str
    field: str = ""  # the field that makes the row unusable (id, prompt, category, scores); "" for the whole line

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.id or '?'}: {self.reason}"


def _bad_rows_error(path: Path, problems: list[Problem], way_out: str = "") -> ConfigError:
    """The refusal of a file's bad rows: their count, then one a line (at most MAX_LISTED), then ``way_out``."""
    lines = [f"{len(problems)} bad row{'s' if len(problems) != 1 else ''} in {path}:"]
    lines += [f"  {problem}" for problem in problems[:MAX_LISTED]]
    if len(problems) > MAX_LISTED:
        lines.append(f"  ... and {len(problems) - MAX_LISTED} more")
    return ConfigError("\n".join(lines + ([way_out] if way_out else [])))


@dataclass(frozen=True)
class OutcomeSet:
    """Prompts, their categories, and each expert's score on each prompt."""

    ids: tuple[str, ...]
    prompts: tuple[str, ...]
    categories: tuple[str, ...]
    experts: tuple[str, ...]
    scores: np.ndarray  # float32 [n, E], in [0, 1], NaN where an expert's score is missing

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, index: Sequence[int] | np.ndarray) -> OutcomeSet:
        """The rows at ``index``, in that order."""
        idx = np.asarray(index, dtype=int)
        return OutcomeSet(
            tuple(self.ids[i] for i in idx),
            tuple(self.prompts[i] for i in idx),
            tuple(self.categories[i] for i in idx),
            self.experts,
            self.scores[idx],
        )


def _csv_rows(path: Path) -> list[Row]:
    """CSV rows turned into the JSONL shape; ``score:<expert>`` columns become ``scores``."""
    rows: list[Row] = []
    with path.open(encoding="utf-8-sig", newline="") as handle:  # -sig: a spreadsheet's byte order mark
        reader = csv.DictReader(handle)
        try:
            records = list(reader)
        except csv.Error as exc:  # a cell over csv's field limit (128 KiB), above all
            hint = "; a JSONL file has no such limit" if "field limit" in str(exc) else ""
            raise ConfigError(f"{path}:{reader.reader.line_num}: {exc}{hint}") from None
        header = list(reader.fieldnames or ())
    twice = sorted({name for name in header if header.count(name) > 1})
    if twice:  # csv keeps the last of them, silently: a merged sheet's second copy would win
        raise ConfigError(f"{path}:1: column {twice[0]!r} appears twice in the header; keep one")
    for number, record in enumerate(records, start=2):
        obj: dict[str, Any] = {"scores": {}}
        bad = None
        for key, value in record.items():
            if key is None:
                bad = "more cells than header columns"
            elif key.startswith("score:"):
                if value not in (None, ""):
                    try:
                        obj["scores"][key[6:]] = float(value)
                    except ValueError:
                        obj["scores"][key[6:]] = value
            elif not key.startswith("cost:"):
                obj[key] = value
        rows.append((number, bad or obj))
    return rows


def read_outcome_rows(path: Path) -> list[Row]:
    """The rows of a JSONL or CSV file, an integer id read as its decimal string (as pandas writes an
    index); a file that cannot be read as UTF-8 text is one ConfigError."""
    try:
        rows = _csv_rows(path) if path.suffix.lower() == ".csv" else read_rows(path)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raise ConfigError(f"{path}: a gzip-compressed file; decompress it first (gunzip)") from None
        try:
            raw.decode("utf-8")
            at = 0
        except UnicodeDecodeError as exc:
            at = exc.start
        line = raw[:at].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[at]:02x}); save the file as UTF-8") from None
    for _, obj in rows:
        if isinstance(obj, dict) and isinstance(obj.get("id"), int) and not isinstance(obj["id"], bool):
            obj["id"] = str(obj["id"])
    return rows


def _check(
    obj: dict[str, Any], experts: Sequence[str], categories: set[str] | None, seen: dict[str, int]
) -> tuple[str, str] | None:
    """The field that makes this row unusable and why, or None; ``seen`` maps the ids of usable rows to their lines."""
    if not isinstance(obj.get("id"), str) or not obj["id"]:
        return "id", "missing or non-string id"
    if obj["id"] in seen:
        return "id", f"duplicate id (first on line {seen[obj['id']]})"
    prompt = obj.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return "prompt", "empty prompt"
    category = obj.get("category")
    if not isinstance(category, str) or not category:
        return "category", "missing category"
    if categories is not None and category not in categories:
        return "category", f"unknown category {category!r}"
    scores = obj.get("scores")
    if not isinstance(scores, dict):
        return "scores", "scores must be a mapping of expert -> score"
    missing = [e for e in experts if e not in scores]
    if missing:
        return "scores", f"missing scores for experts {missing}"
    for expert, value in scores.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            return "scores", f"score of {expert!r} is not a number: {value!r}"
        if not 0.0 <= value <= 1.0:
            return "scores", f"score of {expert!r} out of [0, 1]: {value}"
    return None


def load_outcomes(
    path: str | Path,
    *,
    experts: Sequence[str] | None = None,
    categories: Sequence[str] | None = None,
    on_bad: OnBad = "refuse",
) -> tuple[OutcomeSet, list[Problem]]:
    """Read an outcome file (``.jsonl`` or ``.csv``); returns the usable rows and every problem.

    ``experts`` fixes the expert columns (default: every expert named in the file, first seen
    first); a row lacking any of them is a problem. ``categories``, when given, is the closed list.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"outcome file not found: {path}")
    rows = read_outcome_rows(path)
    given = experts is not None
    if experts is None:
        names: dict[str, None] = {}
        for _, obj in rows:
            if isinstance(obj, dict) and isinstance(obj.get("scores"), dict):
                names.update(dict.fromkeys(map(str, obj["scores"])))
        experts = list(names)
        if not experts and any(isinstance(obj, dict) for _, obj in rows):
            wanted = "a JSONL row needs scores: {expert: score}, a CSV file score:<expert> columns"
            raise ConfigError(f"{path}: no expert scores ({wanted})")
    known = set(categories) if categories is not None else None
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    ids, prompts, cats, scores = [], [], [], []
    for number, obj in rows:
        row_id = obj.get("id") if isinstance(obj, dict) and isinstance(obj.get("id"), str) else None
        found = ("", obj) if isinstance(obj, str) else _check(obj, experts, known, seen)
        if found is not None:
            problems.append(Problem(str(path), number, row_id, found[1], found[0]))
            continue
        assert isinstance(obj, dict)
        seen[obj["id"]] = number
        ids.append(obj["id"])
        prompts.append(obj["prompt"])
        cats.append(obj["category"])
        scores.append([float(obj["scores"][e]) for e in experts])
    if problems and on_bad == "refuse":
        way_out = "drop them with on_bad='skip' (on the command line: --on-bad skip)"
        if all(isinstance(obj, str) for _, obj in rows):  # not one object: a CSV, a JSON array, ...
            way_out = "no line is a JSON object: JSON Lines has one object a line; a CSV file must be named .csv"
        raise _bad_rows_error(path, problems, "\n".join([*sparse_experts(rows, experts, given), way_out]))
    if not ids:  # every row bad (--on-bad skip): why, rather than the count alone
        raise _bad_rows_error(path, problems, "no usable rows") if problems else ConfigError(f"{path}: no usable rows")
    matrix = np.asarray(scores, dtype=np.float32).reshape(len(ids), len(experts))
    return OutcomeSet(tuple(ids), tuple(prompts), tuple(cats), tuple(experts), matrix), problems


def sparse_experts(rows: list[Row], experts: Sequence[str], given: bool) -> list[str]:
    """A line for each expert scored on fewer than half of the rows: the column is the likely mistake
    (an expert a few rows score, or a name mistyped), not the many rows that lack it."""
    scored = [obj["scores"] for _, obj in rows if isinstance(obj, dict) and isinstance(obj.get("scores"), dict)]
    lines = []
    for expert in experts:
        found = [number for number, obj in rows if isinstance(obj, dict) and expert in (obj.get("scores") or {})]
        if len(found) < len(scored) / 2:
            first = f" (first on line {found[0]})" if found else ""
            advice = "" if given else ": score it on every row, or leave it out of the file"
            lines.append(f"{expert!r} is scored on {len(found)} of {len(scored)} rows{first}{advice}")
    return lines


def load_expert_scores(path: str | Path, expert: str) -> dict[str, float]:
    """One expert's scores by id, from JSONL lines with ``id`` and ``scores[expert]`` (or ``score``)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"outcome file not found: {path}")
    found: dict[str, float] = {}
    problems: list[Problem] = []
    named: set[str] = set()  # the experts the file scores: to name them when ``expert`` is not one
    for number, obj in read_outcome_rows(path):
        if isinstance(obj, str):
            problems.append(Problem(str(path), number, None, obj))
            continue
        row_id = obj.get("id")
        scores = obj.get("scores")
        named |= set(map(str, scores)) if isinstance(scores, dict) else set()
        value = scores.get(expert) if isinstance(scores, dict) else obj.get("score")
        ok = isinstance(value, int | float) and not isinstance(value, bool) and 0.0 <= value <= 1.0
        if not isinstance(row_id, str) or not ok or row_id in found:
            reason = "duplicate id" if row_id in found else f"no valid score of {expert!r} in [0, 1]"
            problems.append(Problem(str(path), number, row_id if isinstance(row_id, str) else None, reason))
            continue
        found[row_id] = float(value)  # type: ignore[arg-type]
    if not found and named and expert not in named:
        raise ConfigError(f"{path}: no row scores {expert!r}; the file scores {sorted(named)}")
    if problems:
        raise _bad_rows_error(path, problems)
    return found


def _prompt_key(prompt: str) -> str:
    return " ".join(prompt.split()).casefold()


def distinct_prompts(prompts: Sequence[str]) -> int:
    """How many different prompts there are, whitespace and case aside (as the folds group them)."""
    return len({_prompt_key(p) for p in prompts})


def grouped_folds(prompts: Sequence[str], k: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """K (train, test) index pairs; identical prompts (whitespace- and case-normalised) share a fold."""
    groups: dict[str, list[int]] = {}
    for i, prompt in enumerate(prompts):
        groups.setdefault(_prompt_key(prompt), []).append(i)
    if not 2 <= k <= len(groups):
        raise ConfigError(f"cannot make {k} folds from {len(groups)} distinct prompts")
    members = list(groups.values())
    shuffled = np.random.default_rng(seed).permutation(len(members)).tolist()
    # Largest groups first (stable over the random order), each into the currently smallest fold.
    order = sorted(shuffled, key=lambda g: -len(members[g]))
    sizes = [0] * k
    fold_of = np.empty(len(prompts), dtype=int)
    for g in order:
        fold = int(np.argmin(sizes))
        fold_of[members[g]] = fold
        sizes[fold] += len(members[g])
    all_idx = np.arange(len(prompts))
    return [(all_idx[fold_of != f], all_idx[fold_of == f]) for f in range(k)]


def check_foldable(
    path: str | Path,
    prompts: Sequence[str],
    folds: int | None = None,
    seed: int = 0,
    advice: str = "use fewer --folds or more rows",
) -> None:
    """Refuse data too small to fit a router on: the rows it is fitted on (all of them, or, with
    ``folds``, the training part of each cross-validation fold) need INNER_FOLDS distinct prompts."""
    distinct = distinct_prompts(prompts)
    if folds is None:
        if distinct < INNER_FOLDS:
            raise ConfigError(
                f"{path}: {distinct} distinct prompts; a router is tuned on {INNER_FOLDS} grouped folds of the "
                f"rows it is fitted on and needs {INNER_FOLDS} or more"
            )
        return
    why = "each fold needs one at least"
    if distinct >= folds:
        smallest = min(distinct_prompts([prompts[i] for i in part]) for part, _ in grouped_folds(prompts, folds, seed))
        if smallest >= INNER_FOLDS:
            return
        why = f"the training part of each fold needs {INNER_FOLDS} distinct prompts (the smallest has {smallest})"
    raise ConfigError(f"{path}: {distinct} distinct prompts are too few for {folds} folds: {why}; {advice}")


def embed_cached(prompts: Sequence[str], embedder: Any, cache: Path | None = None, batch: int = 256) -> np.ndarray:
    """Embed prompts once; the matrix is cached under ``<cache>/embeddings/<sha256>.npy``.

    An embedder that wraps another (``base`` and ``extra(texts)``, e.g. ``FeaturedEmbedder``)
    caches the base's matrix and appends its own columns, which cost microseconds a prompt."""
    from tqdm import tqdm

    if hasattr(embedder, "base") and hasattr(embedder, "extra"):
        return np.hstack([embed_cached(prompts, embedder.base, cache, batch), embedder.extra(prompts)])

    digest = hashlib.sha256(embedder.name.encode())
    for prompt in prompts:
        digest.update(b"\0" + prompt.encode())
    folder = (cache or cache_dir()) / "embeddings"
    target = folder / f"{digest.hexdigest()}.npy"
    if target.exists():
        return np.load(target, allow_pickle=False)
    chunks = []
    for start in tqdm(range(0, len(prompts), batch), desc=f"embedding ({embedder.name})", unit="batch"):
        chunks.append(np.asarray(embedder.encode(list(prompts[start : start + batch])), dtype=np.float32))
    matrix = np.concatenate(chunks) if chunks else np.zeros((0, embedder.dim), np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial.npy")
    np.save(partial, matrix, allow_pickle=False)
    partial.replace(target)
    return matrix
