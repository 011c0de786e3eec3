"""Precision and memory format per device: ``auto`` resolved, formats measured and restored."""

from __future__ import annotations

import time

import pytest
import torch

from unetpipe.model import UNet
from unetpipe.precision import (
    autocast,
    choose_memory_format,
    cpu_has_native_bf16,
    fastest_memory_format,
    model_in_format,
    resolve_precision,
    torch_threads,
)


@pytest.mark.parametrize(
    ("amx", "avx512_bf16", "expected"),
    [(True, False, "bfloat16"), (False, True, "bfloat16"), (False, False, "float32")],
)
def test_auto_on_a_cpu_is_bfloat16_only_with_native_support(
    monkeypatch: pytest.MonkeyPatch, amx: bool, avx512_bf16: bool, expected: str
) -> None:
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    assert cpu_has_native_bf16() == (expected == "bfloat16")
    assert resolve_precision("auto", "cpu") == expected
    assert resolve_precision("float32", "cpu") == "float32"
    assert resolve_precision("bfloat16", "cpu") == "bfloat16"  # asked for: emulated where needed


@pytest.mark.parametrize(("bf16", "expected"), [(True, "bfloat16"), (False, "float16")])
def test_auto_on_cuda_is_bfloat16_where_supported(
    monkeypatch: pytest.MonkeyPatch, bf16: bool, expected: str
) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)
    assert resolve_precision("auto", "cuda") == expected
    assert resolve_precision("float16", torch.device("cuda", 1)) == "float16"


def test_float16_on_a_cpu_and_unknown_names_are_refused() -> None:
    with pytest.raises(ValueError, match="float16 needs a CUDA device"):
        resolve_precision("float16", "cpu")
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("half", "cpu")
    with pytest.raises(ValueError, match="memory format must be one of"):
        choose_memory_format("nhwc", None, lambda: "contiguous")


def test_autocast_computes_in_the_reduced_precision_only() -> None:
    conv = torch.nn.Conv2d(2, 2, 3)
    x = torch.randn(1, 2, 8, 8)
    with autocast("cpu", "bfloat16"):
        assert conv(x).dtype == torch.bfloat16
    with autocast("cpu", "float32"):
        assert conv(x).dtype == torch.float32
    assert conv.weight.dtype == torch.float32


def test_the_faster_format_is_chosen_and_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def run(name: str) -> None:
        calls.append(name)
        time.sleep(0.02 if name == "contiguous" else 0.0)

    assert fastest_memory_format(("test",), run, "cpu") == "channels_last"
    assert calls.count("contiguous") == calls.count("channels_last") == 4  # warm-up + 3 timed
    assert calls[2:] == ["contiguous", "channels_last"] * 3  # timed in turns
    assert fastest_memory_format(("test",), run, "cpu") == "channels_last"
    assert len(calls) == 8  # cached: not measured again
    monkeypatch.setattr("unetpipe.measured._CHOSEN", {})  # a later process on this machine
    assert (
        fastest_memory_format(("test",), lambda name: calls.append(name), "cpu") == "channels_last"
    )
    assert len(calls) == 8  # read from the cache file, not timed again


def test_configured_then_recorded_then_measured() -> None:
    def measure() -> str:
        return "channels_last"

    assert choose_memory_format("contiguous", "channels_last", measure) == (
        "contiguous",
        "configured",
    )
    assert choose_memory_format("auto", "contiguous", measure) == ("contiguous", "recorded")
    assert choose_memory_format("auto", None, measure) == (
        "channels_last",
        "measured on this machine",
    )


@pytest.mark.parametrize("before", [torch.contiguous_format, torch.channels_last])
def test_model_in_format_puts_the_model_back(before: torch.memory_format) -> None:
    model = UNet(depth=2, base_channels=4).to(memory_format=before)
    convs = [p for p in model.parameters() if p.dim() == 4 and p.shape[-1] > 1]
    for name, fmt in (("channels_last", torch.channels_last), ("contiguous", None)):
        with model_in_format(model, name):
            wanted = fmt or torch.contiguous_format
            assert all(p.is_contiguous(memory_format=wanted) for p in convs)
        assert all(p.is_contiguous(memory_format=before) for p in convs)


def test_torch_threads_are_put_back_even_after_an_error():
    before = torch.get_num_threads()
    with torch_threads(None):
        assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(before + 1):
        assert torch.get_num_threads() == before + 1
        raise RuntimeError
    assert torch.get_num_threads() == before
