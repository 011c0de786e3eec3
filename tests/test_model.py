"""The U-Net's architecture facts from the paper (Section 2, Fig. 1) and its size arithmetic."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from unetpipe.model import (
    UNet,
    load_model,
    output_size,
    probabilities,
    save_model,
    valid_input_size,
)


def _convs(model: nn.Module) -> list[nn.Module]:
    kinds = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    return [m for m in model.modules() if isinstance(m, kinds)]


def test_paper_network_has_23_convolutions_and_31030658_parameters():
    model = UNet()
    assert len(_convs(model)) == 23
    assert sum(p.numel() for p in model.parameters()) == 31_030_658


@pytest.mark.parametrize(("size", "expected"), [(572, 388), (700, 516), (1084, 900), (188, 4)])
def test_paper_output_sizes(size, expected):
    assert output_size(size) == expected
    assert UNet(base_channels=2).output_size((size, size)) == (expected, expected)


def test_forward_shape_matches_output_size():
    model = UNet(base_channels=2, depth=5).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 1, 572, 188))
    assert out.shape == (1, 2, 388, 4)


def test_invalid_size_names_nearest_valid_sizes():
    with pytest.raises(ValueError, match=r"nearest valid sizes: \[556, 572\]"):
        output_size(570)
    with pytest.raises(ValueError, match=r"\[188\]"):
        output_size(100)


def test_valid_input_size_is_smallest_covering_input():
    assert valid_input_size(388) == 572
    assert valid_input_size(389) == 588
    assert valid_input_size(1) == 188
    for request in range(1, 300, 7):
        size = valid_input_size(request, depth=4)
        assert output_size(size, depth=4) >= request
        smaller = [s for s in range(size - 1, 0, -1) if _is_valid(s, 4)]
        assert not smaller or output_size(smaller[0], depth=4) < request


def _is_valid(size: int, depth: int) -> bool:
    try:
        output_size(size, depth=depth)
    except ValueError:
        return False
    return True


def test_valid_inputs_of_paper_net_are_16k_plus_12():
    valid = [s for s in range(150, 1100) if _is_valid(s, 5)]
    assert valid == list(range(188, 1100, 16))


def test_same_padding_keeps_size_and_needs_divisibility():
    model = UNet(depth=3, base_channels=2, padding="same").eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 36, 20)).shape == (1, 2, 36, 20)
    assert model.output_size(36) == 36
    with pytest.raises(ValueError, match="nearest valid sizes: \\[32, 36\\]"):
        model.output_size(34)


def test_3d_unet_forward():
    model = UNet(dims=3, depth=3, base_channels=2, n_classes=3).eval()
    size = valid_input_size(4, depth=3)
    with torch.no_grad():
        out = model(torch.zeros(1, 1, size, size, size))
    assert out.shape == (1, 3, 4, 4, 4)
    assert model.output_size((size, size, size)) == (4, 4, 4)


LAYOUT = {"pool": [[1, 2, 2], [2, 2, 2]], "kernel": [[1, 3, 3], [3, 3, 3], [3, 3, 3]]}


def _z_extent(size: int) -> int | None:
    """By hand along z of LAYOUT (depth 3): the first level convolves 1 x 3 x 3 and pools only
    (y, x); the second convolves 3 x 3 x 3 and pools 2 x 2 x 2; the bottom is 3 x 3 x 3."""
    size -= 4  # second level, two 3-convolutions
    if size <= 0 or size % 2:
        return None
    size = size // 2 - 4  # pooled 2x, the bottom's two convolutions
    if size <= 0:
        return None
    size = 2 * size - 4  # up 2x, the second level's convolutions; the first level keeps z
    return size if size > 0 else None


def test_anisotropic_layout_per_axis():
    """``pool`` and ``kernel`` per axis (nnU-Net's layout for anisotropic voxels): z's output
    extent follows the hand recurrence above, (y, x) the paper's; the forward pass agrees."""
    torch.manual_seed(0)
    net = UNet(base_channels=2, depth=3, dims=3, **LAYOUT)
    assert net.config["pool"] == LAYOUT["pool"] and net.config["kernel"] == LAYOUT["kernel"]
    assert net.down[0][0].kernel_size == (1, 3, 3) and net.pools[0].kernel_size == (1, 2, 2)
    assert net.upconv[-1].stride == (1, 2, 2) and net.upconv[0].stride == (2, 2, 2)
    for z in range(1, 30):
        expected = _z_extent(z)
        if expected is None:
            with pytest.raises(ValueError, match="along axis 0"):
                net.output_size((z, 44, 44))
            continue
        assert net.output_size((z, 44, 44)) == (expected, 4, 4)
    assert net.valid_input_size((1, 4, 4)) == (18, 44, 44)
    assert net(torch.zeros(1, 1, 18, 44, 44)).shape == (1, 2, 2, 4, 4)
    with pytest.raises(ValueError, match="differs per axis"):
        net.output_size(44)
    # The paper's layout spelled out is the paper's network: same modules, same keys.
    paper = {"pool": [[2, 2]] * 4, "kernel": [[3, 3]] * 5}
    assert UNet(**paper).state_dict().keys() == UNet().state_dict().keys()
    assert "pool" not in UNet().config  # model files of the paper's layout are unchanged


@pytest.mark.parametrize(
    "layout",
    [
        {"pool": [[1, 2, 2]]},  # depth 3 needs 2 poolings
        {"pool": [[1, 2], [2, 2]]},  # 2 axes for a 3D net
        {"pool": [[0, 2, 2], [2, 2, 2]]},
        {"kernel": [[2, 3, 3], [3, 3, 3], [3, 3, 3]]},  # even
        {"kernel": [[3, 3, 3], [3, 3, 3]]},
    ],
)
def test_bad_layouts_are_named(layout):
    with pytest.raises(ValueError, match=r"model\.(pool|kernel) must list"):
        UNet(depth=3, dims=3, **layout)


def test_init_is_gaussian_with_std_sqrt_2_over_fan_in():
    torch.manual_seed(0)
    model = UNet()
    for conv in _convs(model):
        weight = conv.weight.detach().numpy().ravel()
        if isinstance(conv, nn.ConvTranspose2d):
            fan_in = conv.in_channels
        else:
            fan_in = conv.in_channels * math.prod(conv.kernel_size)
        expected = math.sqrt(2.0 / fan_in)
        # Relative standard error of a sample std is 1/sqrt(2n): allow 5 of them (at least 1%).
        tolerance = max(5 / math.sqrt(2 * weight.size), 0.01)
        assert abs(weight.std() / expected - 1) < tolerance
        assert abs(weight.mean()) < 5 * expected / math.sqrt(weight.size)
        assert np.all(conv.bias.detach().numpy() == 0)
    # The example of the paper: 3x3 convolution with 64 input channels, N = 576.
    conv64 = next(c for c in _convs(model) if c.in_channels == 64 and c.kernel_size == (3, 3))
    assert abs(conv64.weight.std().item() - math.sqrt(2 / 576)) < 0.01 * math.sqrt(2 / 576)


def test_dropout_sits_at_end_of_contracting_path():
    model = UNet(base_channels=2, depth=3, dropout=0.5)
    assert isinstance(model.dropout, nn.Dropout2d)
    assert isinstance(UNet(base_channels=2, depth=3, dropout=0).dropout, nn.Identity)
    x = torch.randn(1, 1, 92, 92)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_bad_arguments():
    with pytest.raises(ValueError, match="dims"):
        UNet(dims=4)
    with pytest.raises(ValueError, match="padding"):
        UNet(padding="reflect")


def test_save_and_load_round_trip(tmp_path):
    model = UNet(depth=3, base_channels=4, n_classes=3).eval()
    path = tmp_path / "model.pt"
    save_model(path, model, normalization={"mean": 1.5, "std": 2.0})
    loaded, metadata = load_model(path)
    assert loaded.config == model.config
    assert metadata == {"normalization": {"mean": 1.5, "std": 2.0}}
    x = torch.randn(1, 1, 92, 92)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    # Loads without unpickling code.
    assert "state_dict" in torch.load(path, weights_only=True)


def _output_dtypes(model: UNet, x: torch.Tensor, precision: torch.dtype) -> dict:
    """The dtype each double convolution and the head (by name) computed in, in a pass of ``x``
    under autocast to ``precision``."""
    seen = {}
    names = {"head": model.head}
    names.update({f"down{i}": b for i, b in enumerate(model.down)})
    names.update({f"up{len(model.up) - 1 - k}": b for k, b in enumerate(model.up)})  # by level
    hooks = [
        module.register_forward_hook(lambda m, args, out, name=name: seen.update({name: out.dtype}))
        for name, module in names.items()
    ]
    with torch.no_grad(), torch.autocast("cpu", dtype=precision):
        model(x)
    for hook in hooks:
        hook.remove()
    return seen


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_float32_levels_run_the_outer_levels_and_the_head_in_float32(levels):
    torch.manual_seed(0)
    model = UNet(depth=3, base_channels=4, float32_levels=levels).eval()
    seen = _output_dtypes(model, torch.randn(1, 1, 92, 92), torch.bfloat16)
    wanted = {"head": torch.float32}
    for level in range(3):
        dtype = torch.float32 if level < levels else torch.bfloat16
        wanted[f"down{level}"] = dtype
        if level < 2:  # the deepest level has no block on the expanding path
            wanted[f"up{level}"] = dtype
    assert seen == wanted
    # Without the setting, every level runs in bfloat16, the head too.
    plain = UNet(depth=3, base_channels=4).eval()
    assert set(_output_dtypes(plain, torch.randn(1, 1, 92, 92), torch.bfloat16).values()) == {
        torch.bfloat16
    }


def test_float32_levels_change_reduced_precision_only_and_are_kept_in_the_model_file(tmp_path):
    torch.manual_seed(0)
    plain = UNet(depth=3, base_channels=4).eval()
    model = UNet(depth=3, base_channels=4, float32_levels=1).eval()
    model.load_state_dict(plain.state_dict())
    assert "float32_levels" not in plain.config and model.config["float32_levels"] == 1
    x = torch.randn(1, 1, 92, 92)
    with torch.no_grad():
        assert torch.equal(model(x), plain(x))  # float32: the same network
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ends, reduced = model(x), plain(x)
        exact = plain(x)
    assert ends.dtype == torch.float32 and reduced.dtype == torch.bfloat16
    # Full resolution in float32 is nearer the float32 pass than all-bfloat16, on average.
    assert (ends - exact).abs().mean() < (reduced.float() - exact).abs().mean()
    save_model(tmp_path / "model.pt", model)
    loaded, _ = load_model(tmp_path / "model.pt")
    assert loaded.float32_levels == 1
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(loaded(x), ends)


def test_float32_levels_run_on_a_device_without_autocast():
    """The meta device (shapes only: FLOP counts, benchmarks/peak.py) has no autocast."""
    model = UNet(depth=3, base_channels=4, float32_levels=1).to("meta")
    assert model(torch.zeros(1, 1, 92, 92, device="meta")).shape == (1, 2, 52, 52)


@pytest.mark.parametrize("levels", [0, 4])
def test_float32_levels_outside_1_to_depth_are_refused(levels):
    with pytest.raises(ValueError, match=r"float32_levels must be null or 1 \.\. depth \(3\)"):
        UNet(depth=3, float32_levels=levels)


def test_load_missing_model_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="model file not found"):
        load_model(tmp_path / "nope.pt")


def test_a_cuda_device_this_machine_lacks_is_named(tmp_path, monkeypatch):
    """Not "not a readable unetpipe model": the device is what is missing."""
    path = tmp_path / "model.pt"
    save_model(path, UNet(depth=2, base_channels=2), normalization={"mean": 0.0, "std": 1.0})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:1"):
        with pytest.raises(ValueError, match=rf"device {device}: no such CUDA device is available"):
            load_model(path, device)
    assert load_model(path, "cpu")[1]["normalization"] == {"mean": 0.0, "std": 1.0}


def test_a_failed_save_names_the_path_and_leaves_nothing(tmp_path, monkeypatch):
    from unetpipe.model import save_file

    save_file({"a": torch.ones(2)}, tmp_path / "ok.pt")
    assert torch.equal(torch.load(tmp_path / "ok.pt", weights_only=True)["a"], torch.ones(2))

    def full(obj, target):
        open(target, "wb").write(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError, match=r"model.pt: writing failed, no space left on the device"):
        save_model(tmp_path / "model.pt", UNet(depth=2, base_channels=2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.pt"]


def test_affinity_net_has_sigmoid_probabilities():
    offsets = [[-1, 0], [0, -1], [0, -5]]
    affinity = UNet(depth=2, base_channels=4, n_classes=3, offsets=offsets)
    assert affinity.config["offsets"] == offsets and "offsets" not in UNet().config
    logits = torch.randn(1, 3, 4, 4)
    torch.testing.assert_close(probabilities(logits, affinity.config), torch.sigmoid(logits))
    torch.testing.assert_close(probabilities(logits, UNet().config), logits.softmax(1))
    with pytest.raises(ValueError, match="number of 2D offsets"):
        UNet(offsets=[[-1, 0]])
    with pytest.raises(ValueError, match="number of 2D offsets"):
        UNet(n_classes=1, offsets=[[-1, 0, 0]])


PURE_CORE = ["model", "losses", "weights", "tiling", "metrics", "agglomerate", "intensity"]


def test_the_pure_core_imports_no_zarr_dask_matplotlib_or_config():
    """The paper's math (issue 32's pure core) runs on arrays alone: Zarr, Dask, plotting and the
    configuration come in at the edges (the stages)."""
    root = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    imports = "; ".join(f"import unetpipe.{name}" for name in PURE_CORE)
    code = f"import json, sys; {imports}; print(json.dumps(sorted(sys.modules)))"
    child = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert child.returncode == 0, child.stderr
    loaded = set(json.loads(child.stdout))
    assert {f"unetpipe.{name}" for name in PURE_CORE} <= loaded
    edges = {"zarr", "dask", "matplotlib", "unetpipe.config", "unetpipe.sections", "unetpipe.io"}
    assert not {name for name in loaded if name.split(".")[0] in edges or name in edges}
