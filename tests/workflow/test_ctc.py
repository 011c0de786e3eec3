"""The paper's second experiment (Table 2) end to end: config/ctc-phc-u373.yaml, shrunk to a tiny
net and a few dozen steps, downloads a small archive in the real Cell Tracking Challenge layout from
a local HTTP server, trains on the man_seg frames and reports IoU and SEG per sequence."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile

import numpy as np
import tifffile
import yaml
from scipy import ndimage

from unetpipe.synthetic import synthetic_stack

from .conftest import REPO, check, snakemake

CONFIG = REPO / "config" / "ctc-phc-u373.yaml"
ROOT = "PhC-C2DH-U373"
FRAMES = 6  # per sequence, 96 x 96 px
ANNOTATED = {"01": [0, 2, 4], "02": [1, 3, 5]}  # frames with man_seg: slices 0-2 and 3-5
VAL_SLICES = [2, 5]  # the last annotated frame of each sequence


def _tiff(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, photometric="minisblack")
    return buffer.getvalue()


def sequence(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Phase-contrast-like frames: a third of the synthetic tessellation's cells, bright islands on
    a dark background (textured by the synthetic image), blurred and noisy; uint16 instances."""
    raw, cells = synthetic_stack((FRAMES, 96, 96), cell_size=28.0, seed=seed)
    masks = np.where(cells % 3 == 0, cells, 0).astype(np.uint16)
    rng = np.random.default_rng(seed)
    image = np.where(masks > 0, 120.0 + 0.5 * raw, 50.0)
    image = ndimage.gaussian_filter(image, (0, 1, 1)) + rng.normal(0, 12, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), masks


def ctc_archive() -> tuple[bytes, np.ndarray]:
    """The zip (sequences 01 and 02: ``<seq>/tNNN.tif``, ``<seq>_GT/SEG/man_segNNN.tif`` for the
    annotated frames) and the man_seg masks in slice order."""
    buffer, masks = io.BytesIO(), []
    with zipfile.ZipFile(buffer, "w") as zf:
        for seed, (seq, annotated) in enumerate(ANNOTATED.items()):
            frames, labels = sequence(seed)
            for t in range(FRAMES):
                zf.writestr(f"{ROOT}/{seq}/t{t:03d}.tif", _tiff(frames[t]))
            for t in annotated:
                zf.writestr(f"{ROOT}/{seq}_GT/SEG/man_seg{t:03d}.tif", _tiff(labels[t]))
                masks.append(labels[t])
    return buffer.getvalue(), np.stack(masks)


def test_ctc_u373_end_to_end(server, tmp_path):
    archive, masks = ctc_archive()
    server.files[f"/{ROOT}.zip"] = archive
    config = yaml.safe_load(CONFIG.read_text())
    config["dataset"].update(
        url=f"{server.url}/{ROOT}.zip",
        sha256=hashlib.sha256(archive).hexdigest(),
        val_slices=VAL_SLICES,
    )
    config["augment"].update(tile=108)  # 108 -> 68 px at depth 3
    config["model"].update(depth=3, base_channels=8, dropout=0.0)
    config["train"].update(
        optimizer="adam",
        lr=0.003,
        warmup=0,
        iterations=60,
        val_every=60,
        checkpoint_every=60,
        device="cpu",
        precision="float32",
        workers=0,
    )
    config["segment"].update(min_size=16)
    # one torch thread per job: two on 2 shared cores spin against each other
    config["resources"] = {"train": {"threads": 1}, "predict": {"threads": 1}}
    configfile = tmp_path / "ctc.yaml"
    configfile.write_text(yaml.safe_dump(config, sort_keys=False))
    workdir = tmp_path / "work"
    workdir.mkdir()
    check(snakemake(workdir, "--cores", "2", configfile=configfile, timeout=240))

    run = workdir / "results" / config["dataset"]["name"] / config["run"]
    report = json.loads((run / "metrics.json").read_text())
    sequences = report["results"]["val"]["sequences"]
    assert sorted(sequences) == ["01", "02"]
    for k, (seq, entry) in enumerate(sorted(sequences.items())):
        assert entry["frames"] == [ANNOTATED[seq][-1]]
        assert entry["paper_iou"] == 0.9203
        unet, truth = entry["unet"], masks[VAL_SLICES[k]]
        assert 0.0 <= unet["seg"] <= 1.0 and unet["instances"] > 0
        # above both trivial predictions: all background (IoU 0) and all foreground
        assert np.count_nonzero(truth) / truth.size < unet["iou"] <= 1.0
    assert [p.name for p in (workdir / "resources" / "phc-c2dh-u373").iterdir()] == [
        "phc-c2dh-u373.zip"
    ]
    summary = (run / "report" / "summary.txt").read_text()
    assert "0.9203" in summary and f"{sequences['02']['unet']['seg']:.4f}" in summary
