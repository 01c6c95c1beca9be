"""`coserve serve` and `deploy`: what would bind or open badly is refused before anything starts."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from conftest import write_library

from coserve.cli import main


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        # 99999 was bound as 99999 mod 65536 = 34463 while the server said it served on 99999
        (["serve", "--port", "99999"], "argument --port: 99999 is not a TCP port (1 to 65535)"),
        (["serve", "--port", "0"], "argument --port: 0 is not a TCP port (1 to 65535)"),
        (["deploy", "--port", "65536"], "argument --port: 65536 is not a TCP port (1 to 65535)"),
        (
            ["serve", "--shutdown-timeout", "-5"],
            "argument --shutdown-timeout: -5 is not a number of seconds (0 or more)",
        ),
    ],
)
def test_out_of_range_flags_stop_the_command(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"coserve {argv[0]}: error: {message}"


@pytest.mark.parametrize("flag", ["--min-replicas", "--max-replicas"])
def test_ray_sizing_flags_without_ray_stop_serve(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, flag: str
) -> None:
    """Session 12's walk: they were ignored and the single process started (as --cluster is refused)."""

    def started(*_: object) -> None:
        raise AssertionError("the single process started")

    monkeypatch.setattr("coserve.cli.serving.load_engine", started)
    assert main(["serve", flag, "2"]) == 2
    assert capsys.readouterr().err == (
        "coserve: error: --min-replicas and --max-replicas size the Ray ingress: add --ray [ADDRESS]\n"
    )


@pytest.mark.parametrize("flags", [["--residency", "lru"], ["--log-level", "debug"], ["--residency", "lookahead"]])
def test_single_process_flags_with_ray_stop_serve(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, flags: list[str]
) -> None:
    """Session 13's walk: with --ray they were ignored; now refused before any Ray starts, the default
    value given included. (``--shutdown-timeout`` bounds the Ray path's drain: tests/test_ray_serve.py.)"""

    def started(*_: object) -> None:
        raise AssertionError("the Ray path started")

    monkeypatch.setattr("coserve.cli.cluster.cmd_serve_ray", started)
    assert main(["serve", "--ray", *flags]) == 2
    assert capsys.readouterr().err == (
        f"coserve: error: {flags[0]} is the single process's (without --ray): on Ray the hosts keep experts"
        " by lookahead, and Ray sets its own logging\n"
    )


def test_a_decision_log_that_cannot_be_opened_stops_serve_in_one_line(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # It was a traceback from the app's startup, after "serving on ..." had been printed.
    (tmp_path / "afile").write_text("not a folder")
    db = tmp_path / "afile" / "decisions.sqlite"
    library = write_library(tmp_path, server={"log": {"path": str(db)}})
    assert main(["serve", "--library", str(library), "--port", "8719"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"coserve: error: {library}: server.log.path: cannot open the decision log at {db} (")
    assert err.count("\n") == 1


def test_a_port_in_use_stops_serve_before_it_says_it_serves(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Session 12's walk: "serving on http://..." was printed, then uvicorn's bind error (exit 3).
    library = write_library(tmp_path)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as info:
            main(["serve", "--library", str(library), "--port", str(port)])
    assert info.value.code == 3  # uvicorn's startup failure, as before
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"coserve: library {library.resolve()} — experts small, coder, big"]
    assert f"error while attempting to bind on address ('127.0.0.1', {port}): address already in use" in err


def test_serve_says_it_serves_once_it_listens(tmp_path: Path) -> None:
    from live import LiveServer

    with LiveServer(tmp_path) as live:
        said = [line for line in live.output().splitlines() if "serving on" in line]
    assert said == [f"coserve: serving on {live.url}/v1 (model 'coserve' routes)"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--min-replicas", "3", "--max-replicas", "2"], "--min-replicas (3) is above --max-replicas (2)"),
        (["--min-replicas", "5"], "--min-replicas (5) is above --max-replicas (4, its default)"),
        (["--max-replicas", "0"], "--max-replicas (0) is below --min-replicas (1, its default)"),
        (["--min-replicas", "0"], "--min-replicas (0) must be at least 1"),
    ],
)
def test_ray_replica_bounds_out_of_order_name_the_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    """Session 13's Ray walk: the error said ``ray app args: need 1 <= min_replicas <= max_replicas``,
    naming the Serve config's keys to an operator who had typed flags."""
    assert main(["deploy", "--ray-config", str(tmp_path / "serve.yaml"), *flags]) == 2
    assert capsys.readouterr().err == f"coserve: error: {message}\n"
    assert not (tmp_path / "serve.yaml").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"min_replicas": 3, "max_replicas": 2}, "min_replicas (3) is above max_replicas (2)"),
        ({"min_replicas": 0}, "min_replicas (0) must be at least 1"),
    ],
)
def test_ray_replica_bounds_from_a_serve_config_name_its_keys(args: dict[str, int], message: str) -> None:
    from coserve.distributed.ray_app import AppArgs
    from coserve.errors import ConfigError

    with pytest.raises(ConfigError) as refused:
        AppArgs.from_dict(args)
    assert str(refused.value) == f"the Serve config's application args: {message}"
