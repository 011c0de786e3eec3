"""What a config change reruns: a result setting reruns its stage and what follows, a run setting
(marked ``run_setting`` in the schema) reruns nothing. Every key of every section is changed once
in the params a rule gets (the Snakefile's ``section``, i.e. ``unetpipe.config.rule_params``); the
workflow itself is then dry-run on a finished tiny run with all run settings changed at once, and
with all result settings of one section changed, section by section."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from unetpipe.config import STAGES, defaults, load_config, rule_params, schema, upstream_sections

from .conftest import TINY, scheduled_rules

RULES = {"data": {"synth", "download", "convert"}, "export": {"export_bioimageio"}}  # stage: rules
# Sections a dry run cannot change in tiny.yaml: crossval (it refuses the bank tiny.yaml trains
# from), export (export.bioimageio adds a rule, other keys reach only that rule).
UNCHANGED = {"crossval", "export"}


def downstream(section: str) -> set[str]:
    """The rules a change of ``section``'s result settings reruns, by the stage graph
    (unetpipe.config.STAGES): the stages whose params hold it or whose upstream digest covers it
    (tiny.yaml: synthetic data), and rule all."""
    stages = [s for s in STAGES if section in (*STAGES[s], *upstream_sections(s, True))]
    return {rule for stage in stages for rule in RULES.get(stage, {stage})} | {"all"}


# Keys that name outputs rather than change them (other files, not other contents): not changed
# in the dry runs (they are still params, as the per-key test checks).
STRUCTURAL = {
    ("dataset", "name"),
    ("dataset", "source"),
    ("dataset", "url"),
    ("dataset", "sha256"),
    ("dataset", "local_dir"),
    ("augment", "shards"),
    ("augment", "bank_size"),
    ("train", "data"),
    ("predict", "arrays"),
    ("synth", "test_slices"),
    # A 3D net cannot use the tiny run's bank of 2D tiles: refused with one line
    # (test_3d.py::test_a_3d_net_refuses_the_2d_bank); still a param (the per-key test).
    ("model", "dims"),
}


def leaves(node: dict[str, Any], path: tuple[str, ...] = ()):
    """(path, schema node) of every key below a section's schema, nested sections expanded."""
    for name, sub in node.get("properties", {}).items():
        if "properties" in sub and not sub.get("run_setting"):
            yield from leaves(sub, (*path, name))
        else:
            yield (*path, name), sub


def other_value(node: dict[str, Any], value: Any) -> Any:
    """A valid value of a schema node that differs from ``value``."""
    if any(example != value for example in node.get("examples", [])):
        return next(example for example in node["examples"] if example != value)
    if "enum" in node:
        return next(v for v in node["enum"] if v != value)
    if "oneOf" in node:
        return None if value is not None else "balanced"
    kinds = node.get("type")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    if value is None:
        kinds = [k for k in kinds if k != "null"]
        return {"integer": 4, "number": 0.5, "string": "x", "array": [1, 1, 1], "boolean": True}[
            kinds[0]
        ]
    if isinstance(value, bool):
        return not value
    if isinstance(value, int) and "integer" in kinds:
        return value - 1 if "maximum" in node and value + 1 > node["maximum"] else value + 1
    if isinstance(value, float):
        return value / 2 if value else 0.5
    if isinstance(value, str):
        return value + "2"
    if isinstance(value, list):
        if not value:
            return [other_value(node["items"], None)]
        if len(value) > node.get("minItems", 0):
            return value[:-1]
        return [other_value(node["items"], value[0]), *value[1:]]
    if isinstance(value, dict):
        name, sub = next(iter(node["properties"].items()))
        return {**value, name: other_value(sub, value[name])}
    raise AssertionError(f"no other value for {node} {value!r}")


def allowed(config: dict[str, Any]) -> bool:
    """Whether the workflow takes ``config``: a combination the rules between keys refuse
    (``unetpipe.config.check_cross_fields``, e.g. segment mode 3d with method watershed) is
    refused before anything is scheduled."""
    try:
        load_config(config)
    except ValueError:
        return False
    return True


def changed(config: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(config)
    node = out
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value
    return out


SECTIONS = [name for name, node in schema()["properties"].items() if "properties" in node]


@pytest.mark.parametrize("section", SECTIONS)
def test_every_key_is_a_param_of_its_rule_unless_a_run_setting(section):
    config = load_config(TINY)
    node = schema()["properties"][section]
    base = rule_params(section, config[section])
    for path, sub in leaves(node):
        value = config[section]
        for part in path:
            value = value[part]
        new = changed(config[section], path, other_value(sub, value))
        differs = rule_params(section, new) != base
        run = sub.get("run_setting", False)
        if section == "train" and path == ("val_every",):  # it counts only with export: best
            assert differs == (config["train"]["export"] == "best"), path
            continue
        assert differs != run, f"{section}.{'.'.join(path)}: run setting {run}, rerun {differs}"


def test_export_best_makes_the_validation_cadence_a_result():
    train = defaults("train")
    assert "val_every" in rule_params("train", {**train, "export": "best"})
    assert "val_every" not in rule_params("train", {**train, "export": "last"})


def write(tmp_path, config: dict[str, Any], name: str):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.mark.slow
def test_run_settings_rerun_nothing(tiny_run, tmp_path):
    config = yaml.safe_load(TINY.read_text())
    full = load_config(TINY)
    for section in SECTIONS:
        for path, sub in leaves(schema()["properties"][section]):
            if not sub.get("run_setting") or (section, path[0]) in STRUCTURAL:
                continue
            value = full[section]
            for part in path:
                value = value[part]
            if (section, path) == ("train", ("val_every",)) and full["train"]["export"] == "best":
                continue  # with export: best the validation cadence picks the exported state
            config = changed(config, (section, *path), other_value(sub, value))
    config["resources"] = {"train": {"threads": 1, "mem_mb": 1000}}
    assert scheduled_rules(tiny_run, configfile=write(tmp_path, config, "run-settings")) == set()


@pytest.fixture(scope="module")
def tiny_rules(tiny_run) -> set[str]:
    """Every rule of the tiny run."""
    return scheduled_rules(tiny_run, "--forceall")


@pytest.mark.slow
@pytest.mark.parametrize(
    "section", sorted({s for names in STAGES.values() for s in names} - UNCHANGED)
)
def test_result_settings_rerun_their_stage_and_what_follows(
    section, tiny_run, tiny_rules, tmp_path
):
    config = yaml.safe_load(TINY.read_text())
    full = load_config(TINY)
    for path, sub in leaves(schema()["properties"][section]):
        if sub.get("run_setting") or (section, path[0]) in STRUCTURAL:
            continue
        value = full[section]
        for part in path:
            value = value[part]
        if section == "train" and path == ("val_every",):
            continue
        candidate = changed(config, (section, *path), other_value(sub, value))
        config = candidate if allowed(candidate) else config
    rules = scheduled_rules(tiny_run, configfile=write(tmp_path, config, section))
    assert rules == downstream(section) & tiny_rules


@pytest.mark.parametrize("section", ["predict", "train"])
def test_precision_reruns_the_stage_and_the_memory_format_does_not(section):
    """The precision changes the numbers (a result setting: predict, or train, and what follows
    rerun, as the dry runs above check for every result setting); the memory format is chosen per
    machine (recorded, not rerun)."""
    values = defaults(section)
    params = rule_params(section, values)
    assert rule_params(section, {**values, "precision": "bfloat16"}) != params
    assert rule_params(section, {**values, "memory_format": "channels_last"}) == params
