"""The ``coserve`` command line: argument parsing, ``experts``, ``route`` and error exits."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from conftest import HELD_OUT, write_library

from coserve.cli import build_parser, cmd_experts, cmd_route, cmd_serve, main


def test_parse_serve() -> None:
    args = build_parser().parse_args(["serve", "--port", "9000"])
    assert args.command == "serve"
    assert args.port == 9000
    assert args.host == "127.0.0.1"
    assert args.library is None
    assert args.func is cmd_serve


def test_parse_route() -> None:
    args = build_parser().parse_args(["route", "x"])
    assert args.func is cmd_route
    assert args.text == ["x"]
    assert args.json is False
    args = build_parser().parse_args(["route", "--json", "--library", "lib.yaml", "a b", "c"])
    assert (args.text, args.json, args.library) == (["a b", "c"], True, "lib.yaml")


def test_parse_experts() -> None:
    args = build_parser().parse_args(["experts", "--json"])
    assert args.func is cmd_experts
    assert args.json is True


@pytest.mark.parametrize("argv", [[], ["dance"], ["serve", "--port", "many"], ["serve", "--log-level", "loud"]])
def test_parse_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 2
    assert capsys.readouterr().err


def _library_with_sources(tmp_path: Path) -> Path:
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "small.bin").write_bytes(b"s" * 1000)
    (tmp_path / "w" / "coder1.bin").write_bytes(b"c" * 300)
    (tmp_path / "w" / "coder2.bin").write_bytes(b"c" * 200)
    fields = {
        "small": {"source": "w/small.bin"},
        "coder": {"source": ["w/coder1.bin", "w/coder2.bin"], "sha256": "0" * 64},
        "big": {"source": "w/missing.bin"},
    }
    return write_library(tmp_path, fields=fields)


def test_experts_json(tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _library_with_sources(tmp_path)
    assert main(["experts", "--json", "--library", str(path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["library"] == str(path.resolve())
    rows = {row["name"]: row for row in out["experts"]}
    assert list(rows) == ["small", "coder", "big"]
    assert rows["small"]["backend"] == "fake"
    assert rows["small"]["params_b"] == 0.1
    assert rows["small"]["tags"] == ["chat"]
    assert rows["small"]["price"] == pytest.approx(0.1)
    assert (rows["small"]["bytes"], rows["small"]["tier"], rows["small"]["source"]) == (1000, "disk", "w/small.bin")
    assert (rows["coder"]["bytes"], rows["coder"]["tier"]) == (500, "disk")  # parts summed, not assembled
    assert rows["coder"]["source"].startswith("2 parts, w/coder1.bin")
    assert (rows["big"]["bytes"], rows["big"]["tier"]) == (None, "missing")
    assert rows["small"]["loaded_bytes"] == 10 * 2**20  # the fake's footprint: its nbytes option
    assert rows["coder"]["loaded_bytes"] is None  # not assembled yet: unknown, and not assembled for it
    assert rows["coder"]["categories"] == ["code"]
    assert rows["big"]["categories"] == ["math"]
    # the fake backend's, nothing declared: all but vision (docs/library.md)
    expected = ["frequency_penalty", "json_schema", "logprobs", "presence_penalty", "tools"]
    assert rows["small"]["capabilities"] == expected
    assert not (cache / "models").exists()  # listing never assembles


def test_experts_table(tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _library_with_sources(tmp_path)
    assert main(["experts", "--library", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"library: {path.resolve()}" in out
    lines = out.splitlines()
    assert any(line.startswith("small") and "fake" in line and "chat" in line for line in lines)
    assert any(line.startswith("big") and "missing" in line for line in lines)
    assert "fallback: big below confidence 0.4" in out


def test_experts_json_for_experts_without_source(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_library(tmp_path)  # fake experts need no model file
    assert main(["experts", "--json", "--library", str(path)]) == 0
    rows = json.loads(capsys.readouterr().out)["experts"]
    assert [row["name"] for row in rows] == ["small", "coder", "big"]
    assert all(row["source"] == "-" for row in rows)
    assert all(row["bytes"] is None for row in rows)  # no file, not a file of 0 bytes


def test_experts_table_says_which_experts_have_no_file_or_miss_it(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Session 12's walk: an expert whose backend takes no model file showed "0 MiB".
    path = write_library(tmp_path, fields={"big": {"source": "w/missing.bin"}})
    assert main(["experts", "--library", str(path)]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()}
    assert rows["small"] == ["small", "fake", "0.10B", "no", "file", "-", "2048", "disk", "chat", "-"]
    assert rows["big"] == ["big", "fake", "1.50B", "missing", "-", "8192", "missing", "math", "w/missing.bin"]


def test_route_json(tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_library(tmp_path)
    prompts = [HELD_OUT["code"], HELD_OUT["math"], HELD_OUT["chat"]]
    assert main(["route", "--json", "--library", str(path), *prompts]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    rows = [json.loads(line) for line in lines]
    assert [row["text"] for row in rows] == prompts
    assert [row["expert"] for row in rows] == ["coder", "big", "small"]
    assert [row["category"] for row in rows] == ["code", "math", "chat"]
    assert all(row["reason"] == "routed" for row in rows)
    for row in rows:
        probabilities = row["probabilities"]
        assert set(probabilities) == {"code", "math", "chat"}
        assert list(probabilities.values()) == sorted(probabilities.values(), reverse=True)
        assert sum(probabilities.values()) == pytest.approx(1, abs=1e-3)
    assert len(list((cache / "routers").iterdir())) == 1  # trained once, cached under $COSERVE_CACHE


def test_route_reads_stdin(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_library(tmp_path)
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{HELD_OUT['chat']}\n\n{HELD_OUT['code']}\n"))
    assert main(["route", "--json", "--library", str(path)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(row["text"], row["expert"]) for row in rows] == [(HELD_OUT["chat"], "small"), (HELD_OUT["code"], "coder")]


def test_route_table(tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_library(tmp_path)
    assert main(["route", "--library", str(path), HELD_OUT["code"]]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert line.split()[:3] == ["coder", "code", "routed"]
    assert line.endswith(HELD_OUT["code"])


def test_bad_library_path(tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "absent.yaml"
    for command in (["experts"], ["route", "hello"]):
        assert main([*command, "--library", str(missing)]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        (line,) = captured.err.strip().splitlines()
        assert line.startswith("coserve: error:")
        assert str(missing) in line


def test_invalid_library(tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_library(tmp_path, fields={"coder": {"bakend": "fake"}})
    assert main(["experts", "--library", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("coserve: error:")
    assert "experts[1].bakend: unknown key" in err
