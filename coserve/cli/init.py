"""``coserve init``: an editable copy of the default library, to serve with settings of one's own.

The bundled library (``coserve/data/default.yaml``) names two files beside it, its categories and its
experts' measured outcomes; a copy of the YAML alone does not load. ``init`` writes all three into a
folder (the library as ``lib.yaml``), refuses to overwrite what is there unless told, and loads the copy
once so that what it leaves behind is known to start.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from coserve.cli.common import Subcommands
from coserve.errors import CoserveError

__all__ = ["add_init_parser", "cmd_init"]


def cmd_init(args: argparse.Namespace) -> int:
    from coserve.config import load_library
    from coserve.paths import default_library_path

    source = default_library_path()
    named = [source.parent / name for name in _files_named(source)]
    folder = Path(args.dir)
    if folder.exists() and not folder.is_dir():
        raise CoserveError(f"{folder} is a file, not a folder")
    copies = {source: folder / "lib.yaml", **{path: folder / path.name for path in named}}
    there = [str(target) for target in copies.values() if target.exists()]
    if there and not args.force:
        raise CoserveError(f"{', '.join(there)} already there (--force overwrites)")
    folder.mkdir(parents=True, exist_ok=True)
    for src, target in copies.items():
        shutil.copyfile(src, target)
    load_library(folder / "lib.yaml")  # the copy loads as it is, from anywhere
    print(f"wrote {', '.join(str(target) for target in copies.values())}")
    print(f"edit {folder / 'lib.yaml'} (docs/library.md), then: coserve serve --library {folder / 'lib.yaml'}")
    return 0


def _files_named(library: Path) -> list[str]:
    """The files the default library names beside itself (its categories and outcomes)."""
    import yaml

    raw = yaml.safe_load(library.read_text(encoding="utf-8"))
    names = [raw.get("categories"), (raw.get("router") or {}).get("outcomes")]
    return [name for name in names if isinstance(name, str)]


def add_init_parser(sub: Subcommands) -> None:
    p = sub.add_parser("init", help="write an editable copy of the default library (lib.yaml and its two files)")
    p.add_argument("dir", nargs="?", default=".", help="the folder to write into (default: here)")
    p.add_argument("--force", action="store_true", help="overwrite files already there")
    p.set_defaults(func=cmd_init)
