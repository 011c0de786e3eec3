"""Affinities of instance labels: for an offset ``o``, the affinity of pixel ``x`` is 1 when ``x``
and ``x + o`` belong to the same instance, else 0 (Wolf et al., "The Mutex Watershed", ECCV 2018;
TPAMI 2020). Nearest-neighbour offsets (one step along one axis) give the attractive edges of the
Mutex Watershed, the long-range ones its repulsive edges.

Background (label 0: ISBI membrane, CTC background) is no instance: a pixel labelled 0 has
affinity 0 to every pixel, another background pixel included. So membranes separate cells in every
channel, and a background pixel joins nothing in the Mutex Watershed (``mwatershed`` leaves such a
pixel at 0, background). An affinity is unknown (``valid`` False, no loss) where ``x + o`` leaves
the image (or the training tile) or where the truth of ``x`` or ``x + o`` is unknown (``mask``).

Offsets follow ``mwatershed``'s convention: channel ``k`` at ``x`` relates ``x`` and
``x + offsets[k]``. :func:`network_config` turns the ``model`` config section into the network's
arguments; :func:`cell_map` is the cell probability of either kind of network output.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

OFFSETS_2D: list[list[int]] = [
    [-1, 0],
    [0, -1],
    [-3, 0],
    [0, -3],
    [-9, 0],
    [0, -9],
    [-9, -9],
    [9, -9],
    [-27, 0],
    [0, -27],
]
"""(y, x): the nearest neighbours, then long-range offsets at distances 3, 9 and 27 along both axes
and both diagonals at 9 (in the spirit of Wolf et al.'s ISBI 2012 offsets)."""

OFFSETS_3D: list[list[int]] = [
    [-1, 0, 0],
    [0, -1, 0],
    [0, 0, -1],
    [-2, 0, 0],
    [0, -3, 0],
    [0, 0, -3],
    [-3, 0, 0],
    [0, -9, 0],
    [0, 0, -9],
    [0, -9, -9],
    [0, 9, -9],
    [0, -27, 0],
    [0, 0, -27],
]
"""(z, y, x): the nearest neighbours, long-range offsets in z at 2 and 3 slices and in (y, x) as
:data:`OFFSETS_2D` (anisotropic EM stacks: slices are further apart than pixels)."""


def default_offsets(dims: int) -> list[list[int]]:
    """The default offsets of a ``dims``-D affinity map (a copy)."""
    if dims not in (2, 3):
        raise ValueError(f"affinities are 2D or 3D, got dims {dims}")
    return [list(o) for o in (OFFSETS_2D if dims == 2 else OFFSETS_3D)]


def check_offsets(offsets: Sequence[Sequence[int]], dims: int | None = None) -> list[list[int]]:
    """``offsets`` as lists of ints, checked: at least one, all of one length (``dims`` if given),
    none zero, no repeats, and at least one nearest neighbour (the attractive edges)."""
    out = [[int(v) for v in o] for o in offsets]
    if not out:
        raise ValueError("model.offsets is empty: give at least the nearest neighbours")
    lengths = {len(o) for o in out}
    if len(lengths) != 1 or (dims is not None and lengths != {dims}):
        raise ValueError(f"offsets must all have {dims or 'the same number of'} axes, got {out}")
    if any(not any(o) for o in out) or len({tuple(o) for o in out}) != len(out):
        raise ValueError(f"offsets must be nonzero and distinct, got {out}")
    if not any(is_attractive(o) for o in out):
        raise ValueError(f"offsets {out} hold no nearest neighbour (e.g. [-1, 0]): add one")
    return out


def is_attractive(offset: Sequence[int]) -> bool:
    """True for a nearest-neighbour offset (one step along one axis): an attractive channel."""
    return sum(abs(int(v)) for v in offset) == 1


def channel_names(offsets: Sequence[Sequence[int]]) -> list[str]:
    """Names of the affinity channels, ``aff_<offset>``: ``[-1, 0]`` -> ``aff_-1_0``."""
    return ["aff_" + "_".join(str(int(v)) for v in o) for o in offsets]


def pair_slices(shape: Sequence[int], offset: Sequence[int]) -> tuple[tuple, tuple]:
    """Slices ``(a, b)`` with ``b`` the pixels ``a + offset``: both inside the image."""
    first, second = [], []
    for n, o in zip(shape, offset, strict=True):
        length = max(0, n - abs(o))  # no pair along an axis shorter than the offset
        first.append(slice(max(0, -o), max(0, -o) + length))
        second.append(slice(max(0, o), max(0, o) + length))
    return tuple(first), tuple(second)


def affinity_targets(
    labels: np.ndarray, offsets: Sequence[Sequence[int]], mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(targets, valid)`` of an instance label image (any dims, 0 = background), both shaped
    ``(len(offsets), *labels.shape)``: ``targets`` float32, 1 where ``x`` and ``x + o`` hold the
    same nonzero label (0 where not valid); ``valid`` bool, False where ``x + o`` leaves the image
    or ``mask`` (True = the truth is known; None: known everywhere) is False at ``x`` or
    ``x + o``."""
    labels = np.asarray(labels)
    offsets = check_offsets(offsets, labels.ndim)
    known = np.ones(labels.shape, bool) if mask is None else np.asarray(mask, bool)
    if known.shape != labels.shape:
        raise ValueError(f"mask {known.shape} and labels {labels.shape} differ in shape")
    targets = np.zeros((len(offsets), *labels.shape), np.float32)
    valid = np.zeros((len(offsets), *labels.shape), bool)
    for k, offset in enumerate(offsets):
        a, b = pair_slices(labels.shape, offset)
        valid[k][a] = known[a] & known[b]
        targets[k][a] = (labels[a] == labels[b]) & (labels[a] != 0) & valid[k][a]
    return targets, valid


def dihedral_channels(
    offsets: Sequence[Sequence[int]], flips: Sequence[int], swap: bool
) -> list[tuple[int, bool]]:
    """Test-time augmentation of an affinity net: a view of the (y, x) plane flipped (``flips``,
    per axis) and then transposed (``swap``) predicts channel ``k`` between ``v`` and ``v +
    offsets[k]`` in the view, i.e. between ``x`` and ``x + d_k`` once mapped back, ``d_k`` the
    offset transposed and flipped back. For each offset ``o_j``, the channel ``k`` and whether
    ``d_k = -o_j`` (the pair reversed: the affinity of ``x`` is the channel at ``x + o_j``).
    ValueError when an offset has neither: TTA needs offsets closed, up to sign, under the flips
    and rotations of the plane (as the defaults are)."""
    mapped = []
    for offset in offsets:
        d = [int(v) for v in offset]
        if swap:
            d[-2], d[-1] = d[-1], d[-2]
        for axis, flip in zip((-2, -1), flips, strict=True):
            d[axis] = -d[axis] if flip else d[axis]
        mapped.append(tuple(d))
    channels = []
    for offset in offsets:
        o = tuple(int(v) for v in offset)
        if o in mapped:
            channels.append((mapped.index(o), False))
        elif tuple(-v for v in o) in mapped:
            channels.append((mapped.index(tuple(-v for v in o)), True))
        else:
            raise ValueError(
                f"tta flips and rotates the (y, x) plane, which takes offset {list(o)} to one "
                f"that model.offsets {[list(map(int, x)) for x in offsets]} lack (up to sign): "
                "add its mirror images or predict with tta off"
            )
    return channels


def affinities_of_view(
    probs: np.ndarray,
    offsets: Sequence[Sequence[int]],
    flips: Sequence[int],
    swap: bool,
    margin: Sequence[int],
    size: Sequence[int],
) -> np.ndarray:
    """A TTA view's affinities as the channels of ``offsets`` over a region of ``size`` px:
    ``probs`` is the view flipped and transposed back, over the region grown by ``margin`` px
    before it (and at least as much after it), margin >= every offset's reach; reversed channels
    are read ``o_j`` further (:func:`dihedral_channels`)."""
    out = np.empty((len(offsets), *size), dtype=probs.dtype)
    for j, (k, reverse) in enumerate(dihedral_channels(offsets, flips, swap)):
        shift = [int(v) for v in offsets[j]] if reverse else [0] * len(size)
        box = tuple(slice(m + s, m + s + n) for m, s, n in zip(margin, shift, size, strict=True))
        out[j] = probs[k][box]
    return out


def cell_map(probs: np.ndarray, config: dict[str, Any]) -> np.ndarray:
    """The cell probability map of a network's output (C, *spatial): channel 1 (cell) of a
    boundary net; of an affinity net the mean of its nearest-neighbour channels (the probability
    that a pixel is in the same instance as its neighbours: low on membranes and background, about
    1/2 on a cell's outermost pixels), the map its pixel measures and validation score."""
    if "offsets" not in config:
        return probs[1]
    nearest = [k for k, o in enumerate(config["offsets"]) if is_attractive(o)]
    return np.mean(probs[nearest], axis=0)


def network_config(model_cfg: dict[str, Any]) -> dict[str, Any]:
    """:class:`unetpipe.model.UNet` arguments of a ``model`` config section: ``target: boundary``
    (the paper, two classes) or ``affinities`` (one channel per ``offsets`` entry; null: the
    default offsets of ``dims``, :func:`default_offsets`)."""
    config = {k: v for k, v in model_cfg.items() if k not in ("target", "offsets")}
    target = model_cfg.get("target", "boundary")
    if target == "affinities":
        dims = int(config.get("dims", 2))
        offsets = model_cfg.get("offsets") or default_offsets(dims)
        config["offsets"] = check_offsets(offsets, dims)
        config["n_classes"] = len(config["offsets"])
    elif target != "boundary":
        raise ValueError(f"model.target must be boundary or affinities, got {target!r}")
    elif model_cfg.get("offsets") is not None:
        raise ValueError("model.offsets are set but model.target is boundary: set it to affinities")
    return config
