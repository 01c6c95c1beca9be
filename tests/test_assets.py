"""Model files: locating sources, assembling split files, verifying hashes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from coserve.assets import locate, model_path, sha256_file, source_size
from coserve.backends.llamacpp import LlamaCppBackend
from coserve.config import ExpertSpec
from coserve.errors import AssetError
from coserve.paths import cache_dir


def _spec(**fields: Any) -> ExpertSpec:
    return ExpertSpec.model_validate({"name": "split", "backend": "fake", "params_b": 0.5, **fields})


@pytest.fixture
def parts(tmp_path: Path) -> tuple[list[str], bytes]:
    """Three part files in ``tmp_path/lib/parts`` (paths relative to ``tmp_path/lib``) and their whole."""
    folder = tmp_path / "lib" / "parts"
    folder.mkdir(parents=True)
    chunks = [b"GGUF" + bytes(range(256)) * 3, b"middle part \x00\x01" * 100, b"the end"]
    names = []
    for i, chunk in enumerate(chunks, 1):
        (folder / f"part{i}.bin").write_bytes(chunk)
        names.append(f"parts/part{i}.bin")
    return names, b"".join(chunks)


def test_cache_dir_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COSERVE_CACHE", str(tmp_path / "c" / "d"))
    assert cache_dir() == tmp_path / "c" / "d"
    assert (tmp_path / "c" / "d").is_dir()


def test_locate_relative_to_the_library_folder(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    target = tmp_path / "models" / "m.gguf"
    target.write_bytes(b"x")
    assert locate("models/m.gguf", tmp_path) == target
    assert locate(str(target), None) == target  # absolute paths ignore the base


def test_locate_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AssetError) as info:
        locate("models/absent.gguf", tmp_path)
    assert "absent.gguf" in info.value.message
    assert info.value.code == "asset_error"


def test_a_folder_source_is_located_but_cannot_be_pinned_by_hash_or_served_by_llamacpp(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "config.json").write_text("{}")
    (tmp_path / "dir" / "model.safetensors").write_bytes(b"w" * 100)
    assert locate("dir", tmp_path) == tmp_path / "dir"  # a model folder (vllm, transformers)
    spec = ExpertSpec(name="x", backend="llamacpp", source="dir", params_b=0.1)
    assert source_size(spec, tmp_path) == 102
    with pytest.raises(AssetError, match="sha256 pins a file"):
        model_path(spec.model_copy(update={"sha256": "0" * 64}), tmp_path)
    with pytest.raises(AssetError, match=r"llama\.cpp needs a GGUF file"):
        LlamaCppBackend().footprint(spec, tmp_path)


def test_locate_package_not_installed() -> None:
    with pytest.raises(AssetError) as info:
        locate("pkg:coserve_no_such_package_xyz/model.gguf", None)
    assert "coserve_no_such_package_xyz" in info.value.message
    assert "not installed" in info.value.message


def test_locate_file_inside_an_installed_package() -> None:
    path = locate("pkg:coserve/data/default.yaml", None)
    assert path.name == "default.yaml" and path.is_file()
    with pytest.raises(AssetError):
        locate("pkg:coserve/data/absent.bin", None)


def test_split_source_is_assembled_and_verified(tmp_path: Path, cache: Path, parts: tuple[list[str], bytes]) -> None:
    names, whole = parts
    digest = hashlib.sha256(whole).hexdigest()
    spec = _spec(source=names, sha256=digest)
    path = model_path(spec, tmp_path / "lib")
    assert path.is_relative_to(cache)
    assert path.read_bytes() == whole
    assert sha256_file(path) == digest
    assert source_size(spec, tmp_path / "lib") == len(whole)


def test_assembled_file_is_reused(tmp_path: Path, cache: Path, parts: tuple[list[str], bytes]) -> None:
    names, whole = parts
    spec = _spec(source=names, sha256=hashlib.sha256(whole).hexdigest())
    first = model_path(spec, tmp_path / "lib")
    mtime = first.stat().st_mtime_ns
    second = model_path(spec, tmp_path / "lib")
    assert second == first
    assert second.stat().st_mtime_ns == mtime


def test_assembled_file_damaged_in_the_cache_is_rebuilt(
    tmp_path: Path, cache: Path, parts: tuple[list[str], bytes]
) -> None:
    names, whole = parts
    spec = _spec(source=names, sha256=hashlib.sha256(whole).hexdigest())
    path = model_path(spec, tmp_path / "lib")
    path.write_bytes(b"corrupted")
    assert model_path(spec, tmp_path / "lib").read_bytes() == whole


def test_split_source_with_wrong_sha256_is_refused(tmp_path: Path, cache: Path, parts: tuple[list[str], bytes]) -> None:
    names, _ = parts
    spec = _spec(source=names, sha256="0" * 64)
    with pytest.raises(AssetError) as info:
        model_path(spec, tmp_path / "lib")
    assert "sha256" in info.value.message
    models = cache / "models"
    leftovers = [p.name for p in models.iterdir() if p.suffix != ".lock"] if models.exists() else []
    assert leftovers == []


def test_split_source_needs_a_sha256(parts: tuple[list[str], bytes]) -> None:
    names, _ = parts
    with pytest.raises(ValidationError, match="a source in parts needs a sha256"):
        _spec(source=names)  # refused when the library is read, before any part is touched


def test_split_source_with_a_missing_part(tmp_path: Path, cache: Path, parts: tuple[list[str], bytes]) -> None:
    names, whole = parts
    spec = _spec(source=[*names, "parts/part4.bin"], sha256=hashlib.sha256(whole).hexdigest())
    with pytest.raises(AssetError) as info:
        model_path(spec, tmp_path / "lib")
    assert "part4.bin" in info.value.message
    assert source_size(spec, tmp_path / "lib") is None


def test_single_file_with_matching_sha256(tmp_path: Path, cache: Path) -> None:
    target = tmp_path / "m.gguf"
    target.write_bytes(b"weights")
    spec = _spec(source="m.gguf", sha256=hashlib.sha256(b"weights").hexdigest())
    assert model_path(spec, tmp_path) == target
    # the verification is remembered in the cache, keyed by size and mtime
    markers = list((cache / "verified").iterdir())
    assert len(markers) == 1
    assert json.loads(markers[0].read_text())["sha256"] == spec.sha256


def test_single_file_with_wrong_sha256_is_refused(tmp_path: Path, cache: Path) -> None:
    target = tmp_path / "m.gguf"
    target.write_bytes(b"weights")
    spec = _spec(source="m.gguf", sha256=hashlib.sha256(b"other").hexdigest())
    with pytest.raises(AssetError) as info:
        model_path(spec, tmp_path)
    assert "m.gguf" in info.value.message
    assert "sha256" in info.value.message


def test_single_file_changed_after_verification_is_refused(tmp_path: Path, cache: Path) -> None:
    target = tmp_path / "m.gguf"
    target.write_bytes(b"weights")
    spec = _spec(source="m.gguf", sha256=hashlib.sha256(b"weights").hexdigest())
    model_path(spec, tmp_path)
    target.write_bytes(b"tampered weights")  # other size: the remembered verification no longer applies
    with pytest.raises(AssetError):
        model_path(spec, tmp_path)


def test_single_file_without_sha256_is_accepted(tmp_path: Path, cache: Path) -> None:
    (tmp_path / "m.gguf").write_bytes(b"weights")
    assert model_path(_spec(source="m.gguf"), tmp_path) == tmp_path / "m.gguf"


def test_expert_without_source(cache: Path) -> None:
    with pytest.raises(AssetError) as info:
        model_path(_spec())
    assert "no source" in info.value.message
