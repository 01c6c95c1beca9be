"""scripts/bench_repeat.py: every number of a benchmark file gathered by path, and its median and min-max."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_repeat", ROOT / "scripts" / "bench_repeat.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_numbers_by_path_without_provenance_or_booleans() -> None:
    value = {"provenance": {"cpu_count": 2}, "a": {"p50": 1.5, "ok": True}, "b": [3, {"c": 4}], "name": "x"}
    assert load().figures(value) == {"a.p50": 1.5, "b.0": 3.0, "b.1.c": 4.0}


def test_median_and_range_of_figures_every_run_holds() -> None:
    runs = [{"x": 3.0, "y": 1.0}, {"x": 1.0}, {"x": 2.0, "y": 5.0}]
    assert load().summarise(runs) == {"x": {"median": 2.0, "min": 1.0, "max": 3.0}}


def test_runs_a_command_and_writes_each_run_and_the_summary(tmp_path: Path) -> None:
    fake = tmp_path / "fake_bench.py"  # writes a figure that grows by one each run
    counter = tmp_path / "count"
    fake.write_text(
        "import json, pathlib, sys\n"
        f"c = pathlib.Path({str(counter)!r}); n = int(c.read_text()) + 1 if c.exists() else 1; c.write_text(str(n))\n"
        "pathlib.Path(sys.argv[sys.argv.index('--json') + 1]).write_text(json.dumps({'ms': n * 10}))\n"
    )
    out = tmp_path / "out.json"
    assert load().main(["--runs", "3", "--json", str(out), "--", sys.executable, str(fake)]) == 0
    body = json.loads(out.read_text())
    assert body["summary"] == {"ms": {"median": 20.0, "min": 10.0, "max": 30.0}}
    assert body["each_run"] == [{"ms": 10.0}, {"ms": 20.0}, {"ms": 30.0}]
    assert body["provenance"]["command"].startswith(".venv/bin/python scripts/bench_repeat.py --runs 3")


def test_a_failing_run_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    assert load().main(["--json", str(out), "--", sys.executable, "-c", "raise SystemExit(3)"]) == 1
    assert not out.exists()


def test_no_command_is_refused() -> None:
    with pytest.raises(SystemExit) as caught:
        load().main(["--json", "x.json"])
    assert caught.value.code == 2
