"""Quality of bfloat16 inference, measured: a float32-trained network predicted in bfloat16 and in
float32 on held-out slices; the largest difference of the probabilities and the change of the
scores (V_rand of the ISBI protocol, thinned, best threshold; mean slice V_rand; SEG of the cells
= 4-connected components of p > 0.5).

Data: the real ISBI 2012 slices (``--data``, default ../shared/data/isbi2012), training slices
0-24, held-out slices 25-29, Eq. 2 weights with the schema's defaults. Network: the CPU recipe's
(config/isbi2012-cpu.yaml: depth 5, base 16, 572 tiles, Adam, lr 0.001, poly), trained in float32
for ``--iterations`` steps (the recipe trains 2500; fewer give a weaker but float32-trained net,
which is what is compared).

    python benchmarks/bench_precision_quality.py                    # ~300 steps: minutes
    python benchmarks/bench_precision_quality.py --iterations 100
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from unetpipe import metrics
from unetpipe.config import load_config
from unetpipe.datasets import convert
from unetpipe.intensity import normalize
from unetpipe.io import open_data
from unetpipe.model import load_model
from unetpipe.predict import predict_image
from unetpipe.train import CELL_THRESHOLD, train
from unetpipe.weightmaps import write_weights

ROOT = Path(__file__).resolve().parents[1]
THRESHOLDS = [round(t, 2) for t in np.arange(0.05, 1.0, 0.05)]


def scores(prob: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """V_rand (ISBI protocol, thinned), mean slice V_rand (each at its best threshold), SEG of
    the p > 0.5 components."""
    seg = [
        metrics.seg_score(metrics.components(p > CELL_THRESHOLD)[0], t)
        for p, t in zip(prob, truth, strict=True)
    ]
    return {
        "v_rand": metrics.isbi_scores(prob, truth, THRESHOLDS, True)["v_rand"],
        "slice_v_rand": metrics.slice_v_rand(prob, truth, THRESHOLDS)[0],
        "seg": float(np.mean(seg)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT / ".." / "shared" / "data" / "isbi2012"))
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--model", help="a float32-trained model.pt to use (else trained here, kept in --keep)"
    )
    parser.add_argument("--keep", help="folder to keep the trained model in")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(ROOT / "config" / "isbi2012-cpu.yaml")
    val = [25, 26, 27, 28, 29]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data.zarr"
        convert(args.data, data, "isbi2012", val_slices=val)
        write_weights(data, config["weights"], threads=args.threads)
        cfg = {**config["train"], "iterations": args.iterations, "val_every": args.iterations}
        cfg |= {"precision": "float32", "workers": 1, "checkpoint_every": args.iterations}
        started = time.perf_counter()
        if args.model:
            model_path = Path(args.model)
        else:
            run = Path(args.keep) if args.keep else Path(tmp) / "run"
            model_path = train(data, run, cfg, config["model"], config["augment"])
        model, metadata = load_model(model_path)
        print(
            f"{model_path}: trained in {metadata.get('precision', 'float32')}, "
            f"{metadata['iteration']} steps, {model.config}, tile {metadata['tile']} "
            f"({time.perf_counter() - started:.0f} s)"
        )
        group = open_data(data)
        images = [normalize(group["raw"][z], metadata["normalization"]) for z in val]
        truth = np.stack([np.asarray(group["labels"][z]) for z in val])
        probs, results = {}, {}
        for precision in ("float32", "bfloat16"):
            started = time.perf_counter()
            probs[precision] = np.stack(
                [predict_image(model, image, precision=precision)[1] for image in images]
            )
            seconds = time.perf_counter() - started
            results[precision] = scores(probs[precision], truth)
            print(f"{precision:9s} predicted slices {val} in {seconds:.1f} s: {results[precision]}")
        diff = np.abs(probs["bfloat16"] - probs["float32"])
        flips = np.mean((probs["bfloat16"] > 0.5) != (probs["float32"] > 0.5))
        print(
            f"max |p_bf16 - p_f32| = {diff.max():.4f}, mean {diff.mean():.2e}, "
            f"99.9th percentile {np.quantile(diff, 0.999):.4f}; pixels whose p > 0.5 flips: "
            f"{flips:.2e}"
        )
        for key in results["float32"]:
            change = results["bfloat16"][key] - results["float32"][key]
            print(
                f"{key:13s} float32 {results['float32'][key]:.4f}  bfloat16 "
                f"{results['bfloat16'][key]:.4f}  change {change:+.4f}  (goal |change| <= 0.005)"
            )


if __name__ == "__main__":
    main()
