"""The configuration: every file validates against the schema, config/README.md documents it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SCHEMA = yaml.safe_load((REPO / "unetpipe" / "config.schema.yaml").read_text())


def config_doc():
    spec = importlib.util.spec_from_file_location(
        "config_doc", REPO / "workflow" / "scripts" / "config_doc.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", sorted((REPO / "config").glob("*.yaml")), ids=lambda p: p.name)
def test_config_files_are_valid(path):
    jsonschema.Draft202012Validator(SCHEMA).validate(yaml.safe_load(path.read_text()))


def test_every_key_has_type_default_and_description():
    for path, node in config_doc().schema_keys(SCHEMA):
        assert node.get("description"), f"{path} has no description"
        assert "default" in node, f"{path} has no default"
        assert {"type", "enum", "oneOf"} & set(node), f"{path} has no type"


def test_readme_documents_every_key():
    doc = config_doc()
    readme = (REPO / "config" / "README.md").read_text()
    assert doc.updated(readme, SCHEMA) == readme, "run python workflow/scripts/config_doc.py"
    for path, _ in doc.schema_keys(SCHEMA):
        assert f"`{path}`" in readme


def test_readme_rendering():
    schema = {
        "properties": {
            "run": {"type": "string", "default": "a", "description": "Run."},
            "s": {
                "description": "Section.",
                "properties": {
                    "k": {"type": ["string", "null"], "default": None, "description": "A | b."},
                    "e": {"enum": [1, 2], "default": 1, "run_setting": True, "description": "E."},
                },
            },
        }
    }
    doc = config_doc()
    assert [p for p, _ in doc.schema_keys(schema)] == ["run", "s", "s.k", "s.e"]
    assert doc.render(schema).splitlines()[2:-2] == [
        "### `run`",
        "",
        "Run.",
        "",
        'Type string, default `"a"`.',
        "",
        "### `s`",
        "",
        "Section.",
        "",
        "| key | type | default | reruns | description |",
        "|---|---|---|---|---|",
        "| `s.k` | string or null | `null` | yes | A \\| b. |",
        "| `s.e` | `1` \\| `2` | `1` | no | E. |",
    ]
    with pytest.raises(ValueError, match="markers"):
        doc.updated("no markers", schema)
