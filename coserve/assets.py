"""Model files: find them in installed PyPI packages or on disk, assemble split files, verify hashes.

A source is ``pkg:<python_package>/<path inside it>`` or a filesystem path (relative to the library
file). A list of sources is a file split into raw parts: they are concatenated in order, once, into
the cache folder, and the result must match the pinned sha256 or it is refused and deleted.
Packages that carry weights usually cannot be imported, so they are located with
``importlib.util.find_spec`` without running them. This module knows nothing about runtimes.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
from pathlib import Path

from coserve.config import ExpertSpec, LibraryConfig
from coserve.errors import AssetError
from coserve.paths import cache_dir

__all__ = [
    "is_assembled",
    "locate",
    "missing_files",
    "model_path",
    "present_file",
    "require_sha256",
    "sha256_file",
    "source_size",
]

_CHUNK = 8 * 2**20  # bytes read at a time when hashing and copying


def locate(source: str, base: Path | None) -> Path:
    """Resolve one source string to an existing file."""
    if source.startswith("pkg:"):
        package, _, inner = source[4:].partition("/")
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            raise AssetError(f"package {package!r} (for {source}) is not installed; run scripts/setup")
        path = Path(next(iter(spec.submodule_search_locations))) / inner
    else:
        path = Path(source).expanduser()
        if not path.is_absolute() and base is not None:
            path = base / path
    if not (path.is_file() or path.is_dir()):  # a folder: a model in Hugging Face layout (vllm, transformers)
        raise AssetError(f"model file not found: {path} (source {source})")
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _verified(path: Path, sha256: str) -> bool:
    """Check a file's hash once; remember the result next to it, keyed by size and mtime."""
    stat = path.stat()
    stamp = {"sha256": sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    marker = cache_dir() / "verified" / (hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:32] + ".json")
    try:
        if json.loads(marker.read_text()) == stamp:
            return True
    except (OSError, ValueError):
        pass
    if sha256_file(path) != sha256:
        return False
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(stamp))
    return True


def require_sha256(path: Path, sha256: str, what: str) -> Path:
    """``path`` if its sha256 is the pinned one (checked once per size and mtime); AssetError naming
    ``what``, the file and both hashes otherwise."""
    if not _verified(path, sha256):
        raise AssetError(
            f"{what}: {path} has sha256 {sha256_file(path)}, expected {sha256}; refusing it "
            "(reinstall the package with scripts/setup)"
        )
    return path


def _assembled_target(spec: ExpertSpec, sha256: str) -> Path:
    return cache_dir() / "models" / f"{sha256[:16]}-{spec.name}.gguf"


def _assemble(spec: ExpertSpec, parts: list[Path]) -> Path:
    assert spec.sha256 is not None  # ExpertSpec requires it for parts
    target = _assembled_target(spec, spec.sha256)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one assembler at a time; the others then find it done
        if target.is_file() and _verified(target, spec.sha256):
            return target
        tmp = target.with_suffix(".partial")
        digest = hashlib.sha256()
        try:
            with tmp.open("wb") as out:
                for part in parts:
                    with part.open("rb") as f:
                        while block := f.read(_CHUNK):
                            digest.update(block)
                            out.write(block)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise AssetError(f"expert {spec.name!r}: assembling {target} failed: {exc}") from None
        if digest.hexdigest() != spec.sha256:
            tmp.unlink(missing_ok=True)
            raise AssetError(
                f"expert {spec.name!r}: the assembled file's sha256 is {digest.hexdigest()}, "
                f"expected {spec.sha256}; refusing it"
            )
        os.replace(tmp, target)
        _verified(target, spec.sha256)
        return target


def model_path(spec: ExpertSpec, base: Path | None = None) -> Path:
    """The expert's model file, assembled and verified as needed."""
    if not spec.parts:
        raise AssetError(f"expert {spec.name!r} has no source")
    files = [locate(source, base) for source in spec.parts]
    if len(files) > 1:  # ExpertSpec requires a sha256 for parts
        return _assemble(spec, files)
    if spec.sha256 is not None and files[0].is_dir():
        raise AssetError(f"expert {spec.name!r}: sha256 pins a file; {files[0]} is a folder")
    if spec.sha256 is not None and not _verified(files[0], spec.sha256):
        raise AssetError(f"expert {spec.name!r}: {files[0]} does not match sha256 {spec.sha256}; refusing it")
    return files[0]


def is_assembled(spec: ExpertSpec, base: Path | None = None) -> bool:
    """Whether the expert's model file exists without assembling anything (a single-file source
    that is present, or split parts already assembled into the cache)."""
    try:
        files = [locate(source, base) for source in spec.parts]
    except AssetError:
        return False
    if len(files) == 1:
        return files[0].is_file()
    return bool(files) and spec.sha256 is not None and _assembled_target(spec, spec.sha256).is_file()


def present_file(spec: ExpertSpec, base: Path | None = None) -> Path | None:
    """The expert's model file if it is there, without assembling or verifying anything (None if not)."""
    if not is_assembled(spec, base):
        return None
    if len(spec.parts) == 1:
        return locate(spec.parts[0], base)
    assert spec.sha256 is not None  # is_assembled says so for parts
    return _assembled_target(spec, spec.sha256)


def source_size(spec: ExpertSpec, base: Path | None = None) -> int | None:
    """Bytes of the expert's weights on disk, without assembling; None if a part is missing."""
    try:
        paths = [locate(source, base) for source in spec.parts]
    except AssetError:
        return None
    return sum(_size(path) for path in paths)


def _size(path: Path) -> int:
    """A file's bytes, or a model folder's (every file in it)."""
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def prepare(library_path: str | None = None) -> None:
    """Assemble and verify every expert file of a library (``python -m coserve.assets``)."""
    from coserve.config import load_library

    library = load_library(library_path)
    base = library.path.parent if library.path else None
    for spec in library.experts:
        if spec.parts:
            path = model_path(spec, base)
            print(f"setup: {spec.name:<10} {path.stat().st_size / 2**20:7.0f} MiB  {path}")


if __name__ == "__main__":
    import sys

    try:
        prepare(sys.argv[1] if len(sys.argv) > 1 else None)
    except AssetError as exc:
        print(f"setup: error: {exc.message}", file=sys.stderr)
        sys.exit(2)


def missing_files(library: LibraryConfig) -> dict[str, str]:
    """Experts whose source cannot be found (a package not installed, a path that is not there),
    without reading or assembling anything; expert -> the reason."""
    base = library.path.parent if library.path else None
    problems = {}
    for spec in library.experts:
        try:
            for source in spec.parts:
                locate(source, base)
        except AssetError as exc:
            problems[spec.name] = exc.message
    return problems
