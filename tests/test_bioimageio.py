"""The bioimage.io package of a run: bioimage.io's validator and model test pass, the package
predicts what unetpipe predicts (whole and tiled, in bioimageio.core too), bad runs fail clearly."""

from __future__ import annotations

import ast
import io
import json
import math
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
import zarr
from conftest import run_rule_script
from PIL import Image

import unetpipe.model
from unetpipe.bioimageio import export_bioimageio, package_geometry, package_name
from unetpipe.cli import main
from unetpipe.config import load_config
from unetpipe.intensity import dataset_statistics, normalize
from unetpipe.model import UNet, UNetProbabilities, save_model
from unetpipe.predict import predict_image
from unetpipe.synthetic import write_synthetic
from unetpipe.tiling import read_mirrored

bioimageio_core = pytest.importorskip("bioimageio.core")
bioimageio_spec = pytest.importorskip("bioimageio.spec")

METRICS = {"results": {"val": {"unet": {"pixel_error": 0.0625}, "baseline": {"pixel_error": 0.25}}}}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """results/syn/r1 of a finished run: a small synthetic data group beside it, model.pt (a
    depth-3 U-Net with its first level in float32 under autocast, untrained), metrics.json and a
    report overlay."""
    results = tmp_path_factory.mktemp("results") / "syn"
    data = write_synthetic(results / "data.zarr", 3, (96, 88), 0, (16, 16), 20.0, dataset="syn")
    group = zarr.open_group(str(data), mode="r")
    stats = dataset_statistics(group["raw"], group.attrs["splits"]["train"])
    run_dir = results / "r1"
    (run_dir / "report").mkdir(parents=True)
    torch.manual_seed(0)
    # float32_levels (a config key beyond the paper's): the package's own kwargs and source carry
    # it; traced in float32, where it changes nothing.
    net = UNet(depth=3, base_channels=4, float32_levels=1)
    save_model(run_dir / "model.pt", net, normalization=stats, tile=92)
    (run_dir / "metrics.json").write_text(json.dumps(METRICS))
    overlay = np.random.default_rng(0).integers(0, 256, (60, 150, 3), dtype=np.uint8)
    Image.fromarray(overlay).save(run_dir / "report" / "overlay_002.png")
    return run_dir


@pytest.fixture(scope="module")
def package(run: Path) -> Path:
    path = run / "r1.bioimageio.zip"
    result = export_bioimageio(run, path, {"authors": [{"name": "A. Tester"}], "tags": ["demo"]})
    assert result["status"] == "passed", result
    return path


def test_package_passes_the_validator_and_the_model_test(package: Path) -> None:
    descr = bioimageio_spec.load_description(package, perform_io_checks=True)
    assert descr.validation_summary.status == "valid-format", descr.validation_summary.format()
    summary = bioimageio_core.test_model(package, devices=["cpu"])
    assert summary.status == "passed", summary.format()
    passed = {d.name for d in summary.details if d.status == "passed"}
    for weights in ("pytorch_state_dict", "torchscript"):
        assert f"Reproduce test outputs from test inputs ({weights})" in passed
        assert (
            f"Run {weights} inference for inputs with batch_size: 2 and size parameter n: 2"
            in passed
        )


def test_package_describes_the_model_and_its_run(package: Path, run: Path) -> None:
    with zipfile.ZipFile(package) as archive:
        rdf = yaml.safe_load(archive.read("rdf.yaml"))
        readme = archive.read("README.md").decode()
        source = archive.read("unet.py").decode()
        cover = np.asarray(Image.open(archive.open("cover.png")))
    blob = torch.load(run / "model.pt", weights_only=True)
    assert package_geometry(UNetProbabilities(**blob["config"])) == (44, 4, 20)
    (raw,), (probabilities,) = rdf["inputs"], rdf["outputs"]
    assert rdf["format_version"].startswith("0.5")
    assert [a["type"] for a in raw["axes"]] == ["batch", "channel", "space", "space"]
    assert [a["size"] for a in raw["axes"][2:]] == [{"min": 44, "step": 4}] * 2
    assert raw["pad"] == {"mode": "reflect"}
    assert (raw["sample_tensor"]["source"], probabilities["sample_tensor"]["source"]) == (
        "sample_input.tif",
        "sample_output.tif",
    )
    assert [(a["halo"], a["size"]) for a in probabilities["axes"][2:]] == [
        (20, {"tensor_id": "raw", "axis_id": axis}) for axis in ("y", "x")
    ]
    assert probabilities["axes"][1]["channel_names"] == ["background", "cell"]
    (norm,) = [p for p in raw["preprocessing"] if p["id"] == "fixed_zero_mean_unit_variance"]
    assert norm["kwargs"] == blob["metadata"]["normalization"]
    state_dict = rdf["weights"]["pytorch_state_dict"]
    assert state_dict["architecture"]["callable"] == "UNetProbabilities"
    assert state_dict["architecture"]["kwargs"] == blob["config"]
    assert "torchscript" in rdf["weights"]
    assert source == Path(unetpipe.model.__file__).read_text()
    imports = {
        (node.module if isinstance(node, ast.ImportFrom) else node.names[0].name).split(".")[0]
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.Import, ast.ImportFrom))
    }
    assert imports - set(sys.stdlib_module_names) == {"torch"}
    assert rdf["cite"][0]["doi"] == "10.1007/978-3-319-24574-4_28"
    assert [a["name"] for a in rdf["authors"]] == ["A. Tester"]
    assert {"unet", "2d", "pytorch", "demo"} <= set(rdf["tags"])
    np.testing.assert_array_equal(cover, np.asarray(Image.open(run / "report/overlay_002.png")))
    assert "## Validation" in readme and "0.0625" in readme and "0.2500" in readme
    assert "training slices [0, 1], validation [2]" in readme
    assert "Ronneberger" in readme and "arXiv:1505.04597" in readme


def test_package_predicts_like_unetpipe(package: Path, run: Path) -> None:
    """One uncropped pass of the package over a whole image (each weight format) and
    bioimageio.core's prediction of it, whole and blockwise, equal unetpipe's overlap-tile
    prediction."""
    from bioimageio.core.digest_spec import create_sample_for_model

    group = zarr.open_group(str(run.parent / "data.zarr"), mode="r")
    image = np.asarray(group["raw"][2], dtype=np.float32)  # 96 x 88: in the series 44 + 4n
    blob = torch.load(run / "model.pt", weights_only=True)
    model = UNet(**blob["config"]).eval()
    model.load_state_dict(blob["state_dict"])
    expected = predict_image(model, normalize(image, blob["metadata"]["normalization"]))
    descr = bioimageio_core.load_description(package)
    for weights in ("pytorch_state_dict", "torchscript"):
        with bioimageio_core.create_prediction_pipeline(
            descr, weight_format=weights, devices=["cpu"]
        ) as pipeline:
            sample = create_sample_for_model(descr, inputs={"raw": image[None, None]})
            out = pipeline.predict_sample_without_blocking(
                sample, skip_input_padding=True, skip_output_cropping=True
            )
        probs = out.members["probabilities"].data.to_numpy()[0]
        np.testing.assert_allclose(probs, expected, atol=1e-5, rtol=0, err_msg=weights)
    for blocks in (None, 2):  # whole, and blocks of 52 px of which 12 px are kept
        out = bioimageio_core.predict(
            model=descr, inputs=image[None, None], blocksize_parameter=blocks
        )
        probs = out.members["probabilities"].data.to_numpy()[0]
        np.testing.assert_allclose(probs, expected, atol=1e-5, rtol=0, err_msg=str(blocks))


def consumer_tiles(net: UNetProbabilities, image: np.ndarray, tile: int) -> np.ndarray:
    """What a tool does with the package: pad the image by the halo (reflect), run tiles of
    ``tile`` px overlapping by two halos, keep each tile's output less the halo."""
    _, _, halo = package_geometry(net)
    inner = tile - 2 * halo
    out = np.zeros((2, *image.shape), np.float32)
    with torch.inference_mode():
        for y in range(0, image.shape[0], inner):
            for x in range(0, image.shape[1], inner):
                start, stop = (y - halo, x - halo), (y - halo + tile, x - halo + tile)
                probs = net(torch.from_numpy(read_mirrored(image, start, stop))[None, None])
                keep = out[:, y : y + inner, x : x + inner]
                keep[:] = probs[0, :, halo:, halo:][:, : keep.shape[1], : keep.shape[2]]
    return out


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_package_geometry_tiles_agree_with_one_pass(depth: int, padding: str) -> None:
    """Tiles of the series keep their size through the packaged network, and tiles cropped by
    the halo agree with one pass over the whole padded image; for a valid net that pass is
    unetpipe's own prediction. (A kept pixel that saw the network's own padding, or tiles off
    the pooling grid, would break both.)"""
    torch.manual_seed(depth)
    net = UNetProbabilities(depth=depth, padding=padding, base_channels=1).eval()
    minimum, step, halo = package_geometry(net)
    assert step == 2 ** (depth - 1) and halo % step == 0 and minimum == 2 * halo + step
    image = np.random.default_rng(depth).normal(size=(5 * step + 3, 4 * step + 1))
    image = image.astype(np.float32)
    whole = [math.ceil((n + 2 * halo) / step) * step for n in image.shape]
    with torch.inference_mode():
        region = read_mirrored(image, (-halo, -halo), [w - halo for w in whole])
        one_pass = net(torch.from_numpy(region)[None, None])[0].numpy()
    assert one_pass.shape[1:] == tuple(whole)
    one_pass = one_pass[:, halo : halo + image.shape[0], halo : halo + image.shape[1]]
    for tile in (minimum, minimum + step):
        np.testing.assert_allclose(consumer_tiles(net, image, tile), one_pass, atol=2e-6)
    if padding == "valid":
        model = UNet(depth=depth, base_channels=1).eval()
        model.load_state_dict(net.state_dict())
        np.testing.assert_allclose(one_pass, predict_image(model, image), atol=2e-6)


def test_package_name_keeps_only_allowed_characters() -> None:
    assert package_name("isbi/2012", "run.1") == "U-Net isbi-2012 run-1"


def test_bad_run_dirs_fail_with_one_clear_error(tmp_path: Path, run: Path) -> None:
    output = tmp_path / "out.zip"
    with pytest.raises(FileNotFoundError, match="model.pt not found"):
        export_bioimageio(tmp_path, output)
    save_model(tmp_path / "model.pt", UNet(depth=2, base_channels=2))
    with pytest.raises(ValueError, match="no normalization metadata"):
        export_bioimageio(tmp_path, output)
    norm = {"mean": 0.0, "std": 1.0}
    save_model(tmp_path / "model.pt", UNet(in_channels=2, depth=2), normalization=norm)
    with pytest.raises(ValueError, match="1 input channel"):
        export_bioimageio(tmp_path, output)
    with pytest.raises(ValueError, match=r"\.zip"):
        export_bioimageio(run, tmp_path / "out.tar")
    with pytest.raises(ValueError, match="names its authors: set export.authors"):
        export_bioimageio(run, output)  # none given: bioimageio.core would only warn
    anisotropic = UNet(depth=2, base_channels=2, dims=3, pool=[[1, 2, 2]])
    save_model(tmp_path / "model.pt", anisotropic, normalization=norm)
    with pytest.raises(ValueError, match="one context for all axes"):
        export_bioimageio(tmp_path, output, {"authors": [{"name": "A"}]})
    with pytest.raises(ValueError, match="context per axis"):
        UNetProbabilities(**anisotropic.config)
    assert main(["export", str(tmp_path), "--bioimageio", str(output)]) == 1
    assert not output.exists()


def test_cli_and_rule_export_alike(tmp_path: Path, run: Path) -> None:
    """``unetpipe export`` and rule export_bioimageio (its script) run one stage: packages of
    the same files for the same export section."""
    given = {"bioimageio": True, "name": "U-Net doors", "license": "MIT", "tags": ["demo"]}
    given["authors"] = [{"name": "A. Tester"}, {"name": "B. Tester"}]
    rule, cli = (tmp_path / door / "r1.bioimageio.zip" for door in ("rule", "cli"))
    run_rule_script(
        "export",
        load_config({"export": given}),
        tmp_path,
        input={"model": run / "model.pt", "group": run.parent / "data.zarr" / "zarr.json"},
        output=[str(rule)],
    )
    args = ["export", str(run), "--bioimageio", str(cli), "--name", "U-Net doors"]
    args += ["--license", "MIT", "--tag", "demo", "--author", "A. Tester", "--author", "B. Tester"]
    assert main(args) == 0
    ours, theirs = (
        {info.filename: package.read(info) for info in package.infolist()}
        for package in map(zipfile.ZipFile, (cli, rule))
    )
    # TorchScript mangles the names of classes scripted twice in one process and stamps each file
    # with a random id: the scripted networks' weights compare, and the rest of the files.
    scripted = [
        torch.jit.load(io.BytesIO(files.pop("weights.torchscript.pt"))) for files in (ours, theirs)
    ]
    rdf = [yaml.safe_load(files.pop("rdf.yaml")) for files in (ours, theirs)]
    for description in rdf:
        del description["weights"]["torchscript"]["sha256"]
    assert ours == theirs and rdf[0] == rdf[1] and rdf[1]["license"] == "MIT"
    for name, value in scripted[1].state_dict().items():
        assert torch.equal(scripted[0].state_dict()[name], value), name


def test_a_failed_model_test_leaves_nothing(tmp_path: Path, run: Path, monkeypatch) -> None:
    failed = {"status": "failed", "checks": [{"name": "reproduce", "status": "failed"}]}
    monkeypatch.setattr("unetpipe.bioimageio.model_test", lambda package: failed)
    with pytest.raises(RuntimeError, match="model test failed"):
        export_bioimageio(run, tmp_path / "out.zip", {"authors": [{"name": "A. Tester"}]})
    assert list(tmp_path.iterdir()) == []
