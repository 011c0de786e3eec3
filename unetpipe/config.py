"""The configuration of a run (config/*.yaml): its schema, shipped inside the package, is the one
source of every default, and it says which settings can change a result.

A setting marked ``run_setting: true`` in the schema only says how fast, where or how often a stage
works or reports (threads, workers, devices, schedulers, memory, batch sizes of inference,
progress, checkpoint and validation cadence): it never reruns or restarts anything. Every other
setting is a result setting: the workflow passes it to its rule as ``params``, so changing it
reruns that stage and what follows, and training folds it into the fingerprint a checkpoint must
match to be resumed.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator, validators

SCHEMA_FILE = Path(__file__).with_name("config.schema.yaml")


@functools.cache
def _schema() -> dict[str, Any]:
    return yaml.safe_load(SCHEMA_FILE.read_text())


def schema() -> dict[str, Any]:
    """The configuration schema (a copy; JSON Schema 2020-12 with ``run_setting`` marks)."""
    return copy.deepcopy(_schema())


def _node(section: str) -> dict[str, Any]:
    """The schema of a section or a dotted sub-section (``augment.elastic``)."""
    node = _schema()
    for part in section.split("."):
        properties = node.get("properties", {})
        if part not in properties:
            raise ValueError(f"the configuration has no section {section!r}")
        node = properties[part]
    return node


def _filling(validator_class: Any) -> Any:
    """A validator that also fills in every missing key's ``default`` (as Snakemake's validate)."""
    check_properties = validator_class.VALIDATORS["properties"]

    def properties(validator: Any, props: dict, instance: Any, schema: dict) -> Any:
        if isinstance(instance, dict):
            for name, sub in props.items():
                if "default" in sub:
                    instance.setdefault(name, copy.deepcopy(sub["default"]))
        yield from check_properties(validator, props, instance, schema)

    return validators.extend(validator_class, {"properties": properties})


_Validator = _filling(Draft202012Validator)


def _validated(
    instance: dict[str, Any], node: dict[str, Any], where: str, section: str = ""
) -> dict[str, Any]:
    """``instance`` checked against ``node`` (defaults filled in); ``where`` names the file or
    mapping in messages, ``section`` the dotted section ``node`` is the schema of."""
    errors = sorted(_Validator(node).iter_errors(instance), key=lambda e: list(e.absolute_path))
    if not errors:
        return instance
    error = errors[0]
    path = ".".join([section, *map(str, error.absolute_path)]).strip(".")
    if error.validator == "additionalProperties":  # a typo, most likely: name the known keys
        known = list(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(known))
        raise ValueError(
            f"{where}: unknown {path or 'top-level'} parameters {unknown}; known: {known}"
        )
    if error.validator == "oneOf":  # jsonschema's message names none of the allowed forms
        forms = " | ".join(_form(option) for option in error.validator_value)
        raise ValueError(f"{where}: {path}: {error.instance!r} is none of {forms}")
    raise ValueError(f"{where}: {path + ': ' if path else ''}{error.message}")


def _form(node: dict[str, Any]) -> str:
    """One allowed form of a ``oneOf`` key, e.g. ``{kind: "binary", threshold: number}``."""
    if "enum" in node:
        return " | ".join(json.dumps(v) for v in node["enum"])
    if "properties" in node:
        fields = (
            f"{k}: {json.dumps(v['const']) if 'const' in v else v.get('type', 'any')}"
            for k, v in node["properties"].items()
        )
        return "{" + ", ".join(fields) + "}"
    return str(node.get("type", "any"))


def load_config(config: str | Path | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A configuration file (or mapping) validated against the schema, defaults filled in."""
    where = "the configuration"
    if isinstance(config, Mapping):
        values = copy.deepcopy(dict(config))
    elif config is None:
        values = {}
    else:
        where = str(config)
        if not Path(config).is_file():
            raise FileNotFoundError(f"{config}: no such configuration file")
        try:
            values = yaml.safe_load(Path(config).read_text()) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where_in = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ValueError(
                f"{config}: not valid YAML ({problem}{where_in}); fix the file"
            ) from None
        if not isinstance(values, dict):
            raise ValueError(f"{config}: not a mapping of sections")
    values = _validated(values, _schema(), where)
    check_cross_fields(values)
    return values


def check_cross_fields(config: Mapping[str, Any]) -> None:
    """The rules between keys of a configuration (validated, defaults filled in) that need no
    data, a one-line ValueError each: the command line (:func:`load_config`) and the workflow
    (``common.smk``) refuse the same combinations alike."""
    crossval, train = config["crossval"], config["train"]
    check_crossval(crossval)
    if (crossval["k"] or crossval["sequences"]) and train["data"] == "bank":
        raise ValueError(
            "crossval: the augmented bank holds tiles of one split's training slices; set "
            "train.data: on_the_fly (and augment.bank_size: 0) for cross-validation"
        )
    if config["model"]["dims"] == 3 and (train["data"] == "bank" or config["augment"]["bank_size"]):
        raise ValueError(
            "model.dims 3: the augmented bank holds 2D tiles; set train.data: on_the_fly and "
            "augment.bank_size: 0 (3D tiles are deformed on the fly)"
        )
    check_segment(config["segment"])


def check_crossval(crossval: Mapping[str, Any] | None) -> None:
    """The rules of a ``crossval`` section (``{"k": int, "sequences": [str]}``, possibly partial):
    folds of slices or held-out sequences, not both; at least 2 folds; no sequence twice."""
    k, sequences = int((crossval or {}).get("k", 0)), list((crossval or {}).get("sequences", []))
    if k and sequences:
        raise ValueError("crossval: set either k (folds of slices) or sequences, not both")
    if k == 1:
        raise ValueError("crossval.k must be at least 2 (or 0: no cross-validation)")
    if len(set(sequences)) != len(sequences):
        raise ValueError(f"crossval.sequences lists a sequence twice: {sequences}")


def check_segment(params: Mapping[str, Any]) -> None:
    """The rules between keys of a ``segment`` section (complete): which methods a mode, a
    ``mutex_block`` and ``small_objects`` merge work with."""
    method, mode = params["method"], params["mode"]
    if mode == "3d" and method not in ("agglomerate", "mutex_watershed"):
        raise ValueError(f"mode 3d needs method agglomerate ({method} is slice-wise)")
    if params["mutex_block"] and (method, mode) != ("mutex_watershed", "3d"):
        raise ValueError("segment.mutex_block is for method mutex_watershed in mode 3d")
    if params["small_objects"] == "merge" and method != "agglomerate":
        raise ValueError("small_objects merge needs method agglomerate (its region graph)")


def choices(section: str, key: str) -> tuple[Any, ...]:
    """The allowed values of ``section.key`` (a dotted section: ``segment.tune``): its schema
    ``enum``, or of a key of several forms those of its forms that are enums (``oneOf``). The
    one list of them the package and the command line offer."""
    node = _node(f"{section}.{key}")
    values = tuple(v for form in [node, *node.get("oneOf", [])] for v in form.get("enum", ()))
    if not values:
        raise ValueError(f"{section}.{key} has no enum of allowed values in the schema")
    return values


def section_keys(section: str) -> tuple[str, ...]:
    """The keys of a section (or a dotted sub-section: ``predict.slurm``), in schema order."""
    return tuple(_node(section).get("properties", {}))


def defaults(section: str) -> dict[str, Any]:
    """Every default of a section (or a dotted sub-section), nested sections filled in."""
    return section_params(section, None)


def section_params(section: str, given: Mapping[str, Any] | None) -> dict[str, Any]:
    """``given`` (a section, possibly partial) over the section's defaults, validated: unknown
    keys (typos) and values of the wrong type or range are a ValueError naming the key."""
    values = copy.deepcopy(dict(given or {}))
    return _validated(values, _node(section), f"{section} settings", section)


def _split(section: str, values: Mapping[str, Any], run: bool) -> dict[str, Any]:
    node = _node(section).get("properties", {})
    out: dict[str, Any] = {}
    for key, value in values.items():
        sub = node.get(key, {})
        if sub.get("run_setting", False):
            if run:
                out[key] = value
        elif sub.get("params_when_set", False) and value is None:
            continue  # a later-added setting at its default: existing runs' params as they were
        elif isinstance(value, Mapping) and "properties" in sub:
            part = _split(f"{section}.{key}", value, run)
            if part or not run:
                out[key] = part
        elif not run:
            out[key] = value
    return out


def result_settings(section: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of ``values`` (a section) that can change what its stage writes."""
    return _split(section, values, run=False)


def run_settings(section: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of ``values`` (a section) marked ``run_setting``: how, not what."""
    return _split(section, values, run=True)


def rule_params(section: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """What a stage's outputs depend on, the ``params`` of its rule: the section's result
    settings; for ``train`` with ``export: best`` also ``val_every``, which then picks the state
    that is exported."""
    params = result_settings(section, values)
    if section == "train" and values.get("export") == "best":
        params["val_every"] = values["val_every"]
    return params


STAGES: dict[str, tuple[str, ...]] = {
    "data": ("dataset", "synth"),
    "weights": ("weights",),
    "augment": ("augment", "model"),  # the tile geometry of model
    "train": ("augment", "model", "train", "crossval"),  # crossval: the run's split
    "predict": ("predict",),
    "segment": ("segment",),
    "evaluate": ("evaluate",),
    "crossval": (),
    "report": ("report",),
    "export": ("export",),
}
"""The workflow's stage graph: its stages in the order they run, each with the config sections
whose result settings its rule's params hold. A stage builds on every stage before it."""


def upstream_sections(stage: str, synthetic: bool) -> list[str]:
    """The sections of the stages before ``stage`` that are not its own (those its rule's
    ``upstream`` digest covers: a change of one reruns the rule); ``synth`` only for synthetic
    data."""
    stages = list(STAGES)
    before = {name for earlier in stages[: stages.index(stage)] for name in STAGES[earlier]}
    return sorted(before - set(STAGES[stage]) - (set() if synthetic else {"synth"}))
