"""Which truth to train DIC-C2DH-HeLa on (issue 12): the CPU recipe (config/ctc-dic-hela-cpu.yaml)
run by the workflow with its dataset options changed, everything else equal, scored the same way
(cross-sequence, gold-truth frames of the held-out sequence only, post-processing fixed on the
training sequence).

    silver         gold truth where present, silver truth on the other frames (the recipe)
    gold           gold-truth frames only; cells the gold truth leaves unlabelled are ignored
    gold-as-is     gold-truth frames only, unlabelled cells taken as background, as the masks say
                   (the partial frame 01/067 trains fold val-02 only: the other fold is not run)

    python benchmarks/ctc_hela_truth.py                  # ~25 min of training per fold on 2 cores
    python benchmarks/ctc_hela_truth.py --report         # the table from finished runs

Each arm is a workflow run of its own (dataset name dic-c2dh-hela-local-<arm>, config written to
--out); the table (--out/truth.md, truth.json) gives SEG and IoU per fold.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
ARMS: dict[str, tuple[dict[str, Any], list[str]]] = {  # arm: (dataset options, folds)
    "silver": ({"silver_truth": True, "unlabelled": "ignore"}, ["val-01", "val-02"]),
    "gold": ({"silver_truth": False, "unlabelled": "ignore"}, ["val-01", "val-02"]),
    "gold-as-is": ({"silver_truth": False, "unlabelled": "background"}, ["val-02"]),
}


def arm_config(base: dict[str, Any], arm: str, name: str) -> dict[str, Any]:
    config = json.loads(json.dumps(base))
    options, _ = ARMS[arm]
    config["dataset"].update(options, name=name)
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "config" / "ctc-dic-hela-cpu.yaml")
    parser.add_argument("--out", type=Path, default=Path("results/ctc-hela-truth"))
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--local-dir", type=Path, help="an unpacked local copy (default: download)")
    parser.add_argument("--report", action="store_true", help="only the table of finished runs")
    args = parser.parse_args(argv)
    base = yaml.safe_load(args.config.read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for arm in args.arms:
        name = base["dataset"]["name"] if arm == "silver" else f"{base['dataset']['name']}-{arm}"
        config = arm_config(base, arm, name)
        if args.local_dir:
            config["dataset"]["local_dir"] = str(args.local_dir.resolve())
        path = args.out / f"{arm}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        run = Path("results") / name / config["run"]
        targets = [str(run / fold / "metrics.json") for fold in ARMS[arm][1]]
        if not args.report:
            cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "Snakefile")]
            cmd += ["--configfile", str(path), "--cores", str(args.cores), *targets]
            subprocess.run(cmd, check=True)
        for fold, target in zip(ARMS[arm][1], targets, strict=True):
            metrics = json.loads(Path(target).read_text())["results"]["val"]
            seconds = _train_seconds(run / fold / "train" / "log.csv")
            rows.append(
                {
                    "arm": arm,
                    "fold": fold,
                    "seg": metrics["unet"]["seg"],
                    "iou": metrics["unet"]["iou"],
                    "baseline_seg": metrics["baseline"]["seg"],
                    "train_seconds": seconds,
                }
            )
    lines = [
        "| arm | fold | SEG | IoU | baseline SEG | training (s) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['arm']} | {r['fold']} | {r['seg']:.4f} | {r['iou']:.4f} | "
            f"{r['baseline_seg']:.4f} | {r['train_seconds']:.0f} |"
        )
    (args.out / "truth.md").write_text("\n".join(lines) + "\n")
    (args.out / "truth.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("\n".join(lines))
    return 0


def _train_seconds(log_csv: Path) -> float:
    """The training time the log records at its last iteration."""
    last = log_csv.read_text().splitlines()[-1].split(",")
    header = log_csv.read_text().splitlines()[0].split(",")
    return float(last[header.index("seconds")])


if __name__ == "__main__":
    sys.exit(main())
