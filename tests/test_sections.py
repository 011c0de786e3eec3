import dataclasses
import types
import typing
from collections.abc import Mapping

import pytest

from unetpipe import config, sections

CONFIGS = [
    cls
    for cls in vars(sections).values()
    if isinstance(cls, type) and issubclass(cls, sections.Section) and cls is not sections.Section
]
SCHEMA_TYPES = {
    "integer": int,
    "number": float,
    "string": str,
    "boolean": bool,
    "null": type(None),
    "array": list,
    "object": dict,
}


def _schema_types(node: dict) -> set[type]:
    if "oneOf" in node:
        return set().union(*(_schema_types(option) for option in node["oneOf"]))
    kinds = node["type"]
    return {SCHEMA_TYPES[kind] for kind in (kinds if isinstance(kinds, list) else [kinds])}


def _hint_types(hint: typing.Any) -> set[type]:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_hint_types(arg) for arg in typing.get_args(hint)))
    if dataclasses.is_dataclass(hint) or origin in (dict, Mapping):
        return {dict}
    return {origin or hint}


def test_every_section_the_stages_read_has_a_config():
    names = {cls.SECTION for cls in CONFIGS}
    stages = {"weights", "augment", "model", "train", "predict", "segment", "evaluate", "report"}
    assert stages | {"export"} <= names
    for cls in CONFIGS:  # and every sub-section of fixed keys has its own
        for key in config.section_keys(cls.SECTION):
            if config.section_keys(f"{cls.SECTION}.{key}"):
                assert f"{cls.SECTION}.{key}" in names


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.SECTION)
def test_fields_are_the_schemas_keys_with_its_types(cls):
    """Schema and types cannot drift: the fields are the section's keys, in its order, each
    annotated with the types the schema allows."""
    fields = [f.name for f in dataclasses.fields(cls)]
    assert fields == list(config.section_keys(cls.SECTION))
    hints = typing.get_type_hints(cls)
    for name in fields:
        node = config._node(f"{cls.SECTION}.{name}")
        assert _hint_types(hints[name]) == _schema_types(node), f"{cls.SECTION}.{name}"


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.SECTION)
def test_from_mapping_is_the_validated_section(cls):
    typed = cls.from_mapping(None)
    assert typed.to_mapping() == config.defaults(cls.SECTION)
    assert cls.from_mapping(typed) is typed  # converted once: a typed config passes through
    assert cls.from_mapping(typed.to_mapping()) == typed
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(typed, dataclasses.fields(cls)[0].name, None)


def test_from_mapping_validates_and_fills_in_nested_sections():
    augment = sections.AugmentConfig.from_mapping({"tile": 188, "elastic": {"sigma": 4.0}})
    assert augment.tile == 188
    assert augment.elastic == sections.ElasticConfig(enabled=True, grid=3, sigma=4.0)
    assert augment.to_mapping() == config.section_params(
        "augment", {"tile": 188, "elastic": {"sigma": 4.0}}
    )
    with pytest.raises(ValueError, match="unknown augment.elastic parameters"):
        sections.AugmentConfig.from_mapping({"elastic": {"alpha": 1}})
    with pytest.raises(ValueError, match="train.lr"):
        sections.TrainConfig.from_mapping({"lr": -1})


def test_to_mapping_keeps_the_order_given():
    """What is written (metrics.json, array attributes) stays byte for byte as before."""
    given = {"thinning": False, "thresholds": [0.5]}
    typed = sections.EvaluateConfig.from_mapping(given)
    assert list(typed.to_mapping()) == list(config.section_params("evaluate", given))
    assert list(typed.to_mapping()) == ["thinning", "thresholds", "baseline_sigma"]
    assert typed == sections.EvaluateConfig([0.5], False, 2.0)
    tune = sections.SegmentConfig.from_mapping({"tune": {"measure": "seg", "enabled": True}})
    assert list(tune.to_mapping()["tune"]) == ["measure", "enabled", "silver_truth", "grid"]


def test_without_augmentation_switches_every_part_off():
    augment = sections.AugmentConfig.from_mapping({"gray": {"gamma": 0.5}})
    off = augment.without_augmentation()
    assert off.gray == dataclasses.replace(augment.gray, enabled=False)
    parts = [v for v in off.to_mapping().values() if isinstance(v, dict)]
    assert len(parts) == 5 and not any(part["enabled"] for part in parts)
