"""Ablation of the paper's contributions on the real ISBI 2012 slices (issue 8).

Arms, each trained with the same recipe, budget and seeds (a workflow config, by default
config/isbi2012-cpu.yaml: base 16, depth 5, 572 tiles, Adam, 2500 steps):

    full               Eq. 2 border weights (w0, sigma of the config) + elastic deformation
    no_border_weights  class-balancing weights only (w0 = 0): the plain weighted cross-entropy
    no_elastic         flips, rotations, shifts and grey values, but no elastic deformation
    membrane_weight    (optional control) no border term, but class weights that give the
                       membranes the share of the loss weight Eq. 2 gives them here

Every trained net then predicts all 30 slices twice, plain and with test-time augmentation (the
mean over the 8 flips and rotations). Thresholds are fixed on the training slices 0-24 (see
``unetpipe.report.choose_thresholds``) and the validation slices 25-29 scored at them; the
challenge-style figures at the best threshold are given as well. The table gives the mean and the
sample standard deviation over seeds, and the figure each seed; ``weight_statistics`` says where
Eq. 2 puts its weight on these labels.

    python benchmarks/isbi_ablation.py          # 3 arms x 2 seeds x ~25 min on 2 cores
    python benchmarks/isbi_ablation.py --device cuda --jobs 6 --workers 2 --threads 1   # 1 H200
    python benchmarks/isbi_ablation.py --report # only the table and figure, from the scores
    python benchmarks/isbi_ablation.py --arms full --seeds 0 --iterations 20   # smoke run

On one H200 the second line takes 3.5 minutes (training 2 minutes, all six runs at once).

Everything lands in ``--out`` (default results/isbi2012/ablation): ``data/<weights>.zarr``, one
run folder per arm and seed (config.yaml, train.log, model.pt, predictions/,
scores_{plain,tta}.json), and ``ablation.md``, ``ablation.json``, ``ablation.png``. Finished
steps are skipped on a rerun.
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from unetpipe.config import load_config
from unetpipe.datasets import convert
from unetpipe.evaluate import evaluate_run
from unetpipe.io import open_data, read_splits
from unetpipe.predict import predict_zarr
from unetpipe.segment import segment_zarr
from unetpipe.weightmaps import write_weights

ARMS: dict[str, tuple[str, dict[str, Any]]] = {  # arm: (its data group, config overrides)
    "full": ("eq2", {}),
    "no_border_weights": ("balanced", {"weights": {"w0": 0.0}}),
    "no_elastic": ("eq2", {"augment": {"elastic": {"enabled": False}}}),
    # Not an ablation but a test of why Eq. 2 matters here: no border term, but class weights
    # giving the membranes (background) the share of the loss weight that Eq. 2 gives them on
    # the ISBI training labels (71% instead of 50%; see weight_statistics): 5.2 vs 0.61.
    "membrane_weight": (
        "membrane",
        {"weights": {"w0": 0.0, "class_weights": {0: 5.2, 1: 0.61}}},
    ),
}
DEFAULT_ARMS = ["full", "no_border_weights", "no_elastic"]
COLUMNS = [  # (scores key, label, lower is better)
    ("pixel_error", "pixel error (best t)", True),
    ("pixel_error_t_train", "pixel error (t train)", True),
    ("v_rand_t_train", "V_rand thinned (t train)", False),
    ("slice_v_rand", "slice V_rand (best t)", False),
    ("slice_v_rand_t_train", "slice V_rand (t train)", False),
]
TRAIN_CODE = "import sys; from unetpipe.cli import main; sys.exit(main())"


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` merged in, nested sections key by key."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        is_section = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merged(out[key], value) if is_section else copy.deepcopy(value)
    return out


def prepare_data(
    config: dict[str, Any], out: Path, local_dir: Path, arms: list[str], threads: int
) -> dict[str, Path]:
    """The Zarr group of each arm (raw, labels and the weights of its section), built once."""
    groups = {}
    for arm in arms:
        name, override = ARMS[arm]
        group = out / "data" / f"{name}.zarr"
        if not (group / "weights").exists():
            if not group.exists():
                ds = config["dataset"]
                convert(local_dir, group, ds["name"], ds["val_slices"], ds["voxel_size"])
            write_weights(group, merged(config, override)["weights"], threads=threads)
        groups[arm] = group
    return groups


def weight_statistics(eq2: Path, balanced: Path, w0: float, sigma: float) -> dict[str, float]:
    """Where Eq. 2 puts its weight on these labels: over the training slices' background
    (membrane) pixels, the border term w0 exp(-(d1 + d2)^2 / (2 sigma^2)) (the difference of the
    two weight maps) and the d1 + d2 it implies, and the background's share of the loss weight."""
    splits = read_splits(eq2)
    with_eq2, plain = open_data(eq2), open_data(balanced)
    labels = np.stack([np.asarray(with_eq2["labels"][z]) for z in splits["train"]])
    w_eq2 = np.stack([np.asarray(with_eq2["weights"][z]) for z in splits["train"]])
    w_plain = np.stack([np.asarray(plain["weights"][z]) for z in splits["train"]])
    background = labels == 0
    border = (w_eq2 - w_plain)[background]
    gap = sigma * np.sqrt(2 * np.log(w0 / np.clip(border, 1e-12, None)))
    return {
        "background_fraction": float(background.mean()),
        "border_term_median": float(np.median(border)),
        "border_term_above_1": float(np.mean(border > 1)),
        "d1_plus_d2_median_px": float(np.median(gap)),
        "d1_plus_d2_p10_px": float(np.percentile(gap, 10)),
        "d1_plus_d2_p90_px": float(np.percentile(gap, 90)),
        "d1_plus_d2_under_4px": float(np.mean(gap < 4)),  # the thin gaps Eq. 2 was made for
        "background_weight_share_balanced": float(w_plain[background].sum() / w_plain.sum()),
        "background_weight_share_eq2": float(w_eq2[background].sum() / w_eq2.sum()),
    }


def run_config(
    config: dict[str, Any], arm: str, seed: int, args: argparse.Namespace
) -> dict[str, Any]:
    """The workflow config of one arm and seed."""
    train = {"seed": seed, "device": args.device, "export": "last"}
    if args.iterations:
        train |= {"iterations": args.iterations, "val_every": args.iterations}
    if args.workers is not None:
        train["workers"] = args.workers
    return merged(config, merged(ARMS[arm][1], {"train": train, "run": f"{arm}_seed{seed}"}))


def train_runs(jobs: list[tuple[Path, Path]], parallel: int, threads: int) -> None:
    """Train each (group, run folder) in its own ``unetpipe train`` process, ``parallel`` at once;
    a run whose model.pt exists is skipped, a killed one resumes from its checkpoint."""
    pending = [(g, r) for g, r in jobs if not (r / "model.pt").is_file()]
    running: list[tuple[subprocess.Popen, Path]] = []
    while pending or running:
        while pending and len(running) < parallel:
            group, run = pending.pop(0)
            cmd = [sys.executable, "-c", TRAIN_CODE, "--log-file", str(run / "train.log")]
            cmd += ["train", str(group), str(run), "--config", str(run / "config.yaml")]
            cmd += ["--threads", str(threads)]
            print(f"training {run.name}", flush=True)
            running.append((subprocess.Popen(cmd, stderr=subprocess.DEVNULL), run))
        time.sleep(2)
        for proc, run in list(running):
            if proc.poll() is not None:
                running.remove((proc, run))
                if proc.returncode != 0:
                    raise RuntimeError(f"training {run} failed: see {run / 'train.log'}")
                print(f"trained {run.name}", flush=True)


def score_run(
    run: Path, group: Path, tta: bool, device: str, config: dict[str, Any]
) -> dict[str, Any]:
    """Predict all slices of ``raw`` (with or without test-time augmentation), segment them and
    evaluate them as the workflow does (``unetpipe.report.evaluate_run``: thresholds fixed on the
    training slices, validation slices scored); the validation u-net scores are cached in
    ``scores_{plain,tta}.json`` beside the whole ``metrics_{plain,tta}.json``."""
    name = "tta" if tta else "plain"
    path = run / f"scores_{name}.json"
    if path.is_file():
        return json.loads(path.read_text())
    pred_path = run / "predictions" / f"raw_{name}.zarr"
    if not pred_path.exists():
        predict_zarr(
            run / "model.pt", str(group / "raw"), pred_path, tta=tta, device=device, progress=False
        )
    seg_path = run / "segmentation" / f"raw_{name}.zarr"
    if not seg_path.exists():
        segment_zarr(pred_path, seg_path, config["segment"])
    metrics = evaluate_run(
        group,
        {"raw": pred_path},
        {"raw": seg_path},
        run / f"metrics_{name}.json",
        config["evaluate"],
    )
    chosen = metrics["thresholds_from_training"]
    scores = metrics["results"]["val"]["unet"]
    result = {"run": run.name, "tta": tta, "thresholds_from_training": chosen, **scores}
    path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def table(results: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """Markdown table (mean +- sample sd over seeds) and the same numbers as a dict."""
    summary: dict[str, Any] = {}
    lines = ["| arm | TTA | seeds | " + " | ".join(label for _, label, _ in COLUMNS) + " |"]
    lines.append("|" + "---|" * (3 + len(COLUMNS)))
    for arm in dict.fromkeys(r["arm"] for r in results):
        for tta in (False, True):
            rows = [r for r in results if r["arm"] == arm and r["tta"] == tta]
            if not rows:
                continue
            entry = {"seeds": [r["seed"] for r in rows]}
            cells = []
            for key, _, _ in COLUMNS:
                values = np.array([r[key] for r in rows])
                sd = float(values.std(ddof=1)) if len(values) > 1 else 0.0
                entry[key] = {"mean": float(values.mean()), "sd": sd, "values": values.tolist()}
                cells.append(f"{values.mean():.4f}" + (f" ± {sd:.4f}" if len(values) > 1 else ""))
            summary[f"{arm}{'+tta' if tta else ''}"] = entry
            row = [arm, "yes" if tta else "no", str(len(rows)), *cells]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines), summary


def figure(results: list[dict[str, Any]], path: Path) -> None:
    """One panel per measure: each arm with and without TTA, a dot per seed, a line at the mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(dict.fromkeys(r["arm"] for r in results))
    fig, axes = plt.subplots(1, len(COLUMNS), figsize=(4 * len(COLUMNS), 3.8))
    for ax, (key, label, lower) in zip(axes, COLUMNS, strict=True):
        for i, arm in enumerate(arms):
            for j, tta in enumerate((False, True)):
                values = [r[key] for r in results if r["arm"] == arm and r["tta"] == tta]
                if not values:
                    continue
                x = i + 0.3 * (j - 0.5)
                colour = f"C{j}"
                ax.hlines(np.mean(values), x - 0.12, x + 0.12, color=colour, lw=2)
                ax.plot([x] * len(values), values, "o", color=colour, ms=4, alpha=0.7)
        ax.set_xticks(range(len(arms)), [a.replace("_", "\n") for a in arms], fontsize=8)
        ax.set_title(f"{label} ({'lower' if lower else 'higher'} is better)", fontsize=9)
        values = [r[key] for r in results]
        pad = 0.15 * (max(values) - min(values) + 1e-3)
        ax.set_ylim(min(values) - pad, max(values) + pad)
        ax.grid(axis="y", alpha=0.3)
    handles = [plt.Line2D([], [], color=f"C{j}", marker="o", lw=2) for j in (0, 1)]
    fig.legend(handles, ["no TTA", "TTA (8 flips/rotations)"], loc="upper right", fontsize=8)
    fig.suptitle("ISBI 2012 validation slices 25-29: ablation (dots = seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/isbi2012-cpu.yaml")
    parser.add_argument("--out", type=Path, default=Path("results/isbi2012/ablation"))
    parser.add_argument(
        "--local-dir", type=Path, help="a local copy of ISBI 2012 (default: the config's local_dir)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=DEFAULT_ARMS)
    parser.add_argument("--device", default="cpu", help="cpu, cuda (training and prediction)")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained and scored at once")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per training run")
    parser.add_argument("--workers", type=int, help="DataLoader workers per run (default: config)")
    parser.add_argument("--iterations", type=int, help="override train.iterations (smoke runs)")
    parser.add_argument(
        "--report", action="store_true", help="only rebuild the table and figure from the scores"
    )
    args = parser.parse_args(argv)

    config = load_config(args.config)
    local_dir = args.local_dir or config["dataset"]["local_dir"]
    if local_dir is None:
        parser.error("--local-dir: the folder of a local copy of ISBI 2012 (TIFF stacks or PNGs)")
    groups = prepare_data(
        config, args.out, local_dir, list(dict.fromkeys([*DEFAULT_ARMS, *args.arms])), args.threads
    )
    jobs = []
    for arm in args.arms:
        for seed in args.seeds:
            run = args.out / f"{arm}_seed{seed}"
            run.mkdir(parents=True, exist_ok=True)
            if not args.report:
                cfg = run_config(config, arm, seed, args)
                (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
            jobs.append((arm, seed, groups[arm], run))
    if not args.report:
        started = time.perf_counter()
        train_runs([(g, r) for _, _, g, r in jobs], args.jobs, args.threads)
        print(f"training done in {time.perf_counter() - started:.0f} s", flush=True)
        # spawn: each scoring process initialises CUDA itself
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
            futures = [
                pool.submit(score_run, run, group, tta, args.device, config)
                for _, _, group, run in jobs
                for tta in (False, True)
            ]
            for future in futures:
                future.result()
    results = [
        {"arm": arm, "seed": seed, **json.loads((run / f"scores_{name}.json").read_text())}
        for arm, seed, _, run in jobs
        for name in ("plain", "tta")
    ]
    devices = sorted(
        {yaml.safe_load((r / "config.yaml").read_text())["train"]["device"] for *_, r in jobs}
    )
    weights = config["weights"]
    stats = weight_statistics(
        groups["full"], groups["no_border_weights"], weights["w0"], weights["sigma"]
    )
    text, summary = table(results)
    header = f"config {args.config}, seeds {args.seeds}, device {', '.join(devices)}"
    notes = "\n".join(f"- {key}: {value:.4g}" for key, value in stats.items())
    (args.out / "ablation.md").write_text(
        f"{header}\n\n{text}\n\nEq. 2 on the training labels (background = membranes):\n{notes}\n"
    )
    report = {"config": args.config, "summary": summary, "weights": stats, "runs": results}
    (args.out / "ablation.json").write_text(json.dumps(report, indent=2) + "\n")
    figure(results, args.out / "ablation.png")
    print(f"{header}\n\n{text}\n\n{notes}\n\nwritten: {args.out}/ablation.{{md,json,png}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
