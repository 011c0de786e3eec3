"""What the CPU (or GPU) can do: the measured 3x3-convolution peak per precision, and exact FLOP
counts of the U-Net, shared by the benchmarks that report a fraction of the peak."""

from __future__ import annotations

import time

import numpy as np
import torch

from unetpipe.model import UNet
from unetpipe.precision import autocast


def conv_peak(
    precision: str, device: str = "cpu", channels: int = 64, size: int = 256, repeats: int = 5
) -> float:
    """GFLOP/s of two 3x3 ``channels`` -> ``channels`` convolutions on a ``size``^2 image in
    ``precision`` (autocast), channels_last, inference, best of ``repeats``."""
    fmt = torch.channels_last
    convs = torch.nn.Sequential(
        torch.nn.Conv2d(channels, channels, 3), torch.nn.Conv2d(channels, channels, 3)
    ).to(device, memory_format=fmt)
    x = torch.randn(1, channels, size, size, device=device).contiguous(memory_format=fmt)
    flops = 2 * channels * channels * 9 * ((size - 2) ** 2 + (size - 4) ** 2)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    best = float("inf")
    with torch.inference_mode(), autocast(device, precision):
        convs(x)
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            convs(x)
            sync()
            best = min(best, time.perf_counter() - start)
    return flops / best / 1e9


def exact_flops(config: dict, tile: tuple[int, ...]) -> int:
    """2 x multiply-adds of the (transposed) convolutions of a U-Net (``config``: UNet keyword
    arguments) for one forward pass over one tile, counted on meta tensors."""
    flops = 0

    def count(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal flops
        kernel = int(np.prod(module.kernel_size))
        pixels = inputs[0].shape[2:].numel() if module.transposed else output.shape[2:].numel()
        flops += 2 * module.in_channels * module.out_channels * kernel * pixels

    with torch.device("meta"):
        meta = UNet(**config).eval()
        for module in meta.modules():
            kinds = (torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.ConvTranspose2d)
            if isinstance(module, (*kinds, torch.nn.ConvTranspose3d)):
                module.register_forward_hook(count)
        meta(torch.zeros(1, 1, *tile))
    return flops
