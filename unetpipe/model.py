"""The U-Net of Ronneberger, Fischer & Brox (2015), Section 2 and Fig. 1.

Contracting path: per level two unpadded 3x3 convolutions, each followed by a ReLU, then 2x2 max
pooling with stride 2; the number of feature channels doubles at each level. Expansive path: a 2x2
up-convolution halving the channels, concatenation with the centre-cropped feature map of the
contracting path, two 3x3 convolutions + ReLU. A final 1x1 convolution maps to the classes.
Dropout sits at the end of the contracting path (Section 3.1). Weights are drawn from a Gaussian
with standard deviation sqrt(2 / N), N the number of incoming nodes of one neuron (Section 3).

``dims=3`` gives the 3D U-Net of Cicek et al. (2016) with the same layout; ``padding="same"`` pads
the 3x3 convolutions so that the output has the input's size (not the paper's choice).

With ``offsets`` (``model.target: affinities``, :mod:`unetpipe.affinities`) the network has one
output channel per offset, the affinity of each pixel to the pixel at that offset, and its
probabilities are sigmoids (:func:`probabilities`); without, the paper's soft-max over classes.

With ``float32_levels`` n (not the paper's: it trained in float32) the double convolutions of the
n outermost levels, on both paths, and the 1x1 head run in float32 when the network runs under
bfloat16 or float16 autocast (:mod:`unetpipe.precision`); the levels between, the poolings and
up-convolutions stay in the reduced precision. Full resolution is where the image's small
intensity differences enter and the borders are drawn: on DIC-HeLa bfloat16 training lost SEG
there and n = 1 brought it back (docs/results.md). In float32 the setting changes nothing.
This module imports torch alone: it is the architecture source of the bioimage.io package.
"""

from __future__ import annotations

import errno
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

Size = int | tuple[int, ...]

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_UPCONV = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_POOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
_DROPOUT = {2: nn.Dropout2d, 3: nn.Dropout3d}


def layout(config: dict[str, Any]) -> tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]:
    """Per axis of a network config: (the convolution kernel extent of each level, the pooling
    factor of each of the ``depth - 1`` poolings). Without ``kernel`` and ``pool`` in the config,
    the paper's 3x3 convolutions and 2x2 poolings on every axis."""
    depth, dims = int(config["depth"]), int(config.get("dims", 2))
    kernel = config.get("kernel") or [[3] * dims] * depth
    pool = config.get("pool") or [[2] * dims] * (depth - 1)
    return tuple(
        (tuple(int(k[a]) for k in kernel), tuple(int(p[a]) for p in pool)) for a in range(dims)
    )


def same_on_every_axis(config: dict[str, Any]) -> bool:
    """Whether the network of ``config`` convolves and pools every axis alike (:func:`layout`)."""
    return len(set(layout(config))) == 1


def _check_layout(kernel: Any, pool: Any, depth: int, dims: int) -> None:
    """ValueError unless ``kernel`` (``depth`` entries of ``dims`` odd extents) and ``pool``
    (``depth - 1`` entries of ``dims`` factors >= 1) are None or well formed."""
    for name, value, count, ok in (
        ("kernel", kernel, depth, lambda v: v >= 1 and v % 2 == 1),
        ("pool", pool, depth - 1, lambda v: v >= 1),
    ):
        if value is None:
            continue
        shaped = len(value) == count and all(len(level) == dims for level in value)
        if not shaped or not all(
            isinstance(v, int) and not isinstance(v, bool) and ok(v) for lv in value for v in lv
        ):
            what = "odd extents" if name == "kernel" else "factors >= 1"
            raise ValueError(
                f"model.{name} must list {count} levels of {dims} {what} (one per axis), "
                f"got {value}"
            )


def _output_extent(
    size: int, kernels: Sequence[int], pools: Sequence[int], padding: str
) -> int | None:
    """Output extent along one axis (per-level kernels, per-pooling factors), or None when
    ``size`` is not a valid input extent."""
    if padding == "same":
        return size if size > 0 and size % math.prod(pools) == 0 else None
    for kernel, factor in zip(kernels[:-1], pools, strict=True):
        size -= 2 * (kernel - 1)
        if size <= 0 or size % factor:
            return None
        size //= factor
    size -= 2 * (kernels[-1] - 1)
    if size <= 0:
        return None
    for kernel, factor in reversed(list(zip(kernels[:-1], pools, strict=True))):
        size = factor * size - 2 * (kernel - 1)
    return size if size > 0 else None


def _valid_extents(
    kernels: Sequence[int], pools: Sequence[int], padding: str, limit: int
) -> list[int]:
    """All valid input extents along one axis up to ``limit`` (at least one beyond it)."""
    step = math.prod(pools)
    if padding == "same":
        return list(range(step, limit + 2 * step, step))
    # Valid inputs are in one-to-one correspondence with the size b >= 1 at the bottom, after
    # its two convolutions: the input is obtained by undoing each layer.
    extents, bottom = [], 1
    while True:
        size = bottom + 2 * (kernels[-1] - 1)
        for kernel, factor in reversed(list(zip(kernels[:-1], pools, strict=True))):
            size = factor * size + 2 * (kernel - 1)
        if _output_extent(size, kernels, pools, padding) is not None:
            extents.append(size)
            if size > limit:
                return extents
        bottom += 1


def _per_axis(size: Size, dims: int) -> tuple[int, ...]:
    sizes = (size,) * dims if isinstance(size, int) else tuple(size)
    if len(sizes) != dims:
        raise ValueError(f"expected {dims} sizes, got {sizes}")
    return sizes


def _isotropic(depth: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    return (3,) * depth, (2,) * (depth - 1)


def valid_input_size(
    min_output_size: int,
    depth: int = 5,
    padding: str = "valid",
    axis: tuple[Sequence[int], Sequence[int]] | None = None,
) -> int:
    """Smallest valid input extent whose output extent is at least ``min_output_size``, along an
    axis of the paper's layout or of ``axis`` = (kernels, pools) (:func:`layout`).

    For the paper's network (depth 5, valid convolutions) valid inputs are 16k + 12 wide and give
    outputs 184 px smaller: ``valid_input_size(388) == 572``.
    """
    if min_output_size < 1:
        raise ValueError(f"min_output_size must be positive, got {min_output_size}")
    kernels, pools = axis or _isotropic(depth)
    limit = min_output_size + 200 * math.prod(pools) * max(kernels)
    for extent in _valid_extents(kernels, pools, padding, limit):
        if _output_extent(extent, kernels, pools, padding) >= min_output_size:
            return extent
    raise AssertionError("unreachable: valid extents grow without bound")


def _check_padding(padding: str) -> None:
    if padding not in ("valid", "same"):
        raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")


def output_size(
    input_size: Size,
    depth: int = 5,
    padding: str = "valid",
    axes: Sequence[tuple[Sequence[int], Sequence[int]]] | None = None,
) -> Size:
    """Output size for ``input_size`` (int or tuple; with ``axes``, the :func:`layout` of each
    axis, a tuple of one extent per axis); ValueError naming the nearest valid sizes."""
    _check_padding(padding)
    sizes = (input_size,) if isinstance(input_size, int) else tuple(input_size)
    if axes is not None and len(sizes) != len(axes):
        raise ValueError(f"expected {len(axes)} sizes (one per axis), got {input_size}")
    out = []
    for i, size in enumerate(sizes):
        kernels, pools = axes[i] if axes is not None else _isotropic(depth)
        extent = _output_extent(int(size), kernels, pools, padding)
        if extent is None:
            valid = _valid_extents(kernels, pools, padding, max(int(size), 1))
            below = [v for v in valid if v < size]
            above = [v for v in valid if v > size]
            nearest = ([below[-1]] if below else []) + above[:1]
            where = f" along axis {i}" if axes is not None and len(sizes) > 1 else ""
            raise ValueError(
                f"input size {size} is not valid{where} for a U-Net of depth {depth} with "
                f"{padding!r} padding (every pooling must see a multiple of its factor); nearest "
                f"valid sizes: {nearest}"
            )
        out.append(extent)
    return out[0] if isinstance(input_size, int) else tuple(out)


def network_output_size(config: dict[str, Any], input_size: Size) -> Size:
    """Output size of the network of ``config`` (a UNet config or a ``model`` config section) for
    an input size: an int is the same extent on every axis (an int back), a tuple one extent per
    axis; ValueError names the nearest valid sizes."""
    depth, padding, axes = config["depth"], config["padding"], layout(config)
    if isinstance(input_size, int):
        out = output_size((input_size,) * len(axes), depth, padding, axes)
        if len(set(out)) > 1:
            raise ValueError(
                f"an anisotropic network's output differs per axis ({out}); give a size per axis"
            )
        return out[0]
    return output_size(tuple(input_size), depth, padding, axes)


def _center_crop(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    slices = [slice(None), slice(None)]
    for have, want in zip(x.shape[2:], shape, strict=True):
        start = (have - want) // 2
        slices.append(slice(start, start + want))
    return x[tuple(slices)]


class _ReLU(nn.Module):
    """ReLU, in place in float32 (less memory); in bfloat16 and float16 into a new tensor, as
    PyTorch's in-place kernel for them is the slower one (a 1.1x faster bfloat16 forward on CPU:
    benchmarks/bench_predict.py)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu_(x) if x.dtype == torch.float32 else torch.relu(x)


class _DoubleConv(nn.Sequential):
    def __init__(
        self, dims: int, in_ch: int, out_ch: int, kernel: tuple[int, ...], same: bool
    ) -> None:
        conv = _CONV[dims]
        padding = tuple(k // 2 for k in kernel) if same else 0
        super().__init__(
            conv(in_ch, out_ch, kernel, padding=padding),
            _ReLU(),
            conv(out_ch, out_ch, kernel, padding=padding),
            _ReLU(),
        )


class UNet(nn.Module):
    """The U-Net of Fig. 1; the defaults give the paper's 23-conv, 31,030,658-parameter net."""

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 2,
        depth: int = 5,
        base_channels: int = 64,
        dims: int = 2,
        padding: str = "valid",
        dropout: float = 0.5,
        offsets: list[list[int]] | None = None,
        pool: list[list[int]] | None = None,
        kernel: list[list[int]] | None = None,
        float32_levels: int | None = None,
    ) -> None:
        super().__init__()
        if dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, got {dims}")
        if offsets is not None:  # checked by unetpipe.affinities.check_offsets upstream
            offsets = [[int(v) for v in o] for o in offsets]
            if n_classes != len(offsets) or any(len(o) != dims for o in offsets):
                raise ValueError(
                    f"n_classes {n_classes} must be the number of {dims}D offsets, got {offsets}"
                )
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        _check_padding(padding)
        _check_layout(kernel, pool, depth, dims)
        if float32_levels is not None and not 1 <= float32_levels <= depth:
            raise ValueError(
                f"float32_levels must be null or 1 .. depth ({depth}), got {float32_levels}"
            )
        self.config: dict[str, Any] = dict(
            in_channels=in_channels,
            n_classes=n_classes,
            depth=depth,
            base_channels=base_channels,
            dims=dims,
            padding=padding,
            dropout=dropout,
        )
        if offsets is not None:  # only then: a boundary net's config stays the paper's
            self.config["offsets"] = offsets
        # Anisotropic layouts only then, too (the paper's files stay as they were).
        for name, value in (("pool", pool), ("kernel", kernel)):
            if value is not None:
                self.config[name] = [[int(v) for v in level] for level in value]
        self.float32_levels = int(float32_levels or 0)
        if self.float32_levels:
            self.config["float32_levels"] = self.float32_levels
        axes = layout(self.config)
        kernels = [tuple(k[level] for k, _ in axes) for level in range(depth)]
        factors = [tuple(p[level] for _, p in axes) for level in range(depth - 1)]
        same = padding == "same"
        channels = [base_channels * 2**level for level in range(depth)]
        self.down = nn.ModuleList()
        previous = in_channels
        for ch, k in zip(channels, kernels, strict=True):
            self.down.append(_DoubleConv(dims, previous, ch, k, same))
            previous = ch
        self.pools = nn.ModuleList(_POOL[dims](f) for f in factors)
        self.dropout = _DROPOUT[dims](dropout) if dropout > 0 else nn.Identity()
        self.upconv = nn.ModuleList()
        self.up = nn.ModuleList()
        for level in reversed(range(depth - 1)):
            ch, f = channels[level], factors[level]
            self.upconv.append(_UPCONV[dims](2 * ch, ch, f, stride=f))
            self.up.append(_DoubleConv(dims, 2 * ch, ch, kernels[level], same))
        self.head = _CONV[dims](channels[0], n_classes, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Gaussian init with std sqrt(2/N), N = incoming nodes of one neuron (Section 3)."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Conv3d)):
                fan_in = module.in_channels * math.prod(module.kernel_size)
            elif isinstance(module, (nn.ConvTranspose2d, nn.ConvTranspose3d)):
                # kernel == stride: each output pixel sees one kernel tap per input channel.
                fan_in = module.in_channels
            else:
                continue
            nn.init.normal_(module.weight, std=math.sqrt(2.0 / fan_in))
            nn.init.zeros_(module.bias)

    def output_size(self, input_size: Size) -> Size:
        """Output size for an input size (:func:`network_output_size`)."""
        return network_output_size(self.config, input_size)

    def valid_input_size(self, min_output_size: Size) -> Size:
        """Smallest valid input extent whose output covers ``min_output_size`` (an int: on every
        axis, as int; a tuple: per axis)."""
        depth, padding, axes = self.config["depth"], self.config["padding"], layout(self.config)
        wanted = _per_axis(min_output_size, len(axes))
        sizes = tuple(
            valid_input_size(m, depth, padding, axis) for m, axis in zip(wanted, axes, strict=True)
        )
        if isinstance(min_output_size, int):
            if len(set(sizes)) > 1:
                raise ValueError(
                    f"an anisotropic network's valid inputs differ per axis ({sizes}); give a "
                    "size per axis"
                )
            return sizes[0]
        return sizes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level, block in enumerate(self.down):
            if level:
                x = self.pools[level - 1](x)
            x = self._at_level(level, block, x)
            skips.append(x)
        x = self.dropout(skips.pop())
        levels = reversed(range(len(self.up)))
        for level, upconv, block in zip(levels, self.upconv, self.up, strict=True):
            x = upconv(x)
            x = torch.cat([_center_crop(skips.pop(), x.shape[2:]), x], dim=1)
            x = self._at_level(level, block, x)
        return self._at_level(0, self.head, x)

    def _at_level(self, level: int, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``module`` of ``level`` on ``x``: in float32, autocast off, at a level of
        ``float32_levels`` under autocast; else as the context says (a device without autocast,
        such as ``meta`` for counting FLOPs, too)."""
        device = x.device.type
        if (
            level >= self.float32_levels
            or not torch.amp.is_autocast_available(device)
            or not torch.is_autocast_enabled(device)
        ):
            return module(x)
        with torch.autocast(device, enabled=False):
            return module(x.float())


class UNetProbabilities(UNet):
    """The U-Net as a network whose output has its input's size, for tools that tile images
    themselves (a bioimage.io package, :mod:`unetpipe.bioimageio`); inputs are multiples of
    ``2**(depth - 1)`` px per axis. The input is mirror-padded (numpy's ``reflect``, as
    :mod:`unetpipe.predict` extrapolates past a border, Fig. 2) by the ``context`` that valid
    convolutions consume per side, plus ``extra`` px after the end that make it a valid input and
    are cropped from the output; the soft-max turns the logits into the class probabilities p_k(x)
    of Eq. 1 (an affinity net: sigmoids). Padding in front by the context alone keeps unetpipe's
    pooling grid: for a valid net, a pass over a whole image equals
    :func:`unetpipe.predict.predict_image`. Same parameters and state-dict keys as :class:`UNet`.
    """

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        if not same_on_every_axis(self.config):
            raise ValueError(
                "a network with a different layout per axis (model.pool, model.kernel) has a "
                "context per axis, which this package format does not carry yet; predict it with "
                "unetpipe (predict_zarr, predict_image)"
            )
        depth, padding = self.config["depth"], self.config["padding"]
        smallest = valid_input_size(1, depth, padding)
        self.context = (smallest - output_size(smallest, depth, padding)) // 2
        self.extra = (smallest - 2 * self.context) % 2 ** (depth - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = self.config["dims"]
        if self.context or self.extra:
            pads = [self.context, self.context + self.extra] * dims
            x = nn.functional.pad(x, pads, mode="reflect")
        x = super().forward(x)
        if self.extra:
            x = x[(slice(None), slice(None)) + (slice(0, -self.extra),) * dims]
        return probabilities(x, self.config)


def probabilities(logits: torch.Tensor, config: dict[str, Any]) -> torch.Tensor:
    """The network's probabilities from its logits (N, C, ...): soft-max over the classes (Eq. 1),
    or for an affinity network (``offsets`` in ``config``) a sigmoid per offset channel."""
    return torch.sigmoid(logits) if "offsets" in config else torch.softmax(logits, dim=1)


def save_model(path: str | Path, model: UNet, **metadata: Any) -> None:
    """Export weights + model config (+ metadata such as normalisation) to one file, atomically.

    The file holds only tensors and plain Python values, so it loads with ``weights_only=True``.
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_file({"config": dict(model.config), "state_dict": state, "metadata": metadata}, path)


def save_file(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary sibling, then an atomic rename: a kill never leaves half a
    file. A failed write (a full disk: torch says only "unexpected pos" or "file write failed")
    is an OSError naming the path, the free space and "no space left"; the temporary is removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(obj, tmp)
    except (RuntimeError, OSError) as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno != errno.ENOSPC:
            raise
        free = shutil.disk_usage(path.parent).free / 2**20
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        full = OSError(
            f"{path}: writing failed, no space left on the device most likely ({free:.0f} MiB "
            f"free in {path.parent}; torch: {reason}); free space and rerun"
        )
        full.errno = errno.ENOSPC
        raise full from err
    os.replace(tmp, path)


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device; a CUDA device that this machine does not have is a
    ValueError saying so (torch would blame the file being loaded)."""
    device = torch.device(device)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index or 0) >= count:
            raise ValueError(
                f"device {device}: no such CUDA device is available (this machine has {count} "
                "GPU(s) visible to torch); use --device cpu or auto"
            )
    return device


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[UNet, dict[str, Any]]:
    """Rebuild a network exported by :func:`save_model`: ``(model in eval mode, metadata)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    device = check_device(device)
    try:
        blob = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # torch raises several kinds (EOFError, RuntimeError, pickle's)
        reason = str(err).splitlines()[0] if str(err) else "empty file"
        raise ValueError(
            f"{path}: not a readable unetpipe model ({type(err).__name__}: {reason}); export it "
            "again (rule train, or unetpipe train)"
        ) from None
    if not isinstance(blob, dict) or not {"config", "state_dict"} <= set(blob):
        raise ValueError(f"{path}: not a unetpipe model file (no config and state_dict)")
    try:
        model = UNet(**blob["config"])
        model.load_state_dict(blob["state_dict"])
    except (TypeError, RuntimeError) as err:
        raise ValueError(f"{path}: its weights do not fit its model config ({err})") from None
    return model.to(device).eval(), blob.get("metadata", {})
