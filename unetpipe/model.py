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
This module imports torch alone: it is the architecture source of the bioimage.io package.
"""

from __future__ import annotations

import errno
import math
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

Size = int | tuple[int, ...]

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_UPCONV = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_POOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
_DROPOUT = {2: nn.Dropout2d, 3: nn.Dropout3d}


def _output_extent(size: int, depth: int, padding: str) -> int | None:
    """Output extent along one axis, or None when ``size`` is not a valid input extent."""
    if padding == "same":
        return size if size > 0 and size % 2 ** (depth - 1) == 0 else None
    for _ in range(depth - 1):
        size -= 4
        if size <= 0 or size % 2:
            return None
        size //= 2
    size -= 4
    if size <= 0:
        return None
    for _ in range(depth - 1):
        size = 2 * size - 4
    return size if size > 0 else None


def _valid_extents(depth: int, padding: str, limit: int) -> list[int]:
    """All valid input extents up to ``limit`` (at least one beyond it)."""
    if padding == "same":
        step = 2 ** (depth - 1)
        return list(range(step, limit + 2 * step, step))
    # Valid inputs are in one-to-one correspondence with the size b >= 1 at the bottom, after
    # its two convolutions: the input is obtained by undoing each layer.
    extents, bottom = [], 1
    while True:
        size = bottom + 4
        for _ in range(depth - 1):
            size = 2 * size + 4
        if _output_extent(size, depth, padding) is not None:
            extents.append(size)
            if size > limit:
                return extents
        bottom += 1


def _per_axis(size: Size, dims: int) -> tuple[int, ...]:
    sizes = (size,) * dims if isinstance(size, int) else tuple(size)
    if len(sizes) != dims:
        raise ValueError(f"expected {dims} sizes, got {sizes}")
    return sizes


def valid_input_size(min_output_size: int, depth: int = 5, padding: str = "valid") -> int:
    """Smallest valid input extent whose output extent is at least ``min_output_size``.

    For the paper's network (depth 5, valid convolutions) valid inputs are 16k + 12 wide and give
    outputs 184 px smaller: ``valid_input_size(388) == 572``.
    """
    if min_output_size < 1:
        raise ValueError(f"min_output_size must be positive, got {min_output_size}")
    for extent in _valid_extents(depth, padding, min_output_size + 200 * 2**depth):
        if _output_extent(extent, depth, padding) >= min_output_size:
            return extent
    raise AssertionError("unreachable: valid extents grow without bound")


def _check_padding(padding: str) -> None:
    if padding not in ("valid", "same"):
        raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")


def output_size(input_size: Size, depth: int = 5, padding: str = "valid") -> Size:
    """Output size for ``input_size`` (int or tuple); ValueError naming the nearest valid sizes."""
    _check_padding(padding)
    sizes = (input_size,) if isinstance(input_size, int) else tuple(input_size)
    out = []
    for size in sizes:
        extent = _output_extent(int(size), depth, padding)
        if extent is None:
            valid = _valid_extents(depth, padding, max(int(size), 1))
            below = [v for v in valid if v < size]
            above = [v for v in valid if v > size]
            nearest = ([below[-1]] if below else []) + above[:1]
            raise ValueError(
                f"input size {size} is not valid for a U-Net of depth {depth} with {padding!r} "
                f"padding (every pooling must see an even size); nearest valid sizes: {nearest}"
            )
        out.append(extent)
    return out[0] if isinstance(input_size, int) else tuple(out)


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
    def __init__(self, dims: int, in_ch: int, out_ch: int, padding: int) -> None:
        conv = _CONV[dims]
        super().__init__(
            conv(in_ch, out_ch, 3, padding=padding),
            _ReLU(),
            conv(out_ch, out_ch, 3, padding=padding),
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
        pad = 1 if padding == "same" else 0
        channels = [base_channels * 2**level for level in range(depth)]
        self.down = nn.ModuleList()
        previous = in_channels
        for ch in channels:
            self.down.append(_DoubleConv(dims, previous, ch, pad))
            previous = ch
        self.pool = _POOL[dims](2)
        self.dropout = _DROPOUT[dims](dropout) if dropout > 0 else nn.Identity()
        self.upconv = nn.ModuleList()
        self.up = nn.ModuleList()
        for ch in reversed(channels[:-1]):
            self.upconv.append(_UPCONV[dims](2 * ch, ch, 2, stride=2))
            self.up.append(_DoubleConv(dims, 2 * ch, ch, pad))
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
        """Output size for an input size (int or tuple); ValueError names nearest valid sizes."""
        return output_size(input_size, self.config["depth"], self.config["padding"])

    def valid_input_size(self, min_output_size: int) -> int:
        """Smallest valid input extent whose output covers ``min_output_size``."""
        return valid_input_size(min_output_size, self.config["depth"], self.config["padding"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level, block in enumerate(self.down):
            if level:
                x = self.pool(x)
            x = block(x)
            skips.append(x)
        x = self.dropout(skips.pop())
        for upconv, block in zip(self.upconv, self.up, strict=True):
            x = upconv(x)
            x = block(torch.cat([_center_crop(skips.pop(), x.shape[2:]), x], dim=1))
        return self.head(x)


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
