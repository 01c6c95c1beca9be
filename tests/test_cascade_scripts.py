"""The measurement scripts of docs/outcomes.md, "Cascade vs single choice": ``scripts/cascade_library.py``
writes a loadable cascade library, ``scripts/cascade_measure.py`` the two data files (synthetic rows)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from coserve.config import load_library
from coserve.router.check import BASIC_FEATURES
from coserve.router.measured import with_measured_map
from tests.test_cascade import write_check

ROOT = Path(__file__).resolve().parent.parent
PARAMS = {"general": 0.135, "coder": 0.494, "large": 1.54}


def script(*argv: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_cascade_library_is_the_default_with_a_cheaper_first_step(tmp_path: Path) -> None:
    check = write_check(tmp_path / "check.json", dict.fromkeys(PARAMS, 0.0))
    out = tmp_path / "cascade.yaml"
    script("scripts/cascade_library.py", "--check", str(check), "--threshold", "0.3", "--out", str(out))
    library = with_measured_map(load_library(out))
    assert library.routing.mode == "cascade" and library.routing.cascade is not None
    assert library.routing.cascade.threshold == 0.3 and library.routing.cascade.max_steps == 3
    assert library.router.fallback.expert == "coder"
    # `coserve map --budget 0.4` on the default library's outcomes (docs/outcomes.md)
    expected = {"code": "coder", "math": "coder", "knowledge": "coder", "writing": "general", "chat": "general"}
    assert library.router.map == expected


def rows(n: int, seed: int, routed: bool) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        mean = {e: float(rng.uniform(-2, 0)) for e in PARAMS}
        row: dict[str, Any] = {
            "id": f"mmlu-{seed}-{i}",
            "category": "knowledge",
            "scores": {e: float(mean[e] > -1) for e in PARAMS},
            "latency_s": dict.fromkeys([*PARAMS, "routed"], 1.0),
            "signals": {
                e: {"mean_logprob": mean[e], "min_logprob": mean[e], "tokens": 1, "finish": "stop", "confidence": 0.9}
                for e in PARAMS
            },
            "router": {"probabilities": {"knowledge": 0.9, "code": 0.04, "math": 0.03, "writing": 0.02, "chat": 0.01}},
        }
        if routed:  # every held-out item: coder, then large
            row["scores"]["routed"] = row["scores"]["large"]
            row["routed_expert"] = "large"
            row["routed_steps"] = [{"expert": "coder"}, {"expert": "large"}]
        out.append(row)
    return out


def test_cascade_measure_writes_both_data_files(tmp_path: Path) -> None:
    train, heldout = tmp_path / "train.jsonl", tmp_path / "heldout.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows(40, 0, routed=False)))
    heldout.write_text("".join(json.dumps(r) + "\n" for r in rows(10, 1, routed=True)))
    check = write_check(tmp_path / "check.json", dict.fromkeys(PARAMS, 0.0))
    library = tmp_path / "cascade.yaml"
    script("scripts/cascade_library.py", "--check", str(check), "--out", str(library))
    argv = ["--train", str(train), "--heldout", str(heldout), "--library", str(library), "--note", "synthetic"]
    argv += ["--mix-single", str(heldout)]  # pooled with itself, answered there by single choice
    printed = script("scripts/cascade_measure.py", *argv, "--out-dir", str(tmp_path / "data"))
    assert "10 held-out items" in printed and "perfect check quality" in printed
    check_file = json.loads((tmp_path / "data" / "cascade-check.json").read_text())
    assert (
        check_file["note"] == "synthetic" and check_file["cv"]["items"] == 40 and "commit" in check_file["provenance"]
    )
    comparison = json.loads((tmp_path / "data" / "cascade-vs-single.json").read_text())["comparison"]
    assert comparison["columns"]["routed"]["avg_params_b"] == round(0.494 + 1.54, 4)  # both steps counted
    assert comparison["columns"]["single"]["avg_params_b"] == 1.54  # the default map: knowledge -> large
    mix = json.loads((tmp_path / "data" / "cascade-vs-single.json").read_text())["mix"]
    assert mix["items"] == {"heldout": 10, "other": 10} and mix["single"]["avg_params_b"] == 1.54
    assert mix["cascade_live"]["avg_params_b"] == round((0.494 + 1.54 + 1.54) / 2, 4)
    # this library cascades every category: the other rows would not be single choice (so it says)
    assert mix["other_rows_in_a_cascading_category"] == 10


def test_cascade_measure_on_the_checks_sample_alone(tmp_path: Path) -> None:
    """Without a held-out run: the check's file only, with the basic-signal check and the perfect-check bound."""
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows(40, 0, routed=False)))
    library = tmp_path / "cascade.yaml"
    check = write_check(tmp_path / "check.json", dict.fromkeys(PARAMS, 0.0))
    script("scripts/cascade_library.py", "--check", str(check), "--out", str(library))
    argv = ["--train", str(train), "--library", str(library), "--name", "c8", "--out-dir", str(tmp_path / "data")]
    printed = script("scripts/cascade_measure.py", *argv)
    assert "a perfect check" in printed
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["c8-check.json"]
    saved = json.loads((tmp_path / "data" / "c8-check.json").read_text())
    # every item is knowledge: the cascade library's ladder is coder, then large; a perfect check takes
    # coder's answer when it is right, else large's (right or not)
    expected = [
        (r["scores"]["coder"] or r["scores"]["large"], 0.494 if r["scores"]["coder"] else 0.494 + 1.54)
        for r in rows(40, 0, routed=False)
    ]
    quality, params = (round(sum(pair[k] for pair in expected) / 40, 4) for k in (0, 1))
    assert saved["oracle_on_train"]["cascade"] == {"quality": quality, "avg_params_b": params}
    # single choice re-solved in hindsight: every item is routed to one category, so its best expert
    sample = rows(40, 0, routed=False)
    totals = {e: sum(r["scores"][e] for r in sample) for e in PARAMS}
    best = max(PARAMS, key=lambda e: (totals[e], -PARAMS[e]))
    assert saved["hindsight_map_on_train"] == {
        "map": {"knowledge": best},
        "quality": round(totals[best] / 40, 4),
        "avg_params_b": PARAMS[best],
    }
    assert saved["cv_basic_signals"]["features"] == list(BASIC_FEATURES)
    assert len(saved["replay_on_train_basic_signals"]) == 9


def test_cascade_library_plan_cascades_where_the_checks_sample_says(tmp_path: Path) -> None:
    """Code items: coder is right exactly when its mean log-probability is high (a check learns that),
    large always: a cascade from coder keeps large's quality at fewer parameters. Maths items: no
    expert cheaper than single choice's (coder) has skill, so maths keeps single choice. The map and
    fallback stay the default library's."""
    probabilities = {
        "code": {"code": 0.96, "math": 0.01, "knowledge": 0.01, "writing": 0.01, "chat": 0.01},
        "math": {"code": 0.01, "math": 0.96, "knowledge": 0.01, "writing": 0.01, "chat": 0.01},
    }
    sample = []
    for i in range(40):
        category = "code" if i < 30 else "math"
        right = category == "code" and i % 3 != 0
        mean = {"general": -1.0, "coder": -0.1 if right else -2.0, "large": -0.5}
        sample.append(
            {
                "id": f"x-{i}",
                "scores": {"general": 0.0, "coder": float(right), "large": 1.0 if category == "code" else 0.0},
                "signals": {
                    e: {"mean_logprob": m, "min_logprob": m, "tokens": 50, "finish": "stop", "confidence": 0.96}
                    for e, m in mean.items()
                },
                "router": {"probabilities": probabilities[category]},
            }
        )
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in sample))
    check = write_check(tmp_path / "check.json", dict.fromkeys(PARAMS, 0.0))
    out, plan = tmp_path / "cascade.yaml", tmp_path / "plan.json"
    argv = ["--check", str(check), "--plan", str(train), "--plan-out", str(plan), "--run-examples"]
    script("scripts/cascade_library.py", *argv, "--threshold", "0.5", "--out", str(out))
    library = load_library(out)
    assert library.routing.cascade is not None
    assert library.routing.cascade.categories == {"code": "coder"} and library.routing.cascade.run_examples
    assert library.router.fallback.expert == "large" and library.router.budget.avg_params_b == 1.0
    saved = json.loads(plan.read_text())
    assert saved["categories"]["code"]["single"] == {"quality": 1.0, "avg_params_b": 1.54}
    assert saved["categories"]["math"]["start"] is None and "commit" in saved["provenance"]


def test_cascade_library_refuses_a_library_the_server_would_refuse(tmp_path: Path) -> None:
    from tests.test_cascade_gate import write_gate  # (it imports this module)

    check = write_check(tmp_path / "check.json", dict.fromkeys(PARAMS, 0.0))
    gate = write_gate(tmp_path / "gate.json", "coder")
    stranger = write_gate(tmp_path / "stranger.json", "nobody")  # an expert the default library does not have
    out = tmp_path / "cascade.yaml"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for extra, message in (
        (["--start-gate", str(tmp_path / "missing.json")], "missing.json: cannot read the start gate"),
        (["--start-gate", str(stranger)], "the start gate is for expert 'nobody', not an expert of this library"),
        (["--start-gate", str(gate), "--start-gate-threshold", "2"], "start_gate_threshold: Input should be less"),
    ):
        argv = [sys.executable, "scripts/cascade_library.py", "--check", str(check), *extra, "--out", str(out)]
        done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert not out.exists()  # nothing left that would stop the server's start


def test_cascade_library_leaves_no_library_when_its_plan_or_out_cannot_be_read(tmp_path: Path) -> None:
    # Session 13's walk of scripts/: a missing --plan file left the library written without its plan
    # (after a traceback), and an --out in a missing folder was a FileNotFoundError traceback.
    check = write_check(tmp_path / "check.json", dict.fromkeys(PARAMS, 0.0))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for out, extra, message in (
        (tmp_path / "cascade.yaml", ["--plan", str(tmp_path / "none.jsonl")], f"{tmp_path}/none.jsonl"),
        (tmp_path / "nodir" / "cascade.yaml", [], f"{tmp_path}/nodir/cascade.yaml: No such file or directory"),
    ):
        argv = [sys.executable, "scripts/cascade_library.py", "--check", str(check), *extra, "--out", str(out)]
        done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert done.stderr.count("\n") == 1 and not out.exists()


def test_cascade_measure_refuses_a_missing_heldout_file_and_writes_nothing(tmp_path: Path) -> None:
    # It was a ConfigError traceback, after NAME-check.json had already been written.
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows(40, 0, routed=False)))
    library = tmp_path / "cascade.yaml"
    script(
        "scripts/cascade_library.py",
        "--check",
        str(write_check(tmp_path / "check.json", PARAMS)),
        "--out",
        str(library),
    )
    missing = tmp_path / "heldout.jsonl"
    argv = [
        "--train",
        str(train),
        "--heldout",
        str(missing),
        "--library",
        str(library),
        "--out-dir",
        str(tmp_path / "d"),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "scripts/cascade_measure.py", *argv], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 2
    assert (
        done.stderr
        == f"cascade_measure: error: cannot read {missing}: [Errno 2] No such file or directory: '{missing}'\n"
    )
    assert not (tmp_path / "d").exists()
    # a library that does not cascade: one line too (it was an AssertionError)
    done = subprocess.run(
        [sys.executable, "scripts/cascade_measure.py", "--train", str(train), "--library", "coserve/data/default.yaml"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert (done.returncode, done.stderr) == (
        2,
        "cascade_measure: error: coserve/data/default.yaml: not a cascade library (routing.mode: cascade)\n",
    )
