"""Training, Section 3 of the paper: stochastic gradient descent on the weighted cross-entropy of
Eq. 1, one large tile per batch and a high momentum (0.99), "such that a large number of the
previously seen training samples determine the update in the current optimization step".

Tiles come from :mod:`unetpipe.tiles` (augmented on the fly in DataLoader workers, or read from
the precomputed bank); sample ``i`` is a pure function of ``(seed, i)``, so a restarted run sees
the same tiles.

Every ``checkpoint_every`` iterations ``checkpoints/last.pt`` is written atomically with the
model, optimiser, scheduler, iteration and RNG states; training resumes from it. Every
``val_every`` iterations the network segments the validation slices whole (overlap-tile) and
pixel error and V_rand are logged; the best state is kept in ``checkpoints/best.pt``.
Checkpoints hold tensors and plain values only (``torch.load(..., weights_only=True)``).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from skimage.filters import threshold_otsu
from skimage.measure import label as connected_components
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from unetpipe.augment import resolve_params
from unetpipe.intensity import dataset_statistics, normalize
from unetpipe.io import atomic_path, open_data, read_splits
from unetpipe.losses import weighted_cross_entropy
from unetpipe.metrics import pixel_error, v_rand
from unetpipe.model import UNet, save_model
from unetpipe.predict import predict_image
from unetpipe.tiles import IterationSampler, TileDataset

log = logging.getLogger(__name__)

LOG_FIELDS = ("iteration", "loss", "lr", "tiles_per_s", "seconds", "val_pixel_error", "val_vrand")
CELL_THRESHOLD = 0.5
"""Cell probability above which a validation pixel is foreground (cells = connected components)."""


def lr_factor(step: int, iterations: int, schedule: str, warmup: int) -> float:
    """Learning-rate multiplier at ``step``: linear warm-up, then constant, cosine or poly decay."""
    warm = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    t = min(step / iterations, 1.0)
    if schedule == "constant":
        return warm
    if schedule == "cosine":
        return warm * 0.5 * (1 + math.cos(math.pi * t))
    if schedule == "poly":
        return warm * (1 - t) ** 0.9
    raise ValueError(f"train.schedule must be constant, cosine or poly, got {schedule!r}")


def threshold_baseline(images: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> float:
    """Mean V_rand of a simple baseline: cells = connected components of ``image > Otsu``."""
    scores = [
        v_rand(connected_components(image > threshold_otsu(image), connectivity=1), truth)
        for image, truth in zip(images, labels, strict=True)
    ]
    return float(np.mean(scores))


def validate(
    model: torch.nn.Module, images: Sequence[np.ndarray], labels: Sequence[np.ndarray]
) -> dict[str, float]:
    """Pixel error and mean V_rand of whole normalised slices segmented by overlap-tile (Fig. 2).

    Cells are the 4-connected components of ``cell probability > 0.5``.
    """
    was_training = model.training
    model.eval()
    cells = [predict_image(model, image)[1] for image in images]
    model.train(was_training)
    vrand = [
        v_rand(connected_components(p > CELL_THRESHOLD, connectivity=1), truth)
        for p, truth in zip(cells, labels, strict=True)
    ]
    error = pixel_error(np.stack(cells), np.stack(labels) > 0)
    return {"val_pixel_error": error, "val_vrand": float(np.mean(vrand))}


def plot_curves(
    rows: Sequence[dict[str, Any]], path: str | Path, baseline: float | None = None
) -> None:
    """Training loss, learning rate and validation scores against the iteration, as a PNG;
    ``baseline`` is the V_rand of the thresholding baseline, drawn as a line."""
    from matplotlib.figure import Figure

    it = np.array([float(r["iteration"]) for r in rows])
    loss = np.array([float(r["loss"]) for r in rows])
    val = [r for r in rows if r.get("val_vrand") not in (None, "")]
    fig = Figure(figsize=(13, 3.6), layout="tight")
    axes = fig.subplots(1, 3)
    axes[0].plot(it, loss, lw=0.5, alpha=0.4, label="per iteration")
    if len(loss) >= 10:
        window = max(len(loss) // 50, 5)
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        axes[0].plot(it[window - 1 :], smooth, label=f"mean of {window}")
    axes[0].set(yscale="log", xlabel="iteration", title="loss (Eq. 1)")
    axes[0].legend()
    axes[1].plot(it, [float(r["lr"]) for r in rows])
    axes[1].set(xlabel="iteration", title="learning rate")
    if val:
        v_it = [float(r["iteration"]) for r in val]
        axes[2].plot(v_it, [float(r["val_vrand"]) for r in val], "o-", label="V_rand")
        axes[2].plot(v_it, [float(r["val_pixel_error"]) for r in val], "s-", label="pixel error")
    if baseline is not None:
        axes[2].axhline(baseline, color="gray", ls="--", label="V_rand, Otsu threshold")
    if val or baseline is not None:
        axes[2].legend()
    axes[2].set(xlabel="iteration", title="validation", ylim=(0, 1))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def train(
    data: str | Path,
    run_dir: str | Path,
    train_cfg: dict[str, Any],
    model_cfg: dict[str, Any],
    augment_cfg: dict[str, Any],
    bank: Sequence[str | Path] = (),
    threads: int | None = None,
) -> Path:
    """Train a U-Net on ``data`` and export ``run_dir/model.pt``; returns its path.

    Also writes ``run_dir/train/log.csv`` and ``curves.png``; checkpoints live in
    ``run_dir/checkpoints``. With ``train.gpus > 1`` (and not already started by ``torchrun``)
    one process per GPU is launched with torch's elastic launcher (what ``torchrun`` runs) and
    trained with DistributedDataParallel; on a machine without GPUs they are CPU processes
    (gloo backend).
    """
    args = (str(data), str(run_dir), train_cfg, model_cfg, augment_cfg, [str(p) for p in bank])
    gpus = int(train_cfg["gpus"])
    if gpus > 1 and "WORLD_SIZE" not in os.environ:
        from torch.distributed.launcher.api import LaunchConfig, elastic_launch

        launch = LaunchConfig(
            min_nodes=1,
            max_nodes=1,
            nproc_per_node=gpus,
            run_id=f"unetpipe-train-{os.getpid()}",
            rdzv_backend="c10d",
            rdzv_endpoint="localhost:0",
            max_restarts=0,
            monitor_interval=0.25,
        )
        per_process = max(1, (threads or torch.get_num_threads()) // gpus)
        elastic_launch(launch, _launched)(*args, per_process)
    else:
        _train(*args, threads)
    return Path(run_dir) / "model.pt"


def _launched(*args: Any) -> None:
    """Entry point of a launched process: log to stderr (rank 0 only), then train."""
    logging.basicConfig(
        level=logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    _train(*args)


def _devices(name: str) -> tuple[torch.device, int, int]:
    """(device, rank, world size); joins the process group when started by torchrun."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device is 'cuda' but no GPU is visible; use 'auto' or 'cpu'")
    cuda = name == "cuda" or (name == "auto" and torch.cuda.is_available())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return device, rank, world


def _rng_state(world: int) -> list[dict[str, Any]]:
    """The torch RNG states (CPU and CUDA) of every process."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if world == 1:
        return [state]
    states: list[Any] = [None] * world
    dist.all_gather_object(states, state)
    return states


def _set_rng_state(states: list[dict[str, Any]], rank: int) -> None:
    if rank >= len(states):
        log.warning("checkpoint has RNG states of %d processes only: dropout differs", len(states))
        return
    # A checkpoint loaded with map_location="cuda" brings its RNG states to the GPU: back to CPU.
    torch.set_rng_state(states[rank]["torch"].cpu())
    if "cuda" in states[rank] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([state.cpu() for state in states[rank]["cuda"]])


def _save(obj: dict[str, Any], path: Path) -> None:
    """torch.save to a temporary file, then an atomic rename: a kill never leaves half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _read_log(path: Path, upto: int) -> list[dict[str, str]]:
    """Rows of the live log up to iteration ``upto`` (later ones are redone after a resume)."""
    if upto == 0 or not path.is_file():
        return []
    with path.open(newline="") as f:
        return [row for row in csv.DictReader(f) if int(row["iteration"]) <= upto]


def _write_log(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, LOG_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


class _Trainer:
    """The network, optimiser, learning-rate schedule and loss scaler of one training process."""

    def __init__(
        self,
        cfg: dict[str, Any],
        model_cfg: dict[str, Any],
        device: torch.device,
        rank: int,
        world: int,
    ) -> None:
        if model_cfg.get("dims", 2) != 2:
            raise ValueError("training reads 2D slices: model.dims must be 2")
        self.device, self.world, self.batch = device, world, int(cfg["batch_size"])
        cuda = device.type == "cuda"
        # Memory format per device, measured (DESIGN.md section 5): channels_last is faster on
        # GPUs, but on this CPU its backward pass is ~1.8x slower than NCHW.
        self.memory_format = torch.channels_last if cuda else torch.contiguous_format
        self.amp = None
        if cuda and cfg["amp"]:
            self.amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            torch.backends.cudnn.benchmark = True
        torch.manual_seed(cfg["seed"])  # the same initial weights in every process
        self.model = UNet(**model_cfg).to(device, memory_format=self.memory_format)
        torch.manual_seed(cfg["seed"] + rank)  # each process its own dropout masks
        params = self.model.parameters()
        if cfg["optimizer"] == "sgd":
            momentum, decay = cfg["momentum"], cfg["weight_decay"]
            self.optimizer = torch.optim.SGD(params, cfg["lr"], momentum, weight_decay=decay)
        elif cfg["optimizer"] == "adam":
            self.optimizer = torch.optim.Adam(params, cfg["lr"], weight_decay=cfg["weight_decay"])
        else:
            raise ValueError(f"train.optimizer must be sgd or adam, got {cfg['optimizer']!r}")
        factor = partial(
            lr_factor, iterations=cfg["iterations"], schedule=cfg["schedule"], warmup=cfg["warmup"]
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp == torch.float16)
        self.net = DistributedDataParallel(self.model) if world > 1 else self.model

    def step(
        self, image: torch.Tensor, target: torch.Tensor, weights: torch.Tensor
    ) -> tuple[float, float]:
        """One optimiser step on a batch; returns (loss of the whole batch, learning rate used)."""
        image = image.to(self.device, non_blocking=True, memory_format=self.memory_format)
        target = target.to(self.device, non_blocking=True)
        weights = weights.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            logits = self.net(image)
        normalizer = weights.sum()
        if self.world > 1:  # DDP averages gradients: divide by the batch's mean weight sum
            dist.all_reduce(normalizer)
            normalizer = normalizer / self.world
        loss = weighted_cross_entropy(logits, target, weights, normalizer)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        loss = loss.detach()
        if self.world > 1:
            dist.all_reduce(loss)
            loss = loss / self.world
        return loss.item(), lr

    def state(self) -> dict[str, Any]:
        """Model, optimiser, scheduler, scaler and every process's RNG states (collective)."""
        return {
            "model": self.model.state_dict(),
            "model_config": dict(self.model.config),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": _rng_state(self.world),
        }

    def restore(self, ckpt: dict[str, Any], rank: int) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        _set_rng_state(ckpt["rng"], rank)


def _train(
    data: str,
    run_dir: str,
    cfg: dict[str, Any],
    model_cfg: dict[str, Any],
    augment_cfg: dict[str, Any],
    bank: list[str],
    threads: int | None,
) -> None:
    device, rank, world = _devices(cfg["device"])
    if threads:
        torch.set_num_threads(threads)
    run = Path(run_dir)
    ckpt_dir = run / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    last_path, best_path, live_log = (
        ckpt_dir / "last.pt",
        ckpt_dir / "best.pt",
        ckpt_dir / "log.csv",
    )
    group = open_data(data)
    missing = [name for name in ("raw", "labels", "weights") if name not in group]
    if missing:
        raise ValueError(f"{data} lacks {missing}: run the data and weights rules first")
    splits = read_splits(group)
    stats = dataset_statistics(group["raw"], splits["train"])
    trainer = _Trainer(cfg, model_cfg, device, rank, world)
    augment_cfg = resolve_params(augment_cfg)
    tile = int(augment_cfg["tile"])
    out_size = trainer.model.output_size(tile)
    meta = {"tile": tile, "output_size": out_size, "normalization": stats}

    meta["fingerprint"] = _fingerprint(group, cfg, trainer.model.config, augment_cfg, bank)
    start, best, scores = 0, {"iteration": 0, "val_vrand": -1.0}, {}
    ckpt = (
        torch.load(last_path, map_location=device, weights_only=True)
        if last_path.is_file()
        else None
    )
    if ckpt is not None and ckpt.get("fingerprint") != meta["fingerprint"]:
        if rank == 0:
            _supersede(ckpt_dir, (last_path, best_path, live_log))
        ckpt = None
    if ckpt is not None:
        trainer.restore(ckpt, rank)
        start, best, scores = int(ckpt["iteration"]), ckpt["best"], ckpt["scores"]
        log.info("resuming from %s at iteration %d", last_path, start)
    iterations = int(cfg["iterations"])
    loader = DataLoader(
        TileDataset(
            data,
            splits["train"],
            stats,
            tile,
            out_size,
            augment_cfg,
            cfg["seed"],
            cfg["data"],
            bank,
        ),
        batch_size=trainer.batch // world,
        sampler=IterationSampler(start, iterations, trainer.batch, rank, world),
        num_workers=cfg["workers"],
        pin_memory=device.type == "cuda",
        generator=torch.Generator(),  # leaves the global RNG (dropout) alone
    )
    val_images = [normalize(group["raw"][z], stats) for z in splits["val"]]
    val_labels = [np.asarray(group["labels"][z]) for z in splits["val"]]
    if rank == 0 and val_labels:
        meta["baseline_vrand"] = threshold_baseline(val_images, val_labels)
        log.info("validation V_rand of an Otsu threshold: %.4f", meta["baseline_vrand"])
    log.info(
        "training %s (%d parameters), %d tile(s) of %d -> %d px per step, %d process(es) on %s, "
        "iterations %d..%d",
        trainer.model.config,
        sum(p.numel() for p in trainer.model.parameters()),
        trainer.batch,
        tile,
        out_size,
        world,
        device,
        start,
        iterations,
    )
    rows = _read_log(live_log, start) if rank == 0 else []
    if rank == 0:
        _write_log(live_log, rows)
    began = time.perf_counter() - (float(rows[-1]["seconds"]) if rows else 0.0)
    bar = tqdm(total=iterations, initial=start, disable=rank != 0, mininterval=2, unit="it")
    with contextlib.ExitStack() as stack:
        writer = None
        if rank == 0:
            live = stack.enter_context(live_log.open("a", newline=""))
            writer = csv.DictWriter(live, LOG_FIELDS)
        tic = time.perf_counter()
        for iteration, batch in enumerate(loader, start + 1):
            loss, lr = trainer.step(*batch)
            row: dict[str, Any] = {
                "iteration": iteration,
                "loss": f"{loss:.6g}",
                "lr": f"{lr:.6g}",
                "tiles_per_s": f"{trainer.batch / (time.perf_counter() - tic):.4g}",
            }
            if val_labels and (iteration % cfg["val_every"] == 0 or iteration == iterations):
                if rank == 0:
                    scores = validate(trainer.model, val_images, val_labels)
                    row.update({k: f"{v:.6g}" for k, v in scores.items()})
                    log.info(
                        "iteration %d: loss %.4f, validation pixel error %.4f, V_rand %.4f",
                        iteration,
                        loss,
                        scores["val_pixel_error"],
                        scores["val_vrand"],
                    )
                    if scores["val_vrand"] > best["val_vrand"]:
                        best = {"iteration": iteration, **scores}
                if world > 1:
                    shared = [best, scores]
                    dist.broadcast_object_list(shared)
                    best, scores = shared
                if best["iteration"] == iteration:
                    _checkpoint(trainer, best_path, rank, iteration, best, scores, meta)
            if iteration % cfg["checkpoint_every"] == 0 or iteration == iterations:
                _checkpoint(trainer, last_path, rank, iteration, best, scores, meta)
            if writer is not None:
                row["seconds"] = f"{time.perf_counter() - began:.1f}"
                writer.writerow(row)
                live.flush()
                rows.append(row)
            bar.set_postfix(loss=row["loss"], lr=row["lr"], refresh=False)
            bar.update()
            tic = time.perf_counter()
    bar.close()
    if rank == 0:
        _export(run, best_path if cfg["export"] == "best" and best_path.is_file() else last_path)
        _write_log(run / "train" / "log.csv", rows)
        plot_curves(rows, run / "train" / "curves.png", meta.get("baseline_vrand"))
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


def _fingerprint(
    group: Any,
    cfg: dict[str, Any],
    model_cfg: dict[str, Any],
    augment_cfg: dict[str, Any],
    bank: Sequence[str],
) -> str:
    """What a run's weights depend on: its settings, the data's and weight maps' provenance and
    the bank's. A checkpoint resumes only a run with the same fingerprint."""
    settings = {k: v for k, v in cfg.items() if k not in ("workers", "device")}
    banks = [dict(open_data(path).attrs) for path in bank] if cfg["data"] == "bank" else []
    recipe = {
        "train": settings,
        "model": model_cfg,
        "augment": augment_cfg,
        "data": dict(group.attrs),
        "weights": dict(group["weights"].attrs),
        "bank": banks,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()


def _supersede(ckpt_dir: Path, paths: Sequence[Path]) -> None:
    """Move checkpoints of another configuration or other data to ``superseded/``: a rerun after
    a change starts afresh instead of resuming them, and nothing is deleted."""
    old = ckpt_dir / "superseded"
    old.mkdir(exist_ok=True)
    for path in paths:
        if path.is_file():
            path.replace(old / path.name)
    log.warning("%s: checkpoints of another configuration or data moved to %s", ckpt_dir, old)


def _checkpoint(
    trainer: _Trainer,
    path: Path,
    rank: int,
    iteration: int,
    best: dict[str, Any],
    scores: dict[str, float],
    meta: dict[str, Any],
) -> None:
    """Gather the training state from every process; rank 0 writes it to ``path`` atomically."""
    state = {**trainer.state(), "iteration": iteration, "best": best, "scores": scores, **meta}
    if rank == 0:
        _save(state, path)


def _export(run: Path, checkpoint: Path) -> None:
    """``run/model.pt``: a checkpoint's weights, model config, normalisation and scores."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model = UNet(**ckpt["model_config"])
    model.load_state_dict(ckpt["model"])
    keep = ("normalization", "tile", "output_size", "iteration", "baseline_vrand")
    metadata = {k: ckpt[k] for k in keep if k in ckpt}
    save_model(run / "model.pt", model, **metadata, **ckpt["scores"])
    log.info("exported %s from %s (iteration %d)", run / "model.pt", checkpoint, ckpt["iteration"])
