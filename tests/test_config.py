"""The library file: loading, hashing, and ConfigErrors that name the file and the key path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import library_data, write_library

from coserve.config import load_library, parse_bytes
from coserve.errors import ConfigError
from coserve.paths import default_library_path


def _write_raw(tmp_path: Path, data: object, name: str = "library.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _config_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_library(path)
    return info.value.message


# -- the default library --------------------------------------------------------------------------


def test_default_library_loads() -> None:
    library = load_library()
    assert len(library.experts) == 3
    assert len(library.categories) == 5
    assert library.router.outcomes is not None and library.router.map == {}  # solved by the router side
    assert library.path == default_library_path().resolve()
    assert len(library.content_hash) == 64


def test_default_library_categories_come_from_the_separate_file() -> None:
    library = load_library()
    assert {"code", "math", "chat"} <= set(library.categories)
    assert all(len(c.examples) >= 2 for c in library.categories.values())


# -- the small library and its hash ---------------------------------------------------------------


def test_small_library_loads(library_path: Path) -> None:
    library = load_library(library_path)
    assert library.expert_names == ("small", "coder", "big")
    assert library.expert("coder").params_b == 0.5
    assert library.expert("coder").options == {"nbytes": 20 * 2**20}
    assert library.router.fallback.expert == "big"
    assert library.memory.ram == 2**30
    assert library.path == library_path.resolve()
    with pytest.raises(KeyError):
        library.expert("nobody")


def test_content_hash_is_stable_across_loads(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = load_library(write_library(tmp_path / "a"))
    second = load_library(write_library(tmp_path / "b"))  # same content, another folder
    assert first.content_hash == second.content_hash
    assert load_library(first.path).content_hash == first.content_hash


def test_content_hash_ignores_formatting(tmp_path: Path) -> None:
    data = library_data()
    block = _write_raw(tmp_path, data, "block.yaml")
    flow = tmp_path / "flow.yaml"
    flow.write_text("# a comment\n" + yaml.safe_dump(data, default_flow_style=True, sort_keys=True))
    assert load_library(block).content_hash == load_library(flow).content_hash


@pytest.mark.parametrize(
    "change",
    [
        {"fields": {"coder": {"params_b": 0.6}}},
        {"options": {"small": {"token_delay": 0.01}}},
        {"memory": {"ram": "2GiB", "active": "1GiB"}},
    ],
    ids=["params_b", "options", "memory"],
)
def test_content_hash_changes_when_a_value_changes(tmp_path: Path, change: dict) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    base = load_library(write_library(tmp_path / "a"))
    changed = load_library(write_library(tmp_path / "b", **change))
    assert base.content_hash != changed.content_hash


def test_content_hash_changes_when_an_example_changes(tmp_path: Path) -> None:
    data = library_data()
    base = load_library(_write_raw(tmp_path, data, "a.yaml"))
    data["categories"]["chat"]["examples"][0] = "hello how are you tonight"
    assert load_library(_write_raw(tmp_path, data, "b.yaml")).content_hash != base.content_hash


def test_categories_may_live_in_a_separate_file(tmp_path: Path) -> None:
    data = library_data()
    _write_raw(tmp_path, data["categories"], "cats.yaml")
    inline = load_library(_write_raw(tmp_path, data, "inline.yaml"))
    data["categories"] = "cats.yaml"
    separate = load_library(_write_raw(tmp_path, data, "separate.yaml"))
    assert separate.categories == inline.categories
    assert separate.content_hash == inline.content_hash


# -- errors: each names the file and the key path -------------------------------------------------


def test_unknown_top_level_key(tmp_path: Path) -> None:
    path = write_library(tmp_path, routerr={"x": 1})
    message = _config_error(path)
    assert str(path) in message
    assert "routerr: unknown key" in message


@pytest.mark.parametrize("key", ["path", "content_hash"])
def test_internal_fields_cannot_be_set_by_the_file(tmp_path: Path, key: str) -> None:
    path = write_library(tmp_path, **{key: "x"})
    message = _config_error(path)
    assert str(path) in message
    assert f"{key}: unknown key" in message


def test_unknown_key_inside_an_expert(tmp_path: Path) -> None:
    path = write_library(tmp_path, fields={"coder": {"bakend": "fake"}})
    message = _config_error(path)
    assert str(path) in message
    assert "experts[1].bakend" in message
    assert "experts[1]." in message and "unknown key" in message


def test_duplicate_expert_names(tmp_path: Path) -> None:
    path = write_library(tmp_path, fields={"big": {"name": "small"}})
    message = _config_error(path)
    assert str(path) in message
    assert "experts[2].name" in message
    assert "duplicate" in message


@pytest.mark.parametrize(
    ("fields", "categories", "message"),
    [
        ({"name": "my coder"}, {}, "experts[0].name: 'my coder' is not a valid expert name: "),
        (
            {},
            {"chat room": {"description": "x", "examples": ["a", "b"]}},
            "categories: 'chat room' is not a valid category name: ",
        ),
    ],
)
def test_a_bad_expert_or_category_name_says_the_rule_in_words(
    tmp_path: Path, fields: dict[str, str], categories: dict[str, object], message: str
) -> None:
    data = library_data()
    data["experts"][0].update(fields)
    data["categories"].update(categories)
    rule = "use 1 to 64 ASCII letters, digits, '_', '.', ':' or '-', the first a letter or digit"
    path = _write_raw(tmp_path, data)
    assert _config_error(path) == f"{path}: {message}{rule}"


def test_reserved_expert_name(tmp_path: Path) -> None:
    data = library_data()
    data["experts"][0]["name"] = "coserve"
    data["router"]["map"]["chat"] = "coserve"
    message = _config_error(_write_raw(tmp_path, data))
    assert "experts[0].name" in message
    assert "reserved" in message


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("map", "code", "nobody", ["router.map.code", "nobody"]),
        ("map", "poetry", "big", ["router.map.poetry"]),
        ("map", "math", None, ["router.map", "math"]),  # None: the category is taken out of the map
        ("fallback", "expert", "ghost", ["router.fallback.expert", "ghost"]),
    ],
    ids=["unknown-expert-in-map", "unknown-category-in-map", "category-missing-from-map", "unknown-fallback"],
)
def test_router_section_naming_what_the_library_lacks(
    tmp_path: Path, section: str, key: str, value: str | None, expected: list[str]
) -> None:
    router = library_data()["router"]
    if value is None:
        del router[section][key]
    else:
        router[section][key] = value
    path = write_library(tmp_path, router=router)
    message = _config_error(path)
    assert [fragment for fragment in [str(path), *expected] if fragment not in message] == []


def test_missing_library_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.yaml"
    message = _config_error(path)
    assert str(path) in message
    assert "not found" in message


def test_missing_categories_file(tmp_path: Path) -> None:
    path = write_library(tmp_path, categories="other.yaml")
    message = _config_error(path)
    assert str(tmp_path / "other.yaml") in message
    assert str(path) in message  # the file that named it
    assert "not found" in message


def test_malformed_yaml(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("experts: [\n  - name: a\n  backend: {\n")
    message = _config_error(path)
    assert str(path) in message
    assert "not valid YAML" in message


@pytest.mark.parametrize("content", ["", "- a\n- b\n", "just a string\n"], ids=["empty", "list", "scalar"])
def test_library_file_must_be_a_mapping(tmp_path: Path, content: str) -> None:
    path = tmp_path / "lib.yaml"
    path.write_text(content)
    message = _config_error(path)
    assert str(path) in message
    assert "mapping" in message


def test_bad_memory_size(tmp_path: Path) -> None:
    path = write_library(tmp_path, memory={"ram": "lots", "active": "1GiB"})
    message = _config_error(path)
    assert str(path) in message
    assert "memory.ram" in message
    assert "lots" in message


def test_memory_sizes_are_parsed(tmp_path: Path) -> None:
    library = load_library(write_library(tmp_path, memory={"ram": "512MiB", "active": "2 GB"}))
    assert library.memory.ram == 536870912
    assert library.memory.active == 2 * 10**9


def test_missing_required_field(tmp_path: Path) -> None:
    data = library_data()
    del data["experts"][1]["params_b"]
    message = _config_error(_write_raw(tmp_path, data))
    assert "experts[1].params_b" in message


def test_out_of_range_value(tmp_path: Path) -> None:
    path = write_library(tmp_path, fields={"small": {"context": 16}})
    message = _config_error(path)
    assert "experts[0].context" in message


def test_empty_split_source_is_refused(tmp_path: Path) -> None:
    message = _config_error(write_library(tmp_path, fields={"small": {"source": []}}))
    assert "experts[0].source" in message


def test_blank_example_is_refused(tmp_path: Path) -> None:
    data = library_data()
    data["categories"]["math"]["examples"][2] = "   "
    message = _config_error(_write_raw(tmp_path, data))
    assert "categories.math.examples" in message
    assert "example 2 is empty" in message


def test_several_problems_are_all_reported(tmp_path: Path) -> None:
    path = write_library(tmp_path, fields={"small": {"bakend": "x"}, "big": {"params_b": -1}})
    message = _config_error(path)
    assert "experts[0].bakend" in message
    assert "experts[2].params_b" in message


def test_expert_parts() -> None:
    data = library_data()["experts"][0]
    from coserve.config import ExpertSpec

    assert ExpertSpec.model_validate(data).parts == ()
    assert ExpertSpec.model_validate({**data, "source": "a.gguf"}).parts == ("a.gguf",)
    split = {**data, "source": ["p1", "p2"], "sha256": "0" * 64}
    assert ExpertSpec.model_validate(split).parts == ("p1", "p2")


# -- parse_bytes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1048576, 1048576),
        (0, 0),
        (1.5, 1),
        ("0", 0),
        ("100", 100),
        ("100b", 100),
        ("1kB", 1000),
        ("1KiB", 1024),
        ("512MiB", 536870912),
        ("512 MB", 512 * 10**6),
        ("2GiB", 2 * 2**30),
        ("2gib", 2 * 2**30),
        (" 1.5 GiB ", 3 * 2**29),
        ("1TB", 10**12),
        ("1TiB", 2**40),
    ],
)
def test_parse_bytes(value: int | float | str, expected: int) -> None:
    assert parse_bytes(value) == expected


@pytest.mark.parametrize("value", ["lots", "", "1 PB", "-1GiB", "GiB", "1.2.3MB", -1, True])
def test_parse_bytes_refuses(value: object) -> None:
    with pytest.raises(ValueError):
        parse_bytes(value)  # type: ignore[arg-type]


# -- backend options (checked by coserve.backends.registry: tests/test_backend_registry.py) ----------


def test_options_that_are_not_a_mapping_are_refused(tmp_path: Path) -> None:
    data = library_data()
    data["experts"][0]["options"] = "fast"
    path = tmp_path / "library.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    assert "experts[0].options: Input should be a valid dictionary" in _config_error(path)
