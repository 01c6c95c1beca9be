"""``coserve eval-trained``: the folder ``coserve train`` wrote, scored on held-out outcomes as a library
would route with it (its own embedder, its own budget or another), against each single expert."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_eval_harness import CHAT_WORDS, CODE_WORDS
from test_train_cli import trained  # noqa: F401  (a fixture: a map router trained at 6 B, hashing embedder)

from coserve.cli import main


def _held_out(folder: Path, n: int = 40, drop: str | None = None) -> Path:
    """Prompts the router never saw (another seed), scored as the training file scores them."""
    rng = np.random.default_rng(7)
    rows = []
    for i in range(n):
        category = "code" if i % 2 == 0 else "chat"
        prompt = " ".join(rng.choice(CODE_WORDS if category == "code" else CHAT_WORDS, size=5)) + f" held {i}"
        scores = {"small": float(category == "chat"), "mid": 0.6, "big": 1.0 if category == "code" else 0.5}
        if drop:
            scores.pop(drop)
        rows.append({"id": f"h{i}", "prompt": prompt, "category": category, "scores": scores})
    path = folder / "held_out.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_trained_router_is_scored_against_every_single_expert(
    trained: tuple[Path, Path],  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    router, _ = trained
    out = tmp_path / "report.json"
    assert main(["eval-trained", "--router", str(router), "--test", str(_held_out(tmp_path)), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    r = report["router"]
    # at 6 B the map sends chat to small (perfect there, 1 B) and code to big (perfect there, 10 B)
    assert r["quality"] == 1.0 and r["avg_params_b"] == 5.5 and r["share"] == {"small": 0.5, "mid": 0.0, "big": 0.5}
    assert r["category_accuracy"] == 1.0 and r["budget"] == 6.0 and r["budget_axis"] == "params"
    assert r["by_category"] == {"chat": {"n": 20, "quality": 1.0, "avg_cost": 1.0},
                                "code": {"n": 20, "quality": 1.0, "avg_cost": 10.0}}  # fmt: skip
    assert report["baselines"]["big"]["quality"] == 0.75 and report["baselines"]["oracle"]["quality"] == 1.0
    # paired by prompt: the router beats big on every chat prompt by 0.5 and ties on code, so the margin's
    # bootstrap interval is the spread of the chat share in resamples of 40 prompts around +0.25
    assert report["best_single"]["expert"] == "big" and report["best_single"]["margin"] == 0.25
    low, high = report["best_single"]["interval_95"]
    assert 0.1 < low < 0.25 < high < 0.4
    assert report["best_single_affordable"] == {"expert": "mid", "margin": 0.4, "interval_95": [0.4, 0.4]}
    assert report["meta"]["embedder"] == "hashing" and report["meta"]["n_eval"] == 40
    assert report["provenance"]["command"].startswith("coserve eval-trained --router")
    printed = capsys.readouterr().out
    assert f"router - best single (big): +0.250 [{low:+.3f}, {high:+.3f}]" in printed
    assert "router - best single affordable (mid): +0.400 [+0.400, +0.400]" in printed


def test_another_budget_on_the_routers_axis(trained: tuple[Path, Path], tmp_path: Path) -> None:  # noqa: F811
    router, _ = trained
    out = tmp_path / "report.json"
    held = str(_held_out(tmp_path))
    assert main(["eval-trained", "--router", str(router), "--test", held, "--json", str(out), "--budget", "1"]) == 0
    r = json.loads(out.read_text())["router"]
    assert r["budget"] == 1.0 and r["avg_params_b"] == 1.0 and r["quality"] == 0.5  # small alone
    assert "decisions" not in json.loads(out.read_text())
    assert main(["eval-trained", "--router", str(router), "--test", held, "--json", str(out), "--decisions"]) == 0
    decisions = json.loads(out.read_text())["decisions"]
    assert len(decisions) == 40 and decisions[0] == {"id": "h0", "category": "code", "expert": "big", "score": 1.0}
    assert {d["expert"] for d in decisions if d["category"] == "chat"} == {"small"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("budget", "--budget 0.5: below the cheapest expert's params cost (1)"),
        ("lacks", "'mid' is scored on 0 of 40 rows"),
        ("no_router", "manifest.json"),
        ("json_folder", "--json"),
    ],
)
def test_a_mistake_is_one_line_and_nothing_is_written(
    trained: tuple[Path, Path],  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    change: str,
    message: str,
) -> None:
    router, _ = trained
    out = tmp_path / "report.json"
    held = _held_out(tmp_path, drop="mid" if change == "lacks" else None)
    args = ["eval-trained", "--router", str(router), "--test", str(held), "--json", str(out)]
    if change == "budget":
        args += ["--budget", "0.5"]
    if change == "no_router":
        args[2] = str(tmp_path / "nowhere")
    if change == "json_folder":
        args[-1] = str(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("coserve: error: ") and message in err and "Traceback" not in err
    assert not out.exists()
