"""A trained U-Net as a bioimage.io model package (model description format 0.5).

The bioimage.io package is how the field exchanges trained networks; ilastik, deepImageJ (Fiji),
QuPath, BiaPy and napari plugins run it. The package of a run holds

* the weights twice: a PyTorch state dict with the network's source (``unetpipe/model.py``, which
  imports only torch; :class:`unetpipe.model.UNetProbabilities` with the model config as kwargs),
  and TorchScript traced from it;
* the normalisation with the training slices' mean and std as ``fixed_zero_mean_unit_variance``
  preprocessing (global statistics, never per tile: :mod:`unetpipe.intensity`);
* the class probabilities p_k(x) of Eq. 1 (the soft-max is in the network) as the output;
* the overlap-tile rules of Fig. 2 (:mod:`unetpipe.tiling`) in the spec's terms: input extents
  ``min + n * step`` (:func:`package_geometry`) and an output of the input's size whose ``halo``
  border is to be cropped;
* a test input and the expected output made by running the model (also as TIFF samples), a cover
  image, and a README with the training data, the scores of ``metrics.json`` and the citation.

Why a same-size network with a halo rather than the valid network with its output ``2 * halo``
smaller (the spec's size-reference ``offset``): consumers tile with the ``halo`` only. Neither
``bioimageio.core``'s blockwise prediction (it fails on a negative offset) nor JDLL, the library
under deepImageJ (it does not read 0.5 offsets), tiles a model whose output shrinks. So the packaged
network mirror-pads each tile by the context the valid convolutions consume, and the declared halo
(that context, rounded up so that tiles start on the pooling grid) is cropped by the consumer:
tiles then agree with one pass over the whole image, and with unetpipe's own prediction.

The package is checked before it is kept: ``bioimageio.core``'s model test loads it, runs the test
input through both weight formats, compares with the expected output and runs other valid sizes.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import re
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch
import zarr
from PIL import Image

import unetpipe
from unetpipe import model as model_module
from unetpipe.config import defaults
from unetpipe.datasets import REGISTRY
from unetpipe.evaluate import format_table
from unetpipe.intensity import normalize
from unetpipe.io import atomic_path, open_data, sha256sum, writes_output
from unetpipe.model import UNet, UNetProbabilities, load_model, same_on_every_axis
from unetpipe.precision import torch_threads
from unetpipe.sections import ExportConfig
from unetpipe.tiling import Geometry, read_mirrored

log = logging.getLogger(__name__)

EXPORT_DEFAULTS: dict[str, Any] = defaults("export")
"""The ``export`` config section's defaults (from the schema)."""
CITATION = (
    "Ronneberger, O., Fischer, P., Brox, T.: U-Net: Convolutional Networks for Biomedical Image "
    "Segmentation. MICCAI 2015, LNCS 9351, pp. 234-241 (arXiv:1505.04597)"
)
PAPER_DOI = "10.1007/978-3-319-24574-4_28"
# Which tools run a bioimage.io model package, and with which of its weights (from their
# documentation and source; only bioimageio.core is run here).
TOOLS = [
    ("bioimageio.core (Python; `bioimageio test`, `bioimageio predict`)", "both"),
    ("ilastik (Neural Network Classification workflow; tiktorch, bioimageio.core)", "both"),
    ("deepImageJ (Fiji, through JDLL)", "torchscript (Java runs no state dicts)"),
    ("QuPath (Bioimage Model Zoo + Deep Java Library extensions; 2D only)", "torchscript"),
    ("BiaPy (inference, fine-tuning)", "pytorch_state_dict (older versions: torchscript)"),
    ("napari (napari-bioimageio model manager, runs with bioimageio.core)", "both"),
]


def _import_bioimageio() -> None:
    try:
        import bioimageio.core  # noqa: F401
        import bioimageio.spec  # noqa: F401
    except ImportError as err:
        raise RuntimeError(
            "a bioimage.io export needs bioimageio.core: pip install 'unetpipe[bioimageio]'"
        ) from err


def package_geometry(net: UNetProbabilities) -> tuple[int, int, int]:
    """``(minimum, step, halo)`` of the packaged network: input extents ``minimum + n * step``
    (``step = align = 2**(depth - 1)``), outputs of the same size with ``halo`` px per side to
    crop.

    A kept output pixel must not see the network's own mirror padding: it needs the geometry's
    halo of real context in front, and ``net.extra`` px more behind (a tile's outputs end
    ``extra`` px past the pooling grid, the overhang of :class:`unetpipe.tiling.AxisPlan`). The
    halo is that, rounded up to a multiple of ``align``, and the smallest tile ``2 * halo +
    align``. Consumers pad an image by the halo and step tiles by their size minus both halos, so
    tiles start on multiples of ``align``: each sees unetpipe's pooling grid, and tiles agree
    with one whole pass.
    """
    geometry = Geometry.of(net).axes[0]  # the same on every axis (UNetProbabilities)
    step = geometry.align
    halo = math.ceil((geometry.halo + net.extra) / step) * step
    return 2 * halo + step, step, halo


@writes_output("output", "data")
def export_bioimageio(
    run_dir: str | Path,
    output: str | Path,
    cfg: ExportConfig | Mapping[str, Any] | None = None,
    *,
    data: str | Path | None = None,
    threads: int | None = None,
    overwrite: bool = True,
) -> dict[str, Any]:
    """Write ``output`` (a .zip), the bioimage.io package of the run's ``model.pt``, and test it.

    ``cfg`` is the config section ``export`` (name, description, authors, license, tags).
    ``data`` is the dataset's Zarr group (default: ``data.zarr`` beside the run folder, when
    present): it gives the test input (the first validation slice) and the README's training
    data; without it the test input is seeded noise with the training statistics. The cover is
    the run's first report overlay when there is one. Nothing is left at ``output`` unless
    ``bioimageio.core``'s model test passed. Returns the test's status and checks
    (:func:`model_test`).
    """
    params = ExportConfig.from_mapping(cfg)
    run_dir, output = Path(run_dir), Path(output)
    if output.suffix != ".zip":
        raise ValueError(f"{output}: a bioimage.io package is a .zip file; name it <name>.zip")
    model_path = run_dir / "model.pt"
    if not model_path.is_file():
        raise FileNotFoundError(
            f"{model_path} not found: give a run folder results/<dataset>/<run> whose train "
            "rule has finished"
        )
    model, metadata = load_model(model_path)
    if "normalization" not in metadata:
        raise ValueError(f"{model_path} has no normalization metadata (mean/std); re-export it")
    if model.config["in_channels"] != 1:
        raise ValueError(f"{model_path}: only grey-value (1 input channel) networks are exported")
    if not params.authors:
        raise ValueError(
            f"{output}: a bioimage.io package names its authors: set export.authors (e.g. "
            "[{name: Jane Doe}]) or pass --author NAME"
        )
    if "offsets" in model.config:
        raise ValueError(
            f"{model_path} predicts affinities: its bioimage.io package is not built yet; set "
            "export.bioimageio false"
        )
    if not same_on_every_axis(model.config):
        raise ValueError(
            f"{model_path} pools or convolves its axes differently (model.pool, model.kernel): "
            "a bioimage.io package carries one context for all axes; set export.bioimageio false"
        )
    _import_bioimageio()
    from bioimageio.spec import save_bioimageio_package

    if data is None and (run_dir.parent / "data.zarr" / "zarr.json").is_file():
        data = run_dir.parent / "data.zarr"
    group = open_data(data) if data is not None else None
    output.parent.mkdir(parents=True, exist_ok=True)
    with (
        torch_threads(threads),
        tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}.") as tmp,
    ):
        folder = Path(tmp)
        descr = _describe(folder, model_path, model, metadata, group, params)
        package = save_bioimageio_package(descr, output_path=folder / output.name)
        result = model_test(package)
        if result["status"] != "passed":
            failed = [c for c in result["checks"] if c["status"] == "failed"]
            raise RuntimeError(f"{output}: the bioimage.io model test failed: {failed}")
        with atomic_path(output) as final:
            Path(package).rename(final)
    log.info("wrote %s (bioimage.io model test passed)", output)
    return result


def model_test(package: str | Path) -> dict[str, Any]:
    """``bioimageio.core``'s model test of a package, on CPU: format validation, the test input
    reproducing the test output with each weight format, and inference at other valid sizes and
    batch sizes. Returns ``{"status": ..., "checks": [{"name", "status", "errors"}, ...]}``."""
    _import_bioimageio()
    from bioimageio.core import test_model

    summary = test_model(str(package), devices=["cpu"])
    checks = [
        {
            "name": detail.name,
            "status": detail.status,
            "errors": [f"{'.'.join(map(str, e.loc))}: {e.msg}" for e in detail.errors],
        }
        for detail in summary.details
    ]
    for check in checks:
        log.info("bioimage.io test: %s  %s", check["status"], check["name"])
        for error in check["errors"]:
            log.error("  %s", error)
    return {"status": summary.status, "checks": checks}


def package_name(dataset: str, run: str) -> str:
    """A model name the spec accepts: letters, digits, ``_+- ()``, 5 to 128 characters."""
    return re.sub(r"[^A-Za-z0-9_+\- ()]", "-", f"U-Net {dataset} {run}")[:128]


def _describe(
    folder: Path,
    model_path: Path,
    model: UNet,
    metadata: dict[str, Any],
    group: zarr.Group | None,
    params: ExportConfig,
) -> Any:
    """Write the package's files into ``folder``; return their model description (spec 0.5)."""
    from bioimageio.spec.model import v0_5

    config, run_dir, norm = model.config, model_path.parent, metadata["normalization"]
    net = _packaged_net(model)
    minimum, step, halo = package_geometry(net)
    attrs = dict(group.attrs) if group is not None else {}
    dataset = str(attrs.get("dataset", run_dir.parent.name))
    name = params.name or package_name(dataset, run_dir.name)
    space = ["z", "y", "x"][3 - config["dims"] :]

    tile = _test_tile(metadata, minimum, step)
    raw = _test_image(group, norm, config["dims"], tile)
    probs, traced = _run_and_trace(net, torch.from_numpy(normalize(raw, norm))[None, None])
    _write_test_tensors(folder, raw, probs)
    _write_weights(folder, model, traced)
    _cover(folder / "cover.png", run_dir, raw, probs[0], halo)
    (folder / "README.md").write_text(
        _readme(name, model_path, net, metadata, group, params, dataset, tile)
    )

    stamp = datetime.datetime.fromtimestamp(model_path.stat().st_mtime, datetime.timezone.utc)
    return v0_5.ModelDescr(
        name=name,
        description=params.description or _description(dataset, minimum, step, halo),
        authors=[v0_5.Author(**author) for author in params.authors],
        cite=[v0_5.CiteEntry(text=CITATION, doi=v0_5.Doi(PAPER_DOI))],
        license=v0_5.LicenseId(params.license),
        tags=_tags(config, attrs, dataset, params),
        documentation=v0_5.FileDescr(source=folder / "README.md"),
        covers=[v0_5.FileDescr(source=folder / "cover.png")],
        inputs=[_input(folder, space, minimum, step, norm)],
        outputs=[_output(folder, space, halo, config["n_classes"])],
        weights=_weights(folder, config),
        timestamp=v0_5.Datetime(stamp),
        config=_config(model_path, net, metadata),
    )


def _packaged_net(model: UNet) -> UNetProbabilities:
    """The same-size network of the package (Fig. 2's mirroring inside), with the run's weights."""
    net = UNetProbabilities(**model.config).eval()
    net.load_state_dict(model.state_dict())
    return net


def _test_tile(metadata: dict[str, Any], minimum: int, step: int) -> int:
    """The test tensors' extent: the training tile's (else ``minimum + 64``), rounded up into the
    series ``minimum + n * step``."""
    wanted = int(metadata.get("tile") or minimum + 64)
    return minimum + step * math.ceil(max(wanted - minimum, 0) / step)


def _run_and_trace(net: UNetProbabilities, x: torch.Tensor) -> tuple[np.ndarray, Any]:
    """The network's output for the test input ``x``, and the network traced on it."""
    with torch.inference_mode(), warnings.catch_warnings():
        # TorchScript is deprecated in torch 2, yet it is what the Java tools (deepImageJ, QuPath)
        # run; tracing records the sizes symbolically, so the trace serves every valid tile.
        warnings.simplefilter("ignore", DeprecationWarning)
        probs = net(x).numpy()
        traced = torch.jit.trace(net, x)
    return probs, traced


def _write_test_tensors(folder: Path, raw: np.ndarray, probs: np.ndarray) -> None:
    """The test input and output (.npy), and the same as TIFF samples for people and viewers."""
    np.save(folder / "test_input.npy", raw[None, None])
    np.save(folder / "test_output.npy", probs)
    tifffile.imwrite(folder / "sample_input.tif", raw)
    tifffile.imwrite(folder / "sample_output.tif", probs[0])


def _write_weights(folder: Path, model: UNet, traced: Any) -> None:
    """Both weight formats: TorchScript, and the state dict with the network's source."""
    traced.save(str(folder / "weights.torchscript.pt"))
    torch.save(model.state_dict(), folder / "weights.pt")
    shutil.copyfile(model_module.__file__, folder / "unet.py")


def _description(dataset: str, minimum: int, step: int, halo: int) -> str:
    """The package's description when ``export.description`` gives none."""
    return (
        f"U-Net (Ronneberger et al. 2015) trained with unetpipe on {dataset}: per-pixel "
        "class probabilities (background/membrane, cell) of grey-value images. Tiles of "
        f"{minimum} + {step}n px per axis; crop {halo} px of each output tile's border."
    )


def _tags(
    config: dict[str, Any], attrs: dict[str, Any], dataset: str, params: ExportConfig
) -> list[str]:
    """unetpipe's tags, the registry dataset's and ``export.tags``, each once, in that order."""
    tags = ["unet", f"{config['dims']}d", "pytorch", "semantic-segmentation", "unetpipe"]
    registered = REGISTRY.get(_registry_name(attrs, dataset))
    tags += [*(registered.tags if registered else ()), *params.tags]
    return list(dict.fromkeys(tags))


def _input(folder: Path, space: list[str], minimum: int, step: int, norm: dict[str, float]) -> Any:
    """The input tensor ``raw``: extents ``minimum + n * step``, reflect padding, the training
    slices' normalisation as preprocessing."""
    from bioimageio.spec.model import v0_5

    return v0_5.InputTensorDescr(
        id=v0_5.TensorId("raw"),
        description="grey values as acquired (normalised by the preprocessing)",
        axes=[
            v0_5.BatchAxis(),
            v0_5.ChannelAxis(channel_names=[v0_5.Identifier("raw")]),
            *(
                v0_5.SpaceInputAxis(
                    id=v0_5.AxisId(axis),
                    size=v0_5.ParameterizedSize(min=minimum, step=step),
                    concatenable=True,
                )
                for axis in space
            ),
        ],
        test_tensor=v0_5.FileDescr(source=folder / "test_input.npy"),
        sample_tensor=v0_5.FileDescr(source=folder / "sample_input.tif"),
        data=v0_5.IntervalOrRatioDataDescr(type="float32"),
        # numpy's reflect, as unetpipe mirrors (an explicit mode: a default one is left out of
        # rdf.yaml and read back as constant padding)
        pad=v0_5.ReflectPadding(mode="reflect"),
        preprocessing=[
            v0_5.FixedZeroMeanUnitVarianceDescr(
                kwargs=v0_5.FixedZeroMeanUnitVarianceKwargs(
                    mean=float(norm["mean"]), std=float(norm["std"])
                )
            )
        ],
    )


def _output(folder: Path, space: list[str], halo: int, n_classes: int) -> Any:
    """The output tensor ``probabilities``: the input's size, ``halo`` px per side to crop."""
    from bioimageio.spec.model import v0_5

    names = ["background", "cell"] if n_classes == 2 else [f"class{i}" for i in range(n_classes)]
    return v0_5.OutputTensorDescr(
        id=v0_5.TensorId("probabilities"),
        description="class probabilities (soft-max over channels); channel 1 = cell",
        axes=[
            v0_5.BatchAxis(),
            v0_5.ChannelAxis(channel_names=[v0_5.Identifier(c) for c in names]),
            *(
                v0_5.SpaceOutputAxisWithHalo(
                    id=v0_5.AxisId(axis),
                    halo=halo,
                    size=v0_5.SizeReference(
                        tensor_id=v0_5.TensorId("raw"), axis_id=v0_5.AxisId(axis)
                    ),
                )
                for axis in space
            ),
        ],
        test_tensor=v0_5.FileDescr(source=folder / "test_output.npy"),
        sample_tensor=v0_5.FileDescr(source=folder / "sample_output.tif"),
        data=v0_5.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
    )


def _weights(folder: Path, config: dict[str, Any]) -> Any:
    """The weights entries: the state dict with its architecture, and TorchScript traced from it."""
    from bioimageio.spec.model import v0_5

    pytorch_version = v0_5.Version(torch.__version__.split("+")[0])
    return v0_5.WeightsDescr(
        pytorch_state_dict=v0_5.PytorchStateDictWeightsDescr(
            source=folder / "weights.pt",
            architecture=v0_5.ArchitectureFromFileDescr(
                source=folder / "unet.py", callable="UNetProbabilities", kwargs=dict(config)
            ),
            pytorch_version=pytorch_version,
        ),
        torchscript=v0_5.TorchscriptWeightsDescr(
            source=folder / "weights.torchscript.pt",
            pytorch_version=pytorch_version,
            parent="pytorch_state_dict",
        ),
    )


def _config(model_path: Path, net: UNetProbabilities, metadata: dict[str, Any]) -> Any:
    """The description's config: bioimage.io's architecture fields and unetpipe's provenance."""
    from bioimageio.spec.model import v0_5

    config = net.config
    return v0_5.Config(
        bioimageio=v0_5.BioimageioConfig(
            architecture_type="U-Net",
            architecture_description=(
                f"{config['dims']}D U-Net, depth {config['depth']}, "
                f"{config['base_channels']} base channels, {config['padding']} convolutions"
            ),
            task="semantic segmentation",
        ),
        unetpipe={
            "version": unetpipe.__version__,
            "model_sha256": sha256sum(model_path),
            "model_config": dict(config),
            "metadata": metadata,
            "context": net.context,
            "mirror": "reflect",
        },
    )


def _registry_name(attrs: dict[str, Any], dataset: str) -> str:
    """The registry dataset a group came from (the registry URL it records), else its name."""
    url = (attrs.get("source") or {}).get("url")
    return next((name for name, entry in REGISTRY.items() if url and entry.url == url), dataset)


def _test_image(
    group: zarr.Group | None, norm: dict[str, float], dims: int, tile: int
) -> np.ndarray:
    """A ``tile``-sized region of raw grey values (float32) at the origin of the first validation
    slice (mirrored where the slice is smaller), or of the volume for a 3D net; without a data
    group, seeded Gaussian noise with the training mean and std."""
    if group is None or "raw" not in group:
        rng = np.random.default_rng(0)
        return rng.normal(norm["mean"], norm["std"], (tile,) * dims).astype(np.float32)
    raw = group["raw"]
    if dims == 3:
        return read_mirrored(raw, (0, 0, 0), (tile,) * 3).astype(np.float32)
    z = int(((group.attrs.get("splits") or {}).get("val") or [0])[0])
    return read_mirrored(raw, (z, 0, 0), (z + 1, tile, tile))[0].astype(np.float32)


def _cover(path: Path, run_dir: Path, raw: np.ndarray, probs: np.ndarray, halo: int) -> None:
    """The cover: the run's first report overlay, else test input | cell probability (2:1)."""
    overlays = sorted((run_dir / "report").glob("overlay_*.png"))
    if overlays:
        with Image.open(overlays[0]) as image:
            cover = image.convert("RGB")
    else:
        if raw.ndim == 3:  # a 3D net: the middle plane
            raw, probs = raw[raw.shape[0] // 2], probs[:, probs.shape[1] // 2]
        inner = (slice(halo, raw.shape[0] - halo), slice(halo, raw.shape[1] - halo))
        shown = raw[inner]
        grey = (shown - shown.min()) / max(float(np.ptp(shown)), 1e-6)
        panels = np.concatenate([grey, probs[-1][inner]], axis=1)
        cover = Image.fromarray(np.rint(255 * panels).astype(np.uint8)).convert("RGB")
        scale = max(1, 256 // cover.height)
        cover = cover.resize((cover.width * scale, cover.height * scale), Image.NEAREST)
    cover.thumbnail((1024, 1024))
    cover.save(path, optimize=True)


def _readme(
    name: str,
    model_path: Path,
    net: UNetProbabilities,
    metadata: dict[str, Any],
    group: zarr.Group | None,
    params: ExportConfig,
    dataset: str,
    tile: int,
) -> str:
    """The package's documentation (markdown): model, training data, validation scores, how to
    run it and in which tools, citation."""
    lines = [
        f"# {name}",
        "",
        "The U-Net of Ronneberger, Fischer and Brox (2015, arXiv:1505.04597), trained with "
        f"unetpipe {unetpipe.__version__}.",
        "",
        "## Model",
        "",
        *_model(net, metadata["normalization"]),
        "",
        "## Training data",
        "",
        *_training_data(metadata, group, dataset, tile),
        "",
        "## Validation",
        "",
        *_scores(model_path.parent, metadata),
        "",
        "## How to run it",
        "",
        *_how_to_run(net),
        "",
        "## Citation",
        "",
        f"{CITATION}. doi:{PAPER_DOI}",
        "",
        "## Authors and license",
        "",
        *_provenance(params, model_path),
        "",
    ]
    return "\n".join(lines)


def _model(net: UNetProbabilities, norm: dict[str, float]) -> list[str]:
    """The README's model: architecture, input and its normalisation, output, tiles, weights."""
    config = net.config
    n_params = sum(p.numel() for p in net.parameters())
    axes = "batch, channel, z, y, x" if config["dims"] == 3 else "batch, channel, y, x"
    return [
        f"- {config['dims']}D U-Net, depth {config['depth']}, {config['base_channels']} channels "
        f"in the first level, {config['padding']} 3x3 convolutions, dropout {config['dropout']} "
        f"(off at inference); {n_params:,} parameters.",
        f"- Input `raw` ({axes}): grey values as acquired. Preprocessing "
        f"`fixed_zero_mean_unit_variance` with the training slices' mean {norm['mean']:.6g} and "
        f"std {norm['std']:.6g} (one normalisation for the dataset, never per tile).",
        "- Output `probabilities`: soft-max class probabilities; channel 0 background "
        "(membrane), channel 1 cell.",
        _tiles(net),
        "- Weights: `pytorch_state_dict` (architecture `unet.py`, unetpipe's model module, "
        "which imports only torch; Python >= 3.10) and `torchscript` (traced from it).",
    ]


def _tiles(net: UNetProbabilities) -> str:
    """The README's tiling rules (Fig. 2): the context, the tile series, the halo to crop."""
    geometry = Geometry.of(net).axes[0]  # the same on every axis (UNetProbabilities)
    minimum, step, halo = package_geometry(net)
    if geometry.padding == "valid":
        context = (
            f"The U-Net's valid convolutions consume {net.context} px of context per side "
            "(the paper's 572 -> 388 px tiles lose 92). The packaged network "
            f"(`UNetProbabilities`) mirror-pads each tile by {net.context} px in front and "
            f"{net.context + net.extra} px behind (numpy `reflect`, as unetpipe extrapolates "
            "past a border, Fig. 2) and returns probabilities at the tile's size."
        )
        same_as_unetpipe = (
            " With the declared mirroring (`pad: reflect`) that is unetpipe's own prediction, "
            "border included, as is one uncropped tile covering a whole image whose extents are "
            f"multiples of {step} px."
        )
    else:
        context = (
            f"Same-padded convolutions: the zero padding reaches {geometry.halo} px into the "
            "output of a tile."
        )
        same_as_unetpipe = ""
    return (
        f"- Tiles: {context} Tile extents are `{minimum} + {step} n` px per axis (every 2x2 "
        f"pooling sees an even size). Crop the `halo` of {halo} px from each side of an output "
        f"tile (it saw the padding), i.e. pad the image by {halo} px and overlap tiles by "
        f"{2 * halo} px: tiles then start on multiples of {step} px, see one pooling grid and "
        f"together equal one pass over the whole image.{same_as_unetpipe}"
    )


def _how_to_run(net: UNetProbabilities) -> list[str]:
    """The README's commands to test and run the package, and the tools that run it."""
    minimum, step, _ = package_geometry(net)
    return [
        "```",
        "pip install bioimageio.core torch",
        "bioimageio test PACKAGE.zip",
        "bioimageio predict PACKAGE.zip --inputs image.tif --outputs '{output_id}.tif' "
        "--blockwise true",
        "```",
        "",
        f"bioimageio.core (0.11) wants the image's extents in the tile series ({minimum} + "
        f"{step} n px): pad or crop other images first.",
        "",
        "Tools that run bioimage.io model packages, and the weights each uses (from their "
        "documentation; only bioimageio.core was run on this package):",
        "",
        "| tool | weights it runs |",
        "|---|---|",
        *(f"| {tool} | {weights} |" for tool, weights in TOOLS),
    ]


def _provenance(params: ExportConfig, model_path: Path) -> list[str]:
    """The README's authors, license, tags and the model file the package was made from."""
    return [
        f"- authors: {', '.join(a['name'] for a in params.authors)}",
        f"- license: {params.license}",
        f"- tags: {', '.join(params.tags) or '(automatic)'}",
        f"- made from `{model_path.name}`, sha256 `{sha256sum(model_path)}`",
    ]


def _training_data(
    metadata: dict[str, Any], group: zarr.Group | None, dataset: str, tile: int
) -> list[str]:
    """The README's training data: the data group's attributes and the model's metadata."""
    lines = [f"- dataset: `{dataset}`"]
    if group is None:
        lines.append("- (the dataset's Zarr group was not available when the package was made)")
    else:
        attrs = dict(group.attrs)
        lines.append(f"- source: `{json.dumps(attrs.get('source', {}), sort_keys=True)}`")
        if "raw" in group:
            shape = group["raw"].shape
            lines.append(f"- labelled images: {shape[0]} slices of {shape[1]} x {shape[2]} px")
        splits = attrs.get("splits") or {}
        if splits:
            lines.append(f"- training slices {splits.get('train')}, validation {splits.get('val')}")
        lines.append(f"- voxel size (z, y, x): {attrs.get('voxel_size')}")
    if "iteration" in metadata:
        lines.append(f"- weights of iteration {metadata['iteration']}")
    if "tile" in metadata:
        lines.append(f"- training tile {metadata['tile']} px (test tensor: {tile} px)")
    return lines


def _scores(run_dir: Path, metadata: dict[str, Any]) -> list[str]:
    """The run's metrics.json as unetpipe's table, else the validation scores of training."""
    path = run_dir / "metrics.json"
    if path.is_file():
        return [
            "Scores of unetpipe's evaluate rule (`metrics.json`): val = the held-out labelled "
            "slices; each measure at its best threshold, and at the one fixed on the training "
            "slices (t train).",
            "",
            "```",
            format_table(json.loads(path.read_text())["results"]),
            "```",
        ]
    scores = ", ".join(f"{k} {v:.4f}" for k, v in metadata.items() if k.startswith("val_"))
    return [f"No metrics.json in the run folder; validation during training: {scores or 'none'}."]
