"""The configuration: every file validates against the schema, config/README.md documents it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import jsonschema
import pytest
import yaml

from unetpipe.cli import main
from unetpipe.config import load_config

from .conftest import TINY, snakemake

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


@pytest.mark.parametrize(
    "given",
    [{"crossval": {"k": 2}}, {"segment": {"method": "watershed", "mode": "3d"}}],
    ids=["crossval-bank", "segment-3d"],
)
def test_the_cli_and_the_workflow_refuse_a_combination_alike(tmp_path, capsys, given):
    """The cross-field rules (unetpipe.config.check_cross_fields): one message at both doors."""
    config = yaml.safe_load(TINY.read_text())  # train.data bank
    for section, values in given.items():
        config.setdefault(section, {}).update(values)
    path = tmp_path / "refused.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError) as refused:
        load_config(path)
    message = str(refused.value)
    assert main(["train", str(tmp_path / "d.zarr"), str(tmp_path / "run"), "--config", str(path)])
    cli = capsys.readouterr().err.strip().splitlines()
    assert len(cli) == 1 and cli[0].endswith(f"ERROR unetpipe: {message}")
    result = snakemake(tmp_path, "-n", configfile=path)
    assert result.returncode != 0
    assert message in (result.stdout + result.stderr).splitlines()
