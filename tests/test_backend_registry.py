"""The backend registry: one entry per backend (class, options schema, file or not, pip extra), and
the check that holds a library's experts to their backend before an engine is built."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest
from conftest import write_library

from coserve.backends import registry
from coserve.backends.registry import BACKENDS, check_library, get_backend
from coserve.cli import main
from coserve.config import load_library
from coserve.errors import ConfigError


def _check_error(path: Path) -> str:
    library = load_library(path)  # the file itself is valid: options are the backend's to judge
    with pytest.raises(ConfigError) as info:
        check_library(library)
    return info.value.message


def test_every_entry_names_a_real_backend_class() -> None:
    for name in ("fake", "openai"):  # importable everywhere
        assert type(get_backend(name)).__name__ == BACKENDS[name].target.partition(":")[2]
    for entry in BACKENDS.values():  # the others without importing their runtimes
        module, _, name = entry.target.partition(":")
        spec = importlib.util.find_spec(f"coserve.backends.{module}")
        assert spec is not None and spec.origin is not None, entry.name
        assert f"class {name}" in Path(spec.origin).read_text(encoding="utf-8"), entry.name


def test_unknown_backend(tmp_path: Path) -> None:
    path = write_library(tmp_path, fields={"big": {"backend": "tensorrt"}})
    message = _check_error(path)
    assert message.startswith(f"{path.resolve()}: experts[2].backend: unknown backend 'tensorrt'; known: llamacpp,")
    with pytest.raises(ConfigError, match="unknown backend 'tensorrt'"):
        get_backend("tensorrt")


def test_a_missing_optional_package_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = dataclasses.replace(BACKENDS["vllm"], target="no_such_runtime_module:Nothing")
    monkeypatch.setitem(registry.BACKENDS, "vllm", missing)
    with pytest.raises(ConfigError) as info:
        get_backend("vllm")
    assert "backend 'vllm' needs a package that is not installed" in info.value.message
    assert info.value.message.endswith("pip install 'coserve[vllm]'")


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="torch is installed here")
def test_transformers_without_torch_names_the_torch_extra() -> None:
    with pytest.raises(ConfigError, match=r"pip install 'coserve\[torch\]'$"):
        get_backend("transformers")


def test_serve_stops_at_start_on_a_misspelt_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_library(tmp_path, options={"coder": {"n_paralel": 2}})
    assert main(["serve", "--library", str(path), "--port", "9"]) == 2
    err = capsys.readouterr().err
    assert "experts[1]: options.n_paralel: not an option of the fake backend (known: " in err


def test_a_misspelt_option_is_refused_at_startup_with_the_known_ones(tmp_path: Path) -> None:
    message = _check_error(write_library(tmp_path, options={"coder": {"n_paralel": 2}}))
    assert "experts[1]: options.n_paralel: not an option of the fake backend" in message
    assert "n_parallel" in message.split("known:")[1]  # the list of known keys helps fix the typo


_SPLIT = {"backend": "llamacpp-split", "source": "m.gguf"}
_VLLM = {"backend": "vllm", "source": "hf"}


@pytest.mark.parametrize(
    ("fields", "options", "expected"),
    [
        (_SPLIT, {"kv_cache_type": "q4"}, "options.kv_cache_type: Input should be 'f16' or 'q8_0'"),
        (_SPLIT, {"n_parallel": 0}, "options.n_parallel: Input should be greater than or equal to 1"),
        ({**_SPLIT, "backend": "llamacpp"}, {"threads": "two"}, "options.threads: Input should be a valid integer"),
        (_VLLM, {"sleep_mode": "deep"}, "options.sleep_mode: Input should be 'auto', 'on' or 'off'"),
        (_VLLM, {"gpu_memory_utilization": 1.5}, "options.gpu_memory_utilization: Input should be less than or equal"),
        ({"backend": "transformers", "source": "hf"}, {"device": "gpu"}, "options.device: String should match pattern"),
        ({"backend": "openai"}, {}, "options.base_url: Field required"),
        ({"backend": "openai"}, {"base_url": "localhost:8000"}, "options.base_url: String should match pattern"),
        ({"backend": "llamacpp-split"}, {}, "the llamacpp-split backend serves a model file or folder: give a source"),
        (_SPLIT, {"n_gpu_layers": 10}, "options.n_gpu_layers: llama.cpp would put offloaded layers on the GPU when"),
        ({**_SPLIT, "context": 2048}, {"kv_cache_tokens": 1024}, "options.kv_cache_tokens (1024) must hold"),
    ],
)  # fmt: skip
def test_bad_backend_options_name_the_expert_and_the_key(
    tmp_path: Path, fields: dict, options: dict, expected: str
) -> None:
    message = _check_error(write_library(tmp_path, fields={"big": {**fields, "options": options}}))
    assert f"experts[2]: {expected}" in message
    assert "experts[0]" not in message and "experts[1]" not in message  # the others are fine


def test_options_are_kept_as_checked_values_and_null_means_the_default(tmp_path: Path) -> None:
    big = {"backend": "llamacpp-split", "source": "m.gguf",
           "options": {"n_parallel": "3", "threads": None, "kv_cache_type": "q8_0", "timeout_s": 30}}  # fmt: skip
    library = check_library(load_library(write_library(tmp_path, fields={"big": big})))
    assert library.expert("big").options == {"n_parallel": 3, "kv_cache_type": "q8_0", "timeout_s": 30.0}


def test_option_choices_match_what_the_backends_size() -> None:
    """The choices the library file may name are exactly the ones each backend has figures for."""
    from typing import get_args

    from coserve.backends import llamacpp_split, options

    def choices(schema: type, key: str) -> set[str]:
        return set(get_args(get_args(schema.model_fields[key].annotation)[0]))

    assert choices(options.LlamaCppSplitOptions, "kv_cache_type") == set(llamacpp_split.KV_TYPES)
    assert choices(options.VllmOptions, "dtype") == set(options.DTYPE_BYTES)
    assert choices(options.TransformersOptions, "dtype") == set(options.DTYPE_BYTES)
