"""Numeric precision and memory format of the network per device (not part of the paper).

``auto`` is deterministic: on CUDA bfloat16 where the GPU supports it, else float16 (with loss
scaling in training); on a CPU bfloat16 where oneDNN runs it natively (AMX or AVX512-BF16, as
torch reports them), else float32. Reduced precision means autocast: the weights stay float32,
and callers compute losses and probabilities from float32 logits.

The memory format (NCHW or channels_last) is the faster of the two measured on this machine's
device for the pass at hand, not a constant: which one wins depends on the CPU, the precision
and on forward vs backward. It is measured once per machine and kept (:mod:`unetpipe.measured`):
formats round differently, so a choice remade under load could change a result.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator

import torch

from unetpipe.measured import cached_choice

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "float32", "bfloat16", "float16")
MEMORY_FORMATS = ("contiguous", "channels_last")
_CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


def cpu_has_native_bf16() -> bool:
    """True where oneDNN runs bfloat16 convolutions natively (AMX tiles or AVX512-BF16)."""
    return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """The precision a run on ``device`` uses for ``precision`` (``auto`` resolved): float32,
    bfloat16 or float16. ValueError for an unknown name and for float16 on a CPU."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    cuda = torch.device(device).type == "cuda"
    if precision == "float16" and not cuda:
        raise ValueError(
            "precision float16 needs a CUDA device; on a CPU use bfloat16, float32 or auto"
        )
    if precision != "auto":
        return precision
    if cuda:
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "bfloat16" if cpu_has_native_bf16() else "float32"


def autocast(device: str | torch.device, precision: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to a resolved reduced ``precision``; a no-op for float32."""
    device_type = torch.device(device).type
    if precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=getattr(torch, precision))


def torch_memory_format(name: str, ndim: int = 4) -> torch.memory_format:
    """The torch memory format of a name of :data:`MEMORY_FORMATS` for tensors of ``ndim`` axes."""
    if name not in MEMORY_FORMATS:
        raise ValueError(f"memory format must be one of {MEMORY_FORMATS}, got {name!r}")
    return _CHANNELS_LAST[ndim] if name == "channels_last" else torch.contiguous_format


def best_seconds(run: Callable[[], None], device: str | torch.device, repeats: int = 2) -> float:
    """The least time of ``repeats`` calls of ``run`` (one pass) after one untimed call (oneDNN
    and cuDNN pick their kernels on first use)."""
    return min(_timed({"run": run}, device, repeats)["run"])


def _timed(
    runs: dict[str, Callable[[], None]], device: str | torch.device, repeats: int
) -> dict[str, list[float]]:
    """Seconds of ``repeats`` calls of each of ``runs``, interleaved (a change of load hits every
    run alike), after one untimed call of each."""
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    for run in runs.values():
        run()
        sync()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def fastest_memory_format(
    key: tuple, run: Callable[[str], None], device: str | torch.device, repeats: int = 3
) -> str:
    """The name of the memory format in which ``run(name)`` (one pass) takes least time (the
    least of ``repeats`` interleaved calls of each), measured once per machine for ``key`` (the
    device, precision, network, input shape and pass the caller measured) and kept
    (:func:`unetpipe.measured.cached_choice`), so that load cannot make two runs choose apart."""

    def measure() -> str:
        runs = {name: (lambda name=name: run(name)) for name in MEMORY_FORMATS}
        best = {name: min(times) for name, times in _timed(runs, device, repeats).items()}
        log.info("memory formats timed: %s", ", ".join(f"{n} {s:.3f} s" for n, s in best.items()))
        return min(best, key=best.get)

    return cached_choice("memory format", key, device, measure)


def choose_memory_format(
    configured: str, recorded: str | None, measure: Callable[[], str]
) -> tuple[str, str]:
    """(format, how it was chosen): the ``configured`` one unless it is ``auto``, else the one
    ``recorded`` by the run being resumed, else ``measure()``."""
    if configured != "auto":
        torch_memory_format(configured)  # ValueError for an unknown name
        return configured, "configured"
    if recorded:
        return recorded, "recorded"
    return measure(), "measured on this machine"


@contextlib.contextmanager
def model_in_format(model: torch.nn.Module, name: str) -> Iterator[None]:
    """``model`` converted to the memory format ``name`` for the block, put back afterwards."""
    weights = [p for p in model.parameters() if p.dim() >= 4]
    if not weights:
        yield
        return
    fmt = torch_memory_format(name, weights[0].dim())
    if all(p.is_contiguous(memory_format=fmt) for p in weights):
        yield
        return
    before = "contiguous" if all(p.is_contiguous() for p in weights) else "channels_last"
    model.to(memory_format=fmt)
    try:
        yield
    finally:
        model.to(memory_format=torch_memory_format(before, weights[0].dim()))


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op thread count ``threads`` (None: unchanged) for the block, put back as it
    was afterwards: a library call leaves the process as it found it."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
