""".upsun/*.yaml checked the way `upsun app:config-validate` checks it, plus the mounts."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from .conftest import ROOT

SCHEMA = ROOT / "tests" / "data" / "upsun" / "upsun.schema.json"
TOP_LEVEL = {"applications", "routes", "services"}


class UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key given twice in one mapping, as the CLI does."""

    def construct_mapping(self, node, deep=False):
        keys = [self.construct_object(key, deep=deep) for key, _ in node.value]
        duplicates = {key for key in keys if keys.count(key) > 1}
        if duplicates:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {sorted(duplicates)[0]!r}", node.start_mark
            )
        return super().construct_mapping(node, deep)


def merged_config(folder: Path) -> dict:
    """Every *.yaml directly in the folder (a .yml is skipped), merged; errors as the CLI's."""
    merged: dict = {}
    for path in sorted(folder.glob("*.yaml")):
        document = yaml.load(path.read_text(), Loader=UniqueKeyLoader) or {}
        unknown = set(document) - TOP_LEVEL
        if unknown:
            raise ValueError(f"{path.name}: unknown top-level key {sorted(unknown)[0]!r}")
        for section, entries in document.items():
            for name, value in (entries or {}).items():
                if name in merged.setdefault(section, {}):
                    raise ValueError(f"{path.name}: duplicate key {section}.{name}")
                merged[section][name] = value
    return merged


def upstream_route(schema: dict) -> dict:
    """The schema's definition of a route of type upstream (the one that names `upstream`)."""
    [route] = [
        option
        for option in schema["properties"]["routes"]["additionalProperties"]["oneOf"]
        if "upstream" in option.get("properties", {})
    ]
    return route


def upsun_schema() -> dict:
    schema = json.loads(SCHEMA.read_text())
    # Sticky routing ("Define routes", Sticky routing: `sticky: true`, by client address) came
    # to Upsun after this copy of the CLI's schema; test_the_copied_schema_lacks_sticky_routing
    # says when a newer copy makes this line unnecessary.
    upstream_route(schema)["properties"]["sticky"] = {"type": "boolean"}
    return schema


def validate(folder: Path) -> dict:
    config = merged_config(folder)
    jsonschema.Draft7Validator(upsun_schema()).validate(config)
    return config


# The single-instance deployment (what `upsun push` deploys), and the variant on several
# instances sharing PostgreSQL, which replaces it when copied over it.
@pytest.fixture(scope="module", params=[".upsun", ".upsun/scaled"])
def config(request: pytest.FixtureRequest) -> dict:
    return validate(ROOT / request.param)


@pytest.fixture(scope="module")
def scaled() -> dict:
    return validate(ROOT / ".upsun" / "scaled")


def test_the_copied_schema_lacks_sticky_routing() -> None:
    assert "sticky" not in upstream_route(json.loads(SCHEMA.read_text()))["properties"], (
        "the copied schema knows sticky routing now: drop the addition in upsun_schema()"
    )


def test_the_scaled_variant_shares_postgresql_with_vector_and_one_folder_of_files(
    scaled: dict,
) -> None:
    app = scaled["applications"]["ragchat"]
    [service] = app["relationships"]
    assert service == "postgresql"  # the name ragchat.database.url_from_upsun reads
    assert scaled["services"]["postgresql"]["type"].startswith("postgresql:")
    assert scaled["services"]["postgresql"]["configuration"]["extensions"] == ["vector"]
    assert {name: mount["source"] for name, mount in app["mounts"].items()} == {
        "data": "storage",  # one folder every instance sees
        "database": "storage",
        ".files": "instance",
    }
    assert scaled["routes"]["https://{default}/"]["sticky"] is True
    # Everything else as in the single-instance deployment.
    single = validate(ROOT / ".upsun")["applications"]["ragchat"]
    for key in ("type", "web", "hooks"):
        assert app[key] == single[key], key


def test_the_configuration_is_valid(config: dict) -> None:
    app = config["applications"]["ragchat"]
    assert app["type"].startswith("python:3.1")
    assert app["web"]["commands"]["start"] == (
        "chainlit run app.py --host 0.0.0.0 --port $PORT --headless"
    )
    assert "requirements.lock" in app["hooks"]["build"]
    assert config["routes"]["https://www.{default}/"] == {
        "type": "redirect",
        "to": "https://{default}/",
    }


def test_mounts_exist_in_the_repository_and_hide_no_committed_file(config: dict) -> None:
    mounts = config["applications"]["ragchat"]["mounts"]
    assert set(mounts) <= {"data", "storage", "database", ".files"}
    committed = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    for mount in mounts:
        hidden = [f for f in committed if f.startswith(f"{mount}/")]
        # The folder is in the repository, kept by a placeholder, and nothing else is there.
        assert hidden == [f"{mount}/.gitkeep"], f"the {mount} mount: {hidden or 'no folder'}"


@pytest.mark.parametrize(
    ("files", "error"),
    [
        ({"a.yaml": "applications:\n  x: {type: 'python:3.13'}\n  x: {type: 'python:3.12'}\n"},
         "duplicate key 'x'"),
        ({"a.yaml": "applications: {}\nwebsite: {}\n"}, "unknown top-level key 'website'"),
        ({"a.yaml": "applications:\n  x: {type: 'python:3.13'}\n",
          "b.yaml": "applications:\n  x: {type: 'python:3.12'}\n"},
         "duplicate key applications.x"),
        ({"a.yaml": "applications:\n  x: {type: 'python:3.13', colour: blue}\n"},
         "Additional properties are not allowed"),
    ],
)
def test_the_checker_refuses_what_the_cli_refuses(tmp_path: Path, files: dict, error: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "ignored.yml").write_text("not: [valid")
    with pytest.raises((ValueError, yaml.YAMLError, jsonschema.ValidationError), match=error.replace("(", r"\(")):
        validate(tmp_path)
