"""What every ``coserve`` command shares: the ``--library`` flag and the library and engine it names.

A library read here is ready to serve: checked against its backends (coserve.backends.registry)
and with its map solved from measured outcomes where it names them (coserve.router.measured).
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from coserve.errors import ConfigError

if TYPE_CHECKING:
    from coserve.config import LibraryConfig
    from coserve.engine.engine import Engine

__all__ = [
    "DEFAULT_SHUTDOWN_S",
    "Subcommands",
    "add_library_arg",
    "at_least",
    "check_outputs",
    "check_writable",
    "comma_numbers",
    "finite",
    "load_engine",
    "load_served_library",
    "seconds",
    "share",
    "tcp_port",
    "write_router_dir",
]

DEFAULT_SHUTDOWN_S = 30.0  # seconds in-flight requests get after SIGTERM (serve's --shutdown-timeout, --ray too)

# What ``add_subparsers`` returns: each command module adds its parsers to it.
Subcommands = argparse._SubParsersAction  # type: ignore[type-arg]


def tcp_port(text: str) -> int:
    """A ``--port`` value: 1..65535 (a larger number would wrap around to another port when bound)."""
    port = int(text)
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port (1 to 65535)")
    return port


def seconds(text: str) -> float:
    """A duration flag's value: 0 or more seconds."""
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds (0 or more)")
    return value


def at_least(least: int) -> Callable[[str], int]:
    """A whole-number flag's type: ``least`` or more (``--folds``: 2, a count: 1), refused by argparse
    with the flag's name and the fix, before any work is done."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"{value} is too small: give {least} or more")
        return value

    return parse


def finite(text: str) -> float:
    """A number flag's value (a budget): finite, so ``nan`` or ``inf`` is refused before any work rather
    than solving a map nobody asked for (at ``nan`` every comparison is false)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return value


def share(text: str) -> float:
    """A score threshold's value: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not in [0, 1]")
    return value


def comma_numbers(number: type[int] | type[float], example: str) -> Callable[[str], list[float]]:
    """A list flag's type: comma-separated ``number``s (``--seeds 0,1,2``), refused by argparse with
    an ``example`` of the form."""

    def parse(text: str) -> list[float]:
        try:
            return [number(part) for part in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not comma-separated numbers ({example})") from None

    return parse


PLOT_SUFFIXES = (".png", ".svg", ".pdf")


def check_outputs(json_path: str | None, plot_path: str | None = None) -> None:
    """Refuse a ``--json``/``--plot`` file that could not be written, before the work that fills it: a
    folder on its path that is a file, a plot format matplotlib does not write (it failed after the
    report had been written)."""
    for flag, text in (("--json", json_path), ("--plot", plot_path)):
        if text is None:
            continue
        if Path(text).is_dir():
            raise ConfigError(f"{flag} {text}: a folder; name a file in it")
        check_writable(flag, Path(text))
    if plot_path is not None and Path(plot_path).suffix.lower() not in PLOT_SUFFIXES:
        raise ConfigError(f"--plot {plot_path}: give a {', '.join(PLOT_SUFFIXES)} file")


def check_writable(flag: str, path: Path) -> None:
    """Refuse an output ``path`` whose folder (or the nearest one above it that exists, which the
    command would create the rest in) is a file or not writable, before the work that fills it."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ConfigError(f"{flag} {path}: {folder} is not a folder")
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"{flag} {path}: {folder} is not writable")


def add_library_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--library", help="library file (YAML); default: the bundled default library")


def load_served_library(path: str | None) -> LibraryConfig:
    """The library file at ``path`` (default: the bundled one), checked and with its map solved."""
    from coserve.backends.registry import check_library
    from coserve.config import load_library
    from coserve.router.measured import with_measured_map

    return with_measured_map(check_library(load_library(path)))


def load_engine(library_path: str | None, residency: str = "lookahead") -> Engine:
    from coserve.engine.engine import Engine
    from coserve.paths import cache_dir

    return Engine.build(load_served_library(library_path), cache_dir(), residency=residency)  # type: ignore[arg-type]


def write_router_dir(out: Path, write: Callable[[Path], None]) -> None:
    """``write`` the router into a staging folder beside ``out``, then put it in ``out``'s place
    (``coserve train --out``, ``coserve experts add``): a failed write leaves the old router as it was,
    and the new one holds only the files ``write`` put there (a retrained router keeps no calibration.npz
    of the old one's)."""
    import shutil

    staging = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
    except OSError as exc:  # named as the user wrote it, not as the hidden staging folder
        raise OSError(exc.errno, exc.strerror, str(out)) from None
    try:
        write(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old)
    else:
        staging.rename(out)
