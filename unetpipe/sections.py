"""Typed, frozen configs of the stages' sections: one dataclass per section, its fields the
schema's keys (``unetpipe/config.schema.yaml``, the one source of defaults and allowed values; a
test keeps both in step). A stage converts what it is given once, at its entry
(:meth:`Section.from_mapping`: validated, defaults filled in, by
:func:`unetpipe.config.section_params`), and reads attributes from then on;
:meth:`Section.to_mapping` gives back the plain mapping that is written (attributes,
fingerprints), equal to the validated section.

Sub-sections of fixed keys (``augment.elastic``, ``predict.slurm``, ``segment.tune`` ...) are
nested dataclasses; open-ended values stay plain: ``segment.tune.grid`` (parameter -> values),
``weights.class_weights`` (class -> weight), ``export.authors`` (their bioimage.io fields).
Lists stay lists (the validated values, written as they are).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from unetpipe.config import section_params

S = TypeVar("S", bound="Section")  # typing.Self needs Python 3.11; unetpipe supports 3.10


@dataclass(frozen=True)
class Section:
    """A section (or a dotted sub-section) of the configuration, ``SECTION`` its schema path."""

    SECTION: ClassVar[str]

    @classmethod
    def from_mapping(cls: type[S], values: Mapping[str, Any] | S | None = None) -> S:
        """``values`` (the section, possibly partial; None: every default) validated against
        the schema with defaults filled in; an instance of this class is returned as it is."""
        if isinstance(values, cls):
            return values
        return cls._of(section_params(cls.SECTION, values))

    @classmethod
    def _of(cls: type[S], values: Mapping[str, Any]) -> S:
        """The config of a validated, complete mapping (sub-sections built, not checked again);
        it remembers the mapping's key order for :meth:`to_mapping`."""
        nested = _nested(cls)
        config = cls(**{k: nested[k]._of(v) if k in nested else v for k, v in values.items()})
        object.__setattr__(config, "_order", tuple(values))
        return config

    def to_mapping(self) -> dict[str, Any]:
        """The section as a plain mapping (a deep copy), as :func:`section_params` returned it:
        its keys in the order they were given (written JSON stays byte for byte the same)."""
        order = self.__dict__.get("_order") or [f.name for f in dataclasses.fields(self)]
        return {k: _plain(getattr(self, k)) for k in order}


def _plain(value: Any) -> Any:
    return value.to_mapping() if isinstance(value, Section) else copy.deepcopy(value)


@functools.cache
def _nested(cls: type[Section]) -> dict[str, type[Section]]:
    """The fields of ``cls`` that are sub-sections, and their classes."""
    hints = typing.get_type_hints(cls)
    return {
        f.name: hints[f.name]
        for f in dataclasses.fields(cls)
        if isinstance(hints[f.name], type) and issubclass(hints[f.name], Section)
    }


@dataclass(frozen=True)
class WeightsConfig(Section):
    """``weights``: the weight maps of Eq. 2."""

    SECTION: ClassVar[str] = "weights"
    w0: float
    sigma: float
    class_weights: str | Mapping[str, float] | None
    separation_gap: int
    tolerance: float
    mode: str


@dataclass(frozen=True)
class ElasticConfig(Section):
    SECTION: ClassVar[str] = "augment.elastic"
    enabled: bool
    grid: int
    sigma: float


@dataclass(frozen=True)
class RotationConfig(Section):
    SECTION: ClassVar[str] = "augment.rotation"
    enabled: bool
    max_degrees: float
    swap_axes: bool | None


@dataclass(frozen=True)
class ShiftConfig(Section):
    SECTION: ClassVar[str] = "augment.shift"
    enabled: bool
    max_px: float


@dataclass(frozen=True)
class FlipConfig(Section):
    SECTION: ClassVar[str] = "augment.flip"
    enabled: bool


@dataclass(frozen=True)
class GrayConfig(Section):
    SECTION: ClassVar[str] = "augment.gray"
    enabled: bool
    contrast: float
    brightness: float
    gamma: float


@dataclass(frozen=True)
class AugmentConfig(Section):
    """``augment``: the augmentations of Section 3.1 and the augmented bank."""

    SECTION: ClassVar[str] = "augment"
    tile: int | list[int]
    bank_size: int
    shards: int
    seed: int
    interpolation: str
    elastic: ElasticConfig
    rotation: RotationConfig
    shift: ShiftConfig
    flip: FlipConfig
    gray: GrayConfig

    def without_augmentation(self) -> AugmentConfig:
        """This config with every augmentation switched off (``train.data: none``)."""
        parts = {k: getattr(self, k) for k in _nested(type(self))}
        off = {k: dataclasses.replace(v, enabled=False) for k, v in parts.items()}
        return dataclasses.replace(self, **off)


@dataclass(frozen=True)
class ModelConfig(Section):
    """``model``: the U-Net (Section 2)."""

    SECTION: ClassVar[str] = "model"
    depth: int
    base_channels: int
    padding: str
    dropout: float
    dims: int
    pool: list[list[int]] | None
    kernel: list[list[int]] | None
    float32_levels: int | None
    target: str
    offsets: list[list[int]] | None


@dataclass(frozen=True)
class TrainConfig(Section):
    """``train``: training (Section 3)."""

    SECTION: ClassVar[str] = "train"
    data: str
    iterations: int
    affinity_loss: str
    batch_size: int
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    schedule: str
    warmup: int
    val_every: int
    checkpoint_every: int
    export: str
    seed: int
    device: str
    precision: str
    memory_format: str
    gpus: int
    workers: int


@dataclass(frozen=True)
class SlurmConfig(Section):
    SECTION: ClassVar[str] = "predict.slurm"
    queue: str | None
    account: str | None
    cores: int
    memory: str
    walltime: str
    job_extra_directives: list[str]
    log_directory: str | None
    interface: str | None


@dataclass(frozen=True)
class PredictConfig(Section):
    """``predict``: overlap-tile inference (Fig. 2)."""

    SECTION: ClassVar[str] = "predict"
    arrays: list[str]
    tile: int | list[int] | None
    memory_gb: float
    block: list[int] | None
    batch_size: int
    mirror: str
    tta: bool
    precision: str
    memory_format: str
    dtype: str
    device: str
    scheduler: str
    n_workers: int
    threads_per_worker: int | None
    address: str | None
    progress: bool
    slurm: SlurmConfig


@dataclass(frozen=True)
class TuneConfig(Section):
    SECTION: ClassVar[str] = "segment.tune"
    enabled: bool
    silver_truth: bool
    measure: str
    grid: Mapping[str, list[Any]]


@dataclass(frozen=True)
class SegmentConfig(Section):
    """``segment``: probabilities to instances, the tuning of its parameters."""

    SECTION: ClassVar[str] = "segment"
    threshold: float
    method: str
    relief: str
    min_distance: int
    min_size: int
    small_objects: str
    mode: str
    sigma: float
    max_distance: int
    bias: float
    stride: int
    mutex_block: list[int] | None
    mask: bool
    merge_threshold: float
    block: list[int] | None
    tune: TuneConfig


@dataclass(frozen=True)
class EvaluateConfig(Section):
    """``evaluate``: the measures of Sec. 4."""

    SECTION: ClassVar[str] = "evaluate"
    thresholds: list[float]
    thinning: bool
    baseline_sigma: float


@dataclass(frozen=True)
class ReportConfig(Section):
    """``report``: the figures."""

    SECTION: ClassVar[str] = "report"
    overlays: int
    dpi: int


@dataclass(frozen=True)
class ExportConfig(Section):
    """``export``: the bioimage.io model package."""

    SECTION: ClassVar[str] = "export"
    bioimageio: bool
    name: str | None
    description: str | None
    authors: list[dict[str, str]]
    license: str
    tags: list[str]
