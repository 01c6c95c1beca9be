"""The cascade's start gate (coserve.router.gate, ``routing.cascade.start_gate``): its prompt features,
the model and its file, the live cascade skipping its start through the real server over fake experts,
the replay with a gate (coserve.eval.cascade.StartRule), ``coserve train-check --gate`` and prompts
rebuilt from a suite. Expectations worked out by hand.

Gate files here are written by hand: zero means, unit scales, an intercept and one weight on the
``constraints`` feature, so a prompt without a constraints section has P = sigmoid(3) = 0.9526 and
one with it P = sigmoid(3 - 6) = 0.0474.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from coserve.cli import main
from coserve.config import load_library
from coserve.engine.engine import Engine
from coserve.errors import ConfigError
from coserve.eval.cascade import StartRule, read_signal_rows, replay
from coserve.outcomes.prompts import with_prompts
from coserve.router.features import FEATURE_NAMES, prompt_features
from coserve.router.gate import GATE_FEATURES, StartGate, gate_features, load_gate
from coserve.server.app import create_app
from tests.conftest import write_library
from tests.test_cascade import HIGH, LOW, ask, cascade_library, logged, p, step, streamed, write_check
from tests.test_cascade import serve as serve_cascade  # noqa: F401 (fixture)
from tests.test_cascade_categories import CODE, sections
from tests.test_cascade_check import routed_rows
from tests.test_cascade_scripts import PARAMS, script
from tests.test_cascade_scripts import rows as synthetic_rows

EASY = "hello friend how are you this morning"
HARD = "hello friend how are you this morning\nConstraints:\n- 1 <= n <= 10^5"
P_EASY, P_HARD = round(1 / (1 + math.exp(-3)), 4), round(1 / (1 + math.exp(3)), 4)  # 0.9526, 0.0474


def write_gate(path: Path, expert: str, intercept: float = 3.0, constraints: float = -6.0) -> Path:
    coef = [constraints if name == "constraints" else 0.0 for name in GATE_FEATURES]
    state = {
        "format_version": 1,
        "kind": "start_gate",
        "expert": expert,
        "features": list(GATE_FEATURES),
        "C": 1.0,
        "good": 0.5,
        "mean": [0.0] * len(coef),
        "scale": [1.0] * len(coef),
        "coef": coef,
        "intercept": intercept,
    }
    path.write_text(json.dumps(state))
    return path


def test_gate_features_of_a_prompt() -> None:
    prompt = (
        'def f(nums):\n    """Count subarrays, modulo 10^9 + 7, of every subarray.\n\n'
        '    Constraints:\n    - 1 <= nums.length <= 10^5\n\n    >>> f([1, 2])\n    3\n    """\n'
    )
    features = gate_features(prompt, 0.75)
    assert list(features) == list(GATE_FEATURES)
    base = dict(zip(FEATURE_NAMES, prompt_features([prompt])[0].tolist(), strict=True))
    assert {k: features[k] for k in FEATURE_NAMES} == base
    assert features["log_examples"] == math.log1p(1)  # one doctest with an expected value
    assert features["constraints"] == 1.0
    assert features["log_bound"] == 1.0  # 10^9: 9 / 9
    assert features["modulo"] == 1.0
    assert features["algorithm_words"] == math.log1p(2)  # "subarrays", "subarray"
    assert features["confidence"] == 0.75
    plain = gate_features("What is 2 + 2?", 0.5)
    assert (plain["log_examples"], plain["constraints"], plain["log_bound"], plain["modulo"]) == (0.0, 0.0, 0.0, 0.0)
    assert gate_features("a list of 250000 items", 1.0)["log_bound"] == 5 / 9  # six digits: 10^5


def test_the_gate_learns_a_marker_and_round_trips(tmp_path: Path) -> None:
    prompts = [f"task {i}\nConstraints: n <= {i}" for i in range(20)] + [f"task {i}" for i in range(20)]
    scores = [0.0] * 20 + [1.0] * 20  # the start expert fails every prompt with a constraints section
    gate = StartGate("coder").fit(prompts, [0.9] * 40, scores)
    hard, easy = gate.predict_proba(["new\nConstraints: n <= 3", "new"], [0.9, 0.9])
    assert hard < 0.5 < easy
    gate.save(tmp_path / "gate.json", cv={"auc": 1.0})
    again = load_gate(tmp_path / "gate.json")
    assert again.expert == "coder" and again.feature_names == GATE_FEATURES
    assert again.probability("new", 0.9) == gate.probability("new", 0.9)
    with pytest.raises(ConfigError, match="both good and bad answers of coder"):
        StartGate("coder").fit(prompts, [0.9] * 40, [1.0] * 40)
    with pytest.raises(ConfigError, match="unknown gate features"):
        StartGate("coder", features=("log_chars", "colour"))


def test_unusable_gate_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.json: cannot read the start gate"):
        load_gate(tmp_path / "nope.json")
    (tmp_path / "check.json").write_text(json.dumps({"format_version": 2, "kind": "logistic"}))
    with pytest.raises(ConfigError, match="not a start gate of format 1"):
        load_gate(tmp_path / "check.json")
    state = json.loads(write_gate(tmp_path / "gate.json", "small").read_text())
    (tmp_path / "short.json").write_text(json.dumps({**state, "coef": [0.0]}))
    with pytest.raises(ConfigError, match=f"do not match its {len(GATE_FEATURES)} features"):
        load_gate(tmp_path / "short.json")


@pytest.mark.parametrize(
    ("cascade", "message"),
    [
        ({"start_gate_threshold": 0.3}, "start_gate_threshold is set but start_gate"),
        ({"start_gate": "gate.json", "start_gate_threshold": 1.5}, "start_gate_threshold"),
    ],
)
def test_bad_gate_settings_are_refused(tmp_path: Path, cascade: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_library(write_library(tmp_path, **cascade_library(tmp_path, {"small": 0.0}, **cascade)))


def test_a_gate_the_library_cannot_use_stops_the_start(make_engine: Callable[..., Engine], tmp_path: Path) -> None:
    missing = cascade_library(tmp_path, {"small": 0.0}, start_gate=str(tmp_path / "nope.json"))
    with pytest.raises(ConfigError, match=r"nope\.json: cannot read the start gate"):
        make_engine(**missing)
    stranger = write_gate(tmp_path / "gate.json", "nobody")
    with pytest.raises(
        ConfigError, match="the start gate is for expert 'nobody', not an expert of this library"
    ) as info:
        make_engine(**cascade_library(tmp_path, {"small": 0.0}, start_gate=str(stranger)))
    assert info.value.message.startswith("routing.cascade.start_gate: ")  # names the setting to fix
    assert "(experts: " in info.value.message


def test_a_prompt_that_looks_hard_skips_the_start(serve_cascade: Callable[..., TestClient], tmp_path: Path) -> None:  # noqa: F811
    gate = str(write_gate(tmp_path / "gate.json", "small"))
    with serve_cascade({"small": HIGH, "coder": HIGH, "big": HIGH}, start_gate=gate) as client:
        easy = ask(client, EASY, max_tokens=4)
        assert easy["coserve"]["cascade"] == [step("small", p(HIGH), "accepted", "check")]
        hard = ask(client, HARD, max_tokens=4)
        # break-even small -> coder: 0.1 / 0.5 = 0.2 > 0.0474: the gate skips small, coder answers first
        expected = [step("small", P_HARD, "skipped", "start_gate", None), step("coder", p(HIGH), "accepted", "check")]
        assert hard["coserve"]["cascade"] == expected
        assert hard["model"] == "coder" and hard["choices"][0]["message"]["content"] == "coder says: hello friend"
        assert logged(client) == [[step("small", p(HIGH), "accepted", "check")], expected]


def test_a_skipped_start_is_not_counted_as_a_step_asked(
    serve_cascade: Callable[..., TestClient],  # noqa: F811
    tmp_path: Path,
) -> None:
    gate = str(write_gate(tmp_path / "gate.json", "small"))
    with serve_cascade({"small": HIGH, "coder": LOW, "big": LOW}, start_gate=gate, max_steps=2) as client:
        assert ask(client, HARD, max_tokens=4)["coserve"]["cascade"] == [
            step("small", P_HARD, "skipped", "start_gate", None),
            step("coder", p(LOW), "escalated", "check"),
            step("big", p(LOW), "accepted", "no_stronger_expert"),
        ]


def test_the_gate_threshold_replaces_break_even(serve_cascade: Callable[..., TestClient], tmp_path: Path) -> None:  # noqa: F811
    gate = str(write_gate(tmp_path / "gate.json", "small"))
    with serve_cascade({"small": HIGH, "coder": HIGH, "big": HIGH}, start_gate=gate, start_gate_threshold=0.04) as c:
        assert ask(c, HARD, max_tokens=4)["coserve"]["cascade"] == [step("small", p(HIGH), "accepted", "check")]
    with serve_cascade({"small": HIGH, "coder": HIGH, "big": HIGH}, start_gate=gate, start_gate_threshold=0.96) as c:
        assert ask(c, EASY, max_tokens=4)["coserve"]["cascade"][0] == step(
            "small", P_EASY, "skipped", "start_gate", None
        )


def test_a_gate_for_another_expert_does_not_act(serve_cascade: Callable[..., TestClient], tmp_path: Path) -> None:  # noqa: F811
    gate = str(write_gate(tmp_path / "gate.json", "coder"))  # the ladder starts at small
    with serve_cascade({"small": HIGH, "coder": HIGH, "big": HIGH}, start_gate=gate) as client:
        assert ask(client, HARD, max_tokens=4)["coserve"]["cascade"] == [step("small", p(HIGH), "accepted", "check")]


def test_an_unbuffered_stream_skips_before_the_first_token(
    serve_cascade: Callable[..., TestClient],  # noqa: F811
    tmp_path: Path,
) -> None:
    gate = str(write_gate(tmp_path / "gate.json", "small", intercept=-3.0, constraints=0.0))  # every prompt: 0.0474
    with serve_cascade({"small": HIGH, "coder": HIGH, "big": HIGH}, start_gate=gate) as client:
        text, steps = streamed(client)
        assert text == "coder says: hello friend"
        assert steps == [
            step("small", P_HARD, "skipped", "start_gate", None),
            step("coder", None, "accepted", "unchecked_stream", None),
        ]


def test_a_per_category_start_is_gated(make_engine: Callable[..., Engine], tmp_path: Path) -> None:
    gate = str(write_gate(tmp_path / "gate.json", "small"))
    library = sections(tmp_path, {"small": HIGH, "coder": HIGH, "big": HIGH}, start_gate=gate)
    with TestClient(create_app(make_engine(**library))) as client:
        body = {"model": "coserve", "messages": [{"role": "user", "content": f"{CODE}\nConstraints: n <= 10"}]}
        answer = client.post("/v1/chat/completions", json={**body, "max_tokens": 4}).json()
        assert answer["coserve"]["category"] == "code"
        # code starts at small (0.1 B); the next rung of the decision's order is big (1.5 B): limit 0.0667
        assert answer["coserve"]["cascade"] == [
            step("small", P_HARD, "skipped", "start_gate", None),
            step("big", p(HIGH), "accepted", "check"),
        ]


def test_replay_with_a_start_gate() -> None:
    """Plain cascade small (0.1) -> coder (0.5) -> big (1.5); gate limit 0.1 / 0.5 = 0.2."""
    params = {"small": 0.1, "coder": 0.5, "big": 1.5}
    rows = [
        {"id": "a", "scores": {"small": 1.0, "coder": 1.0, "big": 1.0}},
        {"id": "b", "scores": {"small": 0.0, "coder": 1.0, "big": 1.0}},
        {"id": "c", "scores": {"small": 0.0, "coder": 0.0, "big": 1.0}},
    ]
    check = {("a", "small"): 0.9, ("b", "small"): 0.1, ("b", "coder"): 0.9, ("c", "small"): 0.1, ("c", "coder"): 0.1}
    rule = StartRule("small", {"a": 0.9, "b": 0.1, "c": 0.1})
    gated = replay(rows, None, check, 0.5, 3, params, gate=rule)
    # a: small accepted (0.1); b: small skipped, coder accepted (0.5); c: skipped, coder, big (2.0)
    assert gated["cascade"] == {"quality": 1.0, "avg_params_b": round(2.6 / 3, 4)}
    assert gated["steps"] == {"1": 2, "2": 1} and gated["skipped"] == 1 + 1
    plain = replay(rows, None, check, 0.5, 3, params)  # b: 0.1 + 0.5; c: 0.1 + 0.5 + 1.5
    assert plain["cascade"] == {"quality": 1.0, "avg_params_b": round(2.8 / 3, 4)} and "skipped" not in plain
    assert replay(rows, None, check, 0.5, 3, params, gate=StartRule("small", rule.probability, 0.05))["skipped"] == 0


def test_prompts_are_rebuilt_from_the_suite() -> None:
    recorded = json.loads(Path("docs/data/cascade9-heldout.jsonl").read_text().splitlines()[0])
    stripped = {k: v for k, v in recorded.items() if k != "prompt"}
    assert with_prompts([stripped])[0]["prompt"] == recorded["prompt"]
    assert "prompt" not in stripped  # copies: the caller's rows are not changed
    with pytest.raises(ConfigError, match="no suite 'nosuch'"):
        with_prompts([{"id": "nosuch-3"}])


def test_train_check_fits_a_gate(tmp_path: Path, capsys: Any) -> None:
    data = "docs/data/cascade9-train.jsonl"
    rows = [json.loads(line) for line in Path(data).read_text().splitlines()]
    prompted = [r for r in rows if r.get("prompt")]
    out = tmp_path / "gate.json"
    code = main(["train-check", "--data", data, "--out", str(tmp_path / "check.json"), "--gate", str(out)])
    assert code == 2 and "--gate needs --gate-expert" in capsys.readouterr().err
    assert not (tmp_path / "check.json").exists()  # refused before anything is fitted
    assert (
        main(
            [
                "train-check",
                "--data",
                data,
                "--out",
                str(tmp_path / "c.json"),
                "--gate",
                str(out),
                "--gate-expert",
                "coder",
            ]
        )
        == 0
    )
    saved = json.loads(out.read_text())
    assert saved["kind"] == "start_gate" and saved["expert"] == "coder"
    assert saved["cv"]["items"] == len(prompted)  # rows without a prompt are left out
    assert saved["cv"]["good_rate"] == round(sum(r["scores"]["coder"] >= 0.5 for r in prompted) / len(prompted), 4)
    assert load_gate(out).expert == "coder"


def test_train_check_refuses_gate_options_it_cannot_use(tmp_path: Path, capsys: Any) -> None:
    check = tmp_path / "check.json"
    base = ["train-check", "--data", "docs/data/cascade10-heldout.jsonl", "--out", str(check)]
    assert main([*base, "--gate-expert", "coder"]) == 2  # no --gate: the gate would not be written
    assert "--gate-expert and --suite-prompts are for the start gate: give --gate FILE too" in capsys.readouterr().err
    assert main([*base, "--gate", str(tmp_path / "g.json"), "--gate-expert", "nobody"]) == 2
    err = capsys.readouterr().err
    assert "--gate-expert 'nobody': no answers of it in the data (experts: coder, general, large)" in err
    assert not check.exists()  # both refused before anything is fitted
    # LeetCode rows keep no prompt: the error names the option that rebuilds them
    assert main([*base, "--gate", str(tmp_path / "g.json"), "--gate-expert", "coder"]) == 2
    assert "--suite-prompts rebuilds them from their suites" in capsys.readouterr().err


def test_eval_draws_gated_points(tmp_path: Path, cache: Path, capsys: Any) -> None:
    """24 rows (tests/test_cascade_check.py's two routed rows, alternated): chat rows start at small
    (the fake library's map), right on every 4th item; code rows start at coder. Every prompt where
    small is wrong says "Constraints:", so the gate, refitted out of fold, skips exactly those."""
    rows = []
    for i in range(24):
        row = routed_rows()[i % 2]
        hard = i % 4 != 0
        row["id"], row["prompt"] = f"r{i}", f"{row['prompt']} {i}" + ("\nConstraints: n <= 5" if hard else "")
        row["scores"] = {"small": 0.0 if hard else 1.0, "coder": 1.0, "big": 1.0}
        rows.append(row)
    data, experts = tmp_path / "data.jsonl", tmp_path / "experts.json"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    experts.write_text(json.dumps({e: {"params_b": p} for e, p in (("small", 0.1), ("coder", 0.5), ("big", 1.5))}))
    gate = write_gate(tmp_path / "gate.json", "small")
    check = write_check(tmp_path / "check.json", {"small": 0.0})
    cascade = {"check": str(check), "max_steps": 3, "start_gate": str(gate), "start_gate_threshold": 0.5}
    library = write_library(tmp_path, routing={"mode": "cascade", "cascade": cascade})
    report = tmp_path / "r.json"
    argv = ["eval", "--data", str(data), "--experts", str(experts), "--embedder", "hashing", "--folds", "2"]
    assert main([*argv, "--routers", "map-logistic", "--json", str(report), "--cascade", str(library)]) == 0
    gated = json.loads(report.read_text())["cascade"]["gated"]
    assert gated["gate_cv"]["items"] == 24 and gated["gate_cv"]["auc"] == 1.0 and len(gated["points"]) == 9
    always = gated["points"][-1]  # threshold 1.01: every ladder climbs to big
    # 12 chat rows: 6 easy ones small + coder + big (2.1 B), 6 hard ones skip small (2.0 B); 12 code rows 2.0 B
    assert always["skipped"] == 6
    assert always["cascade"] == {"quality": 1.0, "avg_params_b": round((6 * 2.1 + 18 * 2.0) / 24, 4)}
    capsys.readouterr()
    del rows[0]["prompt"]  # one row without a prompt: no gated points, and the output says why
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv += ["--on-bad", "skip", "--routers", "map-logistic", "--json", str(report), "--cascade", str(library)]
    assert main(argv) == 0 and "gated" not in json.loads(report.read_text())["cascade"]
    assert "coserve: no gated cascade points: 1 of 24 rows have no prompt" in capsys.readouterr().err


def test_cascade_measure_replays_the_librarys_gate(tmp_path: Path) -> None:
    """tests/test_cascade_scripts.py's synthetic knowledge rows (the cascade library's ladder: coder,
    then large), each prompt saying "Constraints:" where coder is wrong. The library's gate (written
    by hand: 0.0474 on those, 0.9526 elsewhere; break-even 0.494 / 1.54 = 0.32) skips coder on them."""

    def with_marks(sample: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, row in enumerate(sample):
            row["prompt"] = f"question {i}" + ("" if row["scores"]["coder"] else "\nConstraints: n <= 9")
        return sample

    train, heldout = tmp_path / "train.jsonl", tmp_path / "heldout.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in with_marks(synthetic_rows(40, 0, routed=False))))
    held = with_marks(synthetic_rows(10, 1, routed=True))
    heldout.write_text("".join(json.dumps(r) + "\n" for r in held))
    check = write_check(tmp_path / "check.json", dict.fromkeys(PARAMS, 0.0))
    library = tmp_path / "cascade.yaml"
    gate = str(write_gate(tmp_path / "gate.json", "coder"))
    script("scripts/cascade_library.py", "--check", str(check), "--start-gate", gate, "--out", str(library))
    assert yaml.safe_load(library.read_text())["routing"]["cascade"]["start_gate"] == gate
    argv = ["--train", str(train), "--heldout", str(heldout), "--library", str(library)]
    script("scripts/cascade_measure.py", *argv, "--out-dir", str(tmp_path / "data"))
    on_train = json.loads((tmp_path / "data" / "cascade-check.json").read_text())["gated_on_train"]
    assert on_train["gate_cv"]["items"] == 40 and on_train["gate_cv"]["auc"] == 1.0 and len(on_train["points"]) == 9
    gated = json.loads((tmp_path / "data" / "cascade-vs-single.json").read_text())["gated_on_heldout"]
    # a perfect check with the gate: coder's answer where coder is right (0.494 B), else large's (1.54 B)
    expected = [(1.0, 0.494) if r["scores"]["coder"] else (r["scores"]["large"], 1.54) for r in held]
    quality, params = (round(sum(pair[k] for pair in expected) / 10, 4) for k in (0, 1))
    assert gated["oracle"]["cascade"] == {"quality": quality, "avg_params_b": params}
    assert gated["oracle"]["skipped"] == sum(not r["scores"]["coder"] for r in held)


def test_an_item_in_two_files_counts_once(tmp_path: Path) -> None:
    first, second = routed_rows()
    again = {**first, "scores": {"small": 1.0, "coder": 1.0, "big": 1.0}}  # a later run of item r0
    (tmp_path / "a.jsonl").write_text(json.dumps(first) + "\n" + json.dumps(second) + "\n")
    (tmp_path / "b.jsonl").write_text(json.dumps(again) + "\n")
    read = read_signal_rows([tmp_path / "a.jsonl", tmp_path / "b.jsonl"])
    assert [(r["id"], r["scores"]["small"]) for r in read] == [("r1", 0.0), ("r0", 1.0)]


def test_the_gate_study_script(tmp_path: Path) -> None:
    """scripts/cascade_gate_study.py on 30 synthetic code rows (the default library sends code to
    large; the plan starts code at coder). Hand-derived: single choice is large alone; a perfect gate
    with a perfect check answers with coder where coder is right, else with large (one step each)."""
    sample = synthetic_rows(30, 2, routed=False)
    for i, row in enumerate(sample):
        row["id"] = f"humaneval-{i}"
        row["router"]["probabilities"] = {"code": 0.9, "knowledge": 0.04, "math": 0.03, "writing": 0.02, "chat": 0.01}
        row["prompt"] = f"write f{i}" + ("" if row["scores"]["coder"] else "\nConstraints: n <= 9")
    data, plan = tmp_path / "rows.jsonl", tmp_path / "plan.json"
    data.write_text("".join(json.dumps(r) + "\n" for r in sample))
    plan.write_text(json.dumps({"starts": {"code": "coder"}, "threshold": 0.5, "max_steps": 3}))
    out = tmp_path / "study.json"
    script("scripts/cascade_gate_study.py", "--data", str(data), "--plan", str(plan), "--seeds", "0", "--folds", "3",
           "--out", str(out))  # fmt: skip
    study = json.loads(out.read_text())
    pooled = study["mean_over_seeds"]["pooled"]
    large = sum(r["scores"]["large"] for r in sample) / 30
    assert pooled["single"]["quality"] == round(large, 4) and pooled["single"]["avg_params_b"] == 1.54
    both = [(1.0, 0.494) if r["scores"]["coder"] else (r["scores"]["large"], 1.54) for r in sample]
    assert pooled["perfect_gate_perfect_check"]["quality"] == round(sum(q for q, _ in both) / 30, 4)
    assert pooled["perfect_gate_perfect_check"]["avg_params_b"] == round(sum(b for _, b in both) / 30, 4)
    assert study["items"] == {"pooled": 30, "humaneval": 30} and "commit" in study["provenance"]


def test_compare_does_not_count_a_skipped_start(tmp_path: Path) -> None:
    from coserve.outcomes.compare import compare_routed

    chat, code = routed_rows()
    code["routed_steps"] = [{"expert": "small", "outcome": "skipped"}, {"expert": "coder", "outcome": "accepted"}]
    data = tmp_path / "heldout.jsonl"
    data.write_text(json.dumps(chat) + "\n" + json.dumps(code) + "\n")
    result = compare_routed(
        data, {"small": 0.1, "coder": 0.5, "big": 1.5}, single=load_library(write_library(tmp_path))
    )
    assert result["columns"]["routed"]["avg_params_b"] == round((0.1 + 0.5) / 2, 4)  # small was never asked
    assert result["cascade_steps"] == {1: 2}
