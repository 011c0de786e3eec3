"""The configuration (unetpipe.config): the schema inside the package is the one source of the
defaults of the workflow, the command line and the library; typos are refused everywhere."""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path

import pytest
import yaml
from conftest import cli_options

from unetpipe import (
    agglomerate,
    augment,
    config,
    datasets,
    precision,
    predict,
    sections,
    segment,
    synthetic,
    tiling,
    weights,
)
from unetpipe.cli import build_parser

REPO = Path(__file__).resolve().parents[1]


def test_the_schema_ships_in_the_package_and_the_workflow_reads_that_file():
    assert config.SCHEMA_FILE.parent == REPO / "unetpipe"
    link = REPO / "workflow" / "schemas" / "config.schema.yaml"
    assert link.resolve() == config.SCHEMA_FILE.resolve()
    pyproject = (REPO / "pyproject.toml").read_text()
    assert "config.schema.yaml" in pyproject  # package data of the wheel


def test_defaults_nest_and_copies_do_not_leak():
    elastic = config.defaults("augment")["elastic"]
    assert (
        elastic
        == config.defaults("augment.elastic")
        == {
            "enabled": True,
            "grid": 3,
            "sigma": 10.0,
        }
    )
    elastic["grid"] = 99
    assert config.defaults("augment")["elastic"]["grid"] == 3
    assert augment.DEFAULT_PARAMS == config.defaults("augment")


def test_typos_and_bad_values_are_refused_with_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"unknown model parameters \['depht'\]; known: \['depth'"):
        config.section_params("model", {"depht": 3})
    with pytest.raises(ValueError, match=r"unknown augment.elastic parameters \['alpha'\]"):
        sections.AugmentConfig.from_mapping({"elastic": {"alpha": 1}})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": {"depht": 3}}))
    with pytest.raises(ValueError, match=rf"{path}: unknown model parameters"):
        config.load_config(path)
    path.write_text(yaml.safe_dump({"train": {"lr": -1}}))
    with pytest.raises(ValueError, match=r"train.lr: -1 is less than or equal to the minimum"):
        config.load_config(path)
    with pytest.raises(FileNotFoundError, match="no such configuration file"):
        config.load_config(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="no section"):
        config.defaults("nosuch")


def test_run_and_result_settings_split_every_section():
    full = config.load_config(None)
    for section, values in full.items():
        if not isinstance(values, dict) or section == "resources":
            continue
        run, result = config.run_settings(section, values), config.result_settings(section, values)
        later = {
            k for k, v in values.items() if v is None and _node(section, k).get("params_when_set")
        }
        assert set(run) | set(result) | later == set(values), section
        for key in set(run) & set(result):  # only a nested section can have both kinds
            assert isinstance(values[key], dict), (section, key)
    assert set(config.run_settings("train", full["train"])) == {
        "val_every",
        "checkpoint_every",
        "device",
        "gpus",
        "workers",
        "memory_format",
    }
    assert "precision" in config.result_settings("train", full["train"])
    assert set(config.result_settings("predict", full["predict"])) == {
        "arrays",
        "mirror",
        "tta",
        "dtype",
        "precision",
    }


def _node(section: str, key: str) -> dict:
    return config._schema()["properties"][section]["properties"][key]


def test_a_later_setting_at_its_default_leaves_the_params_of_existing_runs() -> None:
    """model.pool and model.kernel came after runs existed: at null they stay out of the train
    rule's params (and every later rule's upstream digest), which therefore read as before them
    (a stop shipped them as kernel: None, pool: None, rerunning every trained run)."""
    model = config.load_config(None)["model"]
    assert set(config.result_settings("model", model)) == {
        "base_channels",
        "depth",
        "dims",
        "dropout",
        "offsets",
        "padding",
        "target",
    }
    layout = {**model, "pool": [[2, 2]] * 4}
    assert config.result_settings("model", layout)["pool"] == [[2, 2]] * 4


def _parameters(function) -> dict:
    return {
        name: p.default
        for name, p in inspect.signature(function).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


@pytest.mark.parametrize(
    "function, section, names",
    [
        (weights.weight_map, "weights", ["w0", "sigma", "class_weights", "tolerance"]),
        (synthetic.write_synthetic, "synth", ["cell_size", "membrane_width", "noise", "seed"]),
        (datasets.convert, "dataset", ["val_slices", "voxel_size"]),
        (
            predict.predict_zarr,
            "predict",
            ["tile", "block", "batch_size", "memory_gb", "mirror", "tta", "dtype", "device"],
        ),
        (predict.predict_zarr, "predict", ["precision", "memory_format"]),
        (predict.predict_zarr, "predict", ["scheduler", "n_workers", "threads_per_worker"]),
        (predict.predict_zarr, "predict", ["address", "progress"]),
    ],
)
def test_signature_defaults_are_the_schemas(function, section, names):
    """Public functions keep defaults in their signatures (their interface): the schema's."""
    given, schema = _parameters(function), config.defaults(section)
    for name in names:
        expected = schema[name]
        value = given[name]
        assert (list(value) if isinstance(value, tuple) else value) == expected, name


PREDICT_OPTIONS = ("memory_gb", "batch_size", "mirror", "tta", "dtype", "precision", "device")
PREDICT_OPTIONS += ("scheduler", "n_workers", "threads_per_worker", "address", "progress")


def test_cli_defaults_are_the_schemas():
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    checks = {
        "weights": ("weights", ["w0", "sigma", "separation_gap", "tolerance", "mode"]),
        "synth": ("synth", ["n_slices", "shape", "test_slices", "cell_size", "noise", "seed"]),
        "convert": ("dataset", ["sequences", "unlabelled", "val_slices", "voxel_size"]),
        "predict": ("predict", [*PREDICT_OPTIONS]),
    }
    for command, (section, names) in checks.items():
        defaults = config.defaults(section)
        actions = {a.dest: a for a in commands.choices[command]._actions}
        for name in names:
            assert actions[name].default == defaults[name], (command, name)


CLI_CHOICES = {  # option: (section, key), its choices the key's allowed values
    "convert --unlabelled": ("dataset", "unlabelled"),
    "segment --method": ("segment", "method"),
    "segment --relief": ("segment", "relief"),
    "segment --mode": ("segment", "mode"),
    "segment --measure": ("segment.tune", "measure"),
    "predict --mirror": ("predict", "mirror"),
    "predict --dtype": ("predict", "dtype"),
    "predict --precision": ("predict", "precision"),
    "weights --mode": ("weights", "mode"),
    "augment --padding": ("model", "padding"),
}
CLI_BEYOND = {  # option: what its choices add to (+) or leave out of (-) the key's allowed values
    "predict --scheduler": ("predict", "scheduler", set(), {"slurm"}),  # SLURM: the workflow's
    "weights --class-weights": ("weights", "class_weights", {"none"}, set()),  # none = null
}
REGISTRY_OPTIONS = {"download dataset", "convert source"}  # the registry's datasets


def test_cli_choices_are_the_schemas():
    """Every option with choices offers the allowed values of its config key (one source)."""
    options = {name: a for name, a in cli_options(build_parser()) if a.choices is not None}
    options = {n: a for n, a in options.items() if not isinstance(a.choices, dict)}  # commands
    assert set(options) == set(CLI_CHOICES) | set(CLI_BEYOND) | REGISTRY_OPTIONS
    for name, (section, key) in CLI_CHOICES.items():
        assert list(options[name].choices) == list(config.choices(section, key)), name
    for name, (section, key, added, left_out) in CLI_BEYOND.items():
        expected = set(config.choices(section, key)) - left_out | added
        assert set(options[name].choices) == expected, name
    sources = set(config.choices("dataset", "source")) - {"synthetic"}
    assert set(options["convert source"].choices) == sources
    assert set(options["download dataset"].choices) == sources - {"local"}


def test_allowed_values_of_the_library_are_the_schemas():
    """Modules that never read the config (the pure core) keep their own lists: the schema's."""
    assert agglomerate.MODES == config.choices("segment", "mode")
    assert agglomerate.RELIEFS == config.choices("segment", "relief")
    assert agglomerate.SMALL == config.choices("segment", "small_objects")
    assert tiling.MIRROR_MODES == config.choices("predict", "mirror")
    for section in ("train", "predict"):
        assert precision.PRECISIONS == config.choices(section, "precision")
        assert ("auto", *precision.MEMORY_FORMATS) == config.choices(section, "memory_format")
    assert tuple(segment.MEASURES) == config.choices("segment.tune", "measure")
    assert tuple(segment.GRIDS) == segment.METHODS


def test_choices_name_a_key_with_allowed_values():
    assert config.choices("weights", "class_weights") == ("balanced",)  # of its forms
    assert config.choices("model", "dims") == (2, 3)
    with pytest.raises(ValueError, match="model.depth has no enum"):
        config.choices("model", "depth")
    with pytest.raises(ValueError, match="no section 'model.typo'"):
        config.choices("model", "typo")


def test_malformed_yaml_is_one_line_naming_the_file(tmp_path, capsys):
    from unetpipe.cli import main

    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  lr: 0.01\n   iterations: [3\n")
    with pytest.raises(ValueError, match=rf"^{path}: not valid YAML \(.+ at line 3, column \d+\)"):
        config.load_config(path)
    assert (
        main(["train", str(tmp_path / "d.zarr"), str(tmp_path / "run"), "--config", str(path)]) == 1
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{path}: not valid YAML" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_a_key_of_several_forms_lists_them(tmp_path):
    forms = (
        r"dataset.labels: 'binary' is none of null \| \"instances\" \| "
        r"\{kind: \"binary\", foreground: number\} \| \{kind: \"binary\", threshold: number\}"
    )
    with pytest.raises(ValueError, match=forms):
        config.load_config({"dataset": {"labels": "binary"}})
    assert config.load_config({"dataset": {"labels": {"kind": "binary", "threshold": 128}}})


def test_a_bioimageio_package_needs_its_authors():
    from unetpipe.config import load_config

    with pytest.raises(ValueError, match="export: 'authors' is a required property"):
        load_config({"export": {"bioimageio": True}})
    with pytest.raises(ValueError, match=r"export.authors: \[\] should be non-empty"):
        load_config({"export": {"bioimageio": True, "authors": []}})
    assert load_config({"export": {"bioimageio": True, "authors": [{"name": "A. Tester"}]}})


@pytest.mark.parametrize(
    "given, message",
    [
        ({"crossval": {"k": 3, "sequences": ["01"]}}, "crossval: set either k"),
        ({"crossval": {"k": 1}}, "crossval.k must be at least 2"),
        ({"crossval": {"k": 2}, "train": {"data": "bank"}}, "crossval: the augmented bank"),
        ({"model": {"dims": 3}}, "model.dims 3: the augmented bank holds 2D tiles"),
        ({"segment": {"mode": "3d"}}, r"mode 3d needs method agglomerate \(components"),
        ({"segment": {"mutex_block": [8, 8, 8]}}, "segment.mutex_block is for method mutex"),
        ({"segment": {"small_objects": "merge"}}, "small_objects merge needs method agglomerate"),
    ],
)
def test_cross_field_rules_refuse_a_combination_in_one_line(given, message):
    with pytest.raises(ValueError, match=f"^{message}") as err:
        config.load_config(given)
    assert "\n" not in str(err.value)


def test_the_config_files_keep_the_cross_field_rules():
    for path in sorted((REPO / "config").glob("*.yaml")):
        config.load_config(path)
