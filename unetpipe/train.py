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
import copy
import csv
import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from skimage.filters import threshold_otsu
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from unetpipe.affinities import cell_map, network_config
from unetpipe.augment import sizes
from unetpipe.augment3d import check_swap_axes
from unetpipe.config import defaults, result_settings
from unetpipe.intensity import dataset_statistics, normalize
from unetpipe.io import atomic_path, check_disjoint, claim_folder, open_data, read_log
from unetpipe.losses import AFFINITY_LOSSES, weighted_cross_entropy
from unetpipe.metrics import components, pixel_error, v_rand
from unetpipe.model import UNet, save_file, save_model
from unetpipe.precision import (
    autocast,
    choose_memory_format,
    fastest_memory_format,
    model_in_format,
    resolve_precision,
    torch_memory_format,
    torch_threads,
)
from unetpipe.predict import predict_image
from unetpipe.sections import AugmentConfig, ModelConfig, TrainConfig
from unetpipe.splits import Split, consecutive_runs, resolve
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
        v_rand(components(image > threshold_otsu(image))[0], truth)
        for image, truth in zip(images, labels, strict=True)
    ]
    return float(np.mean(scores))


def validate(
    model: torch.nn.Module,
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    precision: str = "float32",
) -> dict[str, float]:
    """Pixel error and mean V_rand of whole normalised slices segmented by overlap-tile (Fig. 2),
    the network run in ``precision``; a 3D network segments whole volumes (``images`` and
    ``labels`` (z, y, x): runs of consecutive slices), scored slice by slice all the same.

    Cells are the 4-connected components of ``cell probability > 0.5``
    (:func:`unetpipe.affinities.cell_map`: of an affinity net, its nearest-neighbour mean).
    """
    was_training = model.training
    model.eval()
    cells = [
        cell_map(predict_image(model, image, precision=precision), model.config) for image in images
    ]
    model.train(was_training)
    if model.config["dims"] == 3:
        cells = [plane for volume in cells for plane in volume]
        labels = [plane for volume in labels for plane in volume]
    vrand = [
        v_rand(components(p > CELL_THRESHOLD)[0], truth)
        for p, truth in zip(cells, labels, strict=True)
    ]
    error = pixel_error(np.stack(cells), np.stack(labels) > 0)
    return {"val_pixel_error": error, "val_vrand": float(np.mean(vrand))}


def train(
    data: str | Path,
    run_dir: str | Path,
    train_cfg: TrainConfig | Mapping[str, Any],
    model_cfg: ModelConfig | Mapping[str, Any],
    augment_cfg: AugmentConfig | Mapping[str, Any],
    bank: Sequence[str | Path] = (),
    threads: int | None = None,
    split: Split | None = None,
) -> Path:
    """Train a U-Net on ``data`` and export ``run_dir/model.pt``; returns its path.

    ``split`` names the training and validation slices (:func:`unetpipe.splits.resolve`; default
    the group's). Also writes ``run_dir/train/log.csv`` and ``curves.png``; checkpoints live in
    ``run_dir/checkpoints``. With ``train.gpus > 1`` (and not already started by ``torchrun``)
    one process per GPU is launched with torch's elastic launcher (what ``torchrun`` runs) and
    trained with DistributedDataParallel; on a machine without GPUs they are CPU processes
    (gloo backend).
    """
    train_cfg = TrainConfig.from_mapping(train_cfg)
    model_cfg = ModelConfig.from_mapping(model_cfg)
    augment_cfg = AugmentConfig.from_mapping(augment_cfg)
    args = (str(data), str(run_dir), train_cfg, model_cfg, augment_cfg, [str(p) for p in bank])
    check_disjoint(run_dir, data, *bank)
    claim_folder(run_dir)
    gpus = train_cfg.gpus
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
        elastic_launch(launch, _launched)(*args, per_process, split)
    else:
        _train(*args, threads, split)
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


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A training checkpoint (``last.pt``/``best.pt``); one clear error for a file that is empty,
    truncated or not a unetpipe checkpoint."""
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # torch raises several kinds (EOFError, RuntimeError, pickle's)
        raise ValueError(
            f"{path}: not a readable unetpipe checkpoint ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'empty'}); move it away to train afresh"
        ) from None
    if not isinstance(ckpt, dict) or not {"model", "iteration", "fingerprint"} <= set(ckpt):
        raise ValueError(f"{path}: not a unetpipe checkpoint; move it away to train afresh")
    return ckpt


def _write_log(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, LOG_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def _finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


class _Trainer:
    """The network, optimiser, learning-rate schedule and loss scaler of one training process;
    the network runs in ``train.precision`` (autocast, float32 weights) and in the memory format
    given to :meth:`start` (NCHW until then)."""

    def __init__(
        self,
        cfg: TrainConfig,
        model_cfg: ModelConfig,
        device: torch.device,
        rank: int,
        world: int,
    ) -> None:
        self.device, self.world, self.batch = device, world, cfg.batch_size
        self.precision = resolve_precision(cfg.precision, device)
        self.memory_format = "contiguous"
        torch.manual_seed(cfg.seed)  # the same initial weights in every process
        self.model = UNet(**network_config(model_cfg.to_mapping())).to(device)
        self.dims = int(self.model.config["dims"])
        self.offsets = self.model.config.get("offsets")
        self.affinity_loss = AFFINITY_LOSSES[cfg.affinity_loss]
        torch.manual_seed(cfg.seed + rank)  # each process its own dropout masks
        params = self.model.parameters()
        if cfg.optimizer == "sgd":
            momentum, decay = cfg.momentum, cfg.weight_decay
            self.optimizer = torch.optim.SGD(params, cfg.lr, momentum, weight_decay=decay)
        elif cfg.optimizer == "adam":
            self.optimizer = torch.optim.Adam(params, cfg.lr, weight_decay=cfg.weight_decay)
        else:
            raise ValueError(f"train.optimizer must be sgd or adam, got {cfg.optimizer!r}")
        factor = partial(
            lr_factor, iterations=cfg.iterations, schedule=cfg.schedule, warmup=cfg.warmup
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "float16")
        self.net: torch.nn.Module = self.model

    def fastest_format(self, tile: int | tuple[int, ...]) -> str:
        """The memory format in which a training pass (forward and backward) of one batch of
        ``tile`` tiles is faster here, measured on a copy of the network (the weights, gradients
        and RNG state of the run are untouched); in DDP rank 0 measures for every process."""
        choice = [None]
        if self.world == 1 or dist.get_rank() == 0:
            net = copy.deepcopy(self.model).train()
            tiles = (tile,) * self.dims if isinstance(tile, int) else tile
            shape = (self.batch // self.world, net.config["in_channels"], *tiles)
            x = torch.zeros(shape, device=self.device)

            gpus = [self.device] if self.device.type == "cuda" else []

            def run(name: str) -> None:
                with model_in_format(net, name), torch.random.fork_rng(gpus):
                    with autocast(self.device, self.precision):
                        fmt = torch_memory_format(name, x.dim())
                        logits = net(x.contiguous(memory_format=fmt))
                    logits.float().mean().backward()
                net.zero_grad(set_to_none=True)

            key = (str(self.device), self.precision, json.dumps(net.config, sort_keys=True))
            choice = [fastest_memory_format((*key, shape, "train"), run, self.device)]
        if self.world > 1:
            dist.broadcast_object_list(choice)
        return choice[0]

    def start(self, fmt: str) -> None:
        """Put the network in memory format ``fmt`` (a name of ``MEMORY_FORMATS``) for the run;
        wrap it for DDP."""
        self.memory_format = fmt
        self.model.to(memory_format=torch_memory_format(fmt, self.dims + 2))
        self.net = DistributedDataParallel(self.model) if self.world > 1 else self.model

    def step(
        self, image: torch.Tensor, target: torch.Tensor, weights: torch.Tensor
    ) -> tuple[float, float]:
        """One optimiser step on a batch; returns (loss of the whole batch, learning rate used)."""
        fmt = torch_memory_format(self.memory_format, self.dims + 2)
        image = image.to(self.device, non_blocking=True, memory_format=fmt)
        target = target.to(self.device, non_blocking=True)
        weights = weights.to(self.device, non_blocking=True)
        with autocast(self.device, self.precision):
            logits = self.net(image)
        loss = self._loss(logits, target, weights)
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

    def _loss(
        self, logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        """Eq. 1 of the whole batch (over all processes); for an affinity net ``weights`` is the
        valid mask and the loss ``train.affinity_loss`` of this process's share (DDP averages)."""
        if self.offsets is not None:
            return self.affinity_loss(logits, target, weights)
        normalizer = weights.sum()
        if self.world > 1:  # DDP averages gradients: divide by the batch's mean weight sum
            dist.all_reduce(normalizer)
            normalizer = normalizer / self.world
        return weighted_cross_entropy(logits, target, weights, normalizer)

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


@contextlib.contextmanager
def _process_settings(threads: int | None, cuda: bool) -> Iterator[None]:
    """torch's thread count and cuDNN autotuning for the run, put back as they were afterwards."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = cuda
    try:
        with torch_threads(threads):
            yield
    finally:
        torch.backends.cudnn.benchmark = before


def _training_data(group: Any, split: Split) -> dict[str, float]:
    """Check the group holds what training reads; the normalisation of its training slices."""
    missing = [name for name in ("raw", "labels", "weights") if name not in group]
    if missing:
        raise ValueError(f"{group.store} lacks {missing}: run the data and weights rules first")
    stats = dataset_statistics(group["raw"], split["train"])
    if not all(math.isfinite(v) for v in stats.values()):
        raise ValueError(
            f"{group.store}/raw: the training slices hold NaN or infinite values ({stats}); "
            "fill them and convert again"
        )
    return stats


def _resume(
    ckpt_dir: Path, meta: dict[str, Any], export: str, device: torch.device, rank: int
) -> dict[str, Any] | None:
    """The last checkpoint of this run, or None: a checkpoint of another configuration or other
    data is moved to ``superseded/`` (nothing is deleted) and the run starts afresh; so is one
    validated at another cadence when ``export`` is ``best`` (the cadence picks that state)."""
    last = ckpt_dir / "last.pt"
    if not last.is_file():
        return None
    ckpt = load_checkpoint(last, device)
    same = ckpt["fingerprint"] == meta["fingerprint"]
    if same and (export != "best" or ckpt.get("val_every") == meta["val_every"]):
        log.info("resuming from %s at iteration %d", last, ckpt["iteration"])
        return ckpt
    if rank == 0:
        old = ckpt_dir / "superseded"
        old.mkdir(exist_ok=True)
        for name in ("last.pt", "best.pt", "log.csv"):
            if (ckpt_dir / name).is_file():
                (ckpt_dir / name).replace(old / name)
        why = (
            f"validated every {ckpt.get('val_every')} iterations, and export: best picks the "
            "state by the validation cadence"
            if same
            else "made with other settings or other data (their content changed)"
        )
        log.warning(
            "%s: the checkpoints were %s: moved to %s; training starts afresh", ckpt_dir, why, old
        )
    return None


class _Validation:
    """The validation slices segmented whole by overlap-tile (Fig. 2) during training."""

    def __init__(
        self,
        group: Any,
        slices: Sequence[int],
        stats: dict[str, float],
        precision: str,
        dims: int = 2,
    ) -> None:
        self.precision = precision
        if dims == 3:  # whole runs of consecutive slices, read once
            runs = consecutive_runs(slices)
            self.inputs = [normalize(group["raw"][a:b], stats) for a, b in runs]
            self.truths = [np.asarray(group["labels"][a:b]) for a, b in runs]
            self.images = [plane for volume in self.inputs for plane in volume]
            self.labels = [plane for volume in self.truths for plane in volume]
        else:
            self.images = [normalize(group["raw"][z], stats) for z in slices]
            self.labels = [np.asarray(group["labels"][z]) for z in slices]
            self.inputs, self.truths = self.images, self.labels

    def baseline(self) -> float:
        return threshold_baseline(self.images, self.labels)

    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        return validate(model, self.inputs, self.truths, self.precision)


def _train(
    data: str,
    run_dir: str,
    cfg: TrainConfig,
    model_cfg: ModelConfig,
    augment_cfg: AugmentConfig,
    bank: list[str],
    threads: int | None,
    split: Split | None,
) -> None:
    """One process of a training run: data, network, resume, the loop; rank 0 writes the outputs."""
    device, rank, world = _devices(cfg.device)
    with _process_settings(threads, device.type == "cuda"):
        run = Path(run_dir)
        ckpt_dir = run / "checkpoints"
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        group = open_data(data)
        split = split or resolve(group)
        stats = _training_data(group, split)
        trainer = _Trainer(cfg, model_cfg, device, rank, world)
        tile = _tile(augment_cfg.tile, trainer.model)
        voxel_size = group.attrs.get("voxel_size", (1.0, 1.0, 1.0))
        if augment_cfg.rotation.swap_axes:  # before any work: the tile and voxels allow it
            check_swap_axes(sizes(tile, trainer.dims, "augment.tile"), voxel_size)
        meta = _run_meta(group, split, stats, trainer, cfg, augment_cfg, tile)
        ckpt = _resume(ckpt_dir, meta, cfg.export, device, rank)
        state = _start(trainer, ckpt, cfg.memory_format, tile, meta, rank)
        validation = _Validation(group, split["val"], stats, trainer.precision, trainer.dims)
        if rank == 0 and validation.labels:
            meta["baseline_vrand"] = validation.baseline()
            log.info("validation V_rand of an Otsu threshold: %.4f", meta["baseline_vrand"])
        dataset = TileDataset(
            data,
            split["train"],
            stats,
            tile,
            meta["output_size"],
            augment_cfg,
            cfg.seed,
            cfg.data,
            bank,
            trainer.offsets,
            trainer.dims,
            voxel_size,
        )
        loader = DataLoader(
            dataset,
            batch_size=trainer.batch // world,
            sampler=IterationSampler(state["start"], cfg.iterations, trainer.batch, rank, world),
            num_workers=cfg.workers,
            pin_memory=device.type == "cuda",
            generator=torch.Generator(),  # leaves the global RNG (dropout) alone
        )
        if rank == 0 and device.type == "cpu":
            _warn_gpu_recipe(trainer.model, model_cfg, cfg)
        log.info(
            "training %s (%d parameters) on %d slices, %d tile(s) of %s -> %s px per step, "
            "%d process(es) on %s, iterations %d..%d",
            trainer.model.config,
            sum(p.numel() for p in trainer.model.parameters()),
            len(split["train"]),
            trainer.batch,
            tile,
            meta["output_size"],
            world,
            device,
            state["start"],
            cfg.iterations,
        )
        rows = _fit(trainer, loader, validation, cfg, state, meta, ckpt_dir, rank, world)
        if rank == 0:
            _finish(run, cfg.export, rows, meta.get("baseline_vrand"))
        if world > 1:
            dist.barrier()
            dist.destroy_process_group()


def _run_meta(
    group: Any,
    split: Split,
    stats: dict[str, float],
    trainer: _Trainer,
    cfg: TrainConfig,
    augment_cfg: AugmentConfig,
    tile: int | tuple[int, ...],
) -> dict[str, Any]:
    """What every checkpoint records of the run: tile, normalisation, split, fingerprint."""
    return {
        "tile": tile,
        "output_size": trainer.model.output_size(tile),
        "normalization": stats,
        "split": split,
        "val_every": cfg.val_every,
        "precision": trainer.precision,
        "fingerprint": _fingerprint(
            group,
            split,
            dataclasses.replace(cfg, precision=trainer.precision),
            trainer.model.config,
            augment_cfg,
        ),
    }


def _start(
    trainer: _Trainer,
    ckpt: dict[str, Any] | None,
    memory_format: str,
    tile: int | tuple[int, ...],
    meta: dict[str, Any],
    rank: int,
) -> dict[str, Any]:
    """Start the trainer in its memory format (recorded in ``meta``) and restore the checkpoint,
    if any; the loop's first iteration, best state and scores."""
    # The memory format: as configured, else the one recorded in the checkpoint, else the
    # faster one measured here.
    meta["memory_format"], how = choose_memory_format(
        memory_format,
        ckpt.get("memory_format") if ckpt is not None else None,
        lambda: trainer.fastest_format(tile),
    )
    trainer.start(meta["memory_format"])
    log.info("network in %s, memory format %s (%s)", trainer.precision, meta["memory_format"], how)
    if ckpt is None:
        return {"start": 0, "best": {"iteration": 0, "val_vrand": -1.0}, "scores": {}}
    trainer.restore(ckpt, rank)
    return {"start": int(ckpt["iteration"]), "best": ckpt["best"], "scores": ckpt["scores"]}


def _finish(run: Path, export: str, rows: list[dict[str, Any]], baseline: float | None) -> None:
    """``model.pt`` from the best or the last checkpoint, the training log and its curves."""
    ckpt_dir = run / "checkpoints"
    best = ckpt_dir / "best.pt"
    _export(run, best if export == "best" and best.is_file() else ckpt_dir / "last.pt")
    _write_log(run / "train" / "log.csv", rows)
    from unetpipe.report import curves_figure  # matplotlib: only to draw the curves

    curves_figure(rows, run / "train" / "curves.png", baseline=baseline)


def _tile(value: int | Sequence[int], model: UNet) -> int | tuple[int, ...]:
    """``augment.tile``: one extent for every axis (an int), or one per axis (a tuple), checked
    against the network (ValueError naming the nearest valid tiles)."""
    dims = model.config["dims"]
    tile = int(value) if isinstance(value, int) else tuple(int(v) for v in value)
    if not isinstance(tile, int) and len(tile) != dims:
        raise ValueError(f"augment.tile {list(tile)}: give one extent per axis of a {dims}D net")
    try:
        model.output_size(tile)
    except ValueError as err:
        raise ValueError(f"augment.tile {value}: {err}") from None
    return tile


def _warn_gpu_recipe(model: torch.nn.Module, model_cfg: ModelConfig, cfg: TrainConfig) -> None:
    """One line when a CPU is to train the paper's GPU-sized network (model.depth and
    base_channels at their defaults, 31 M parameters) for the default 10,000 steps."""
    model_defaults, train_defaults = defaults("model"), defaults("train")
    sized = all(getattr(model_cfg, k) == model_defaults[k] for k in ("depth", "base_channels"))
    if sized and cfg.iterations >= train_defaults["iterations"]:
        log.warning(
            "training on a CPU with the paper's GPU defaults: a %d-parameter U-Net for %d steps "
            "(model.depth %d, model.base_channels %d, train.iterations %d); on a CPU this takes "
            "days: set smaller model and train sections (config/demo.yaml, "
            "config/isbi2012-cpu.yaml) or train on a GPU",
            sum(p.numel() for p in model.parameters()),
            cfg.iterations,
            model_cfg.depth,
            model_cfg.base_channels,
            cfg.iterations,
        )


def _fit(
    trainer: _Trainer,
    loader: DataLoader,
    validation: _Validation,
    cfg: TrainConfig,
    state: dict[str, Any],
    meta: dict[str, Any],
    ckpt_dir: Path,
    rank: int,
    world: int,
) -> list[dict[str, Any]]:
    """The optimisation loop from ``state["start"]``: a step per batch, validation every
    ``val_every`` and checkpoints every ``checkpoint_every`` iterations (both at the end); the
    live log ``ckpt_dir/log.csv`` grows by a row per iteration. Returns the log's rows.

    A non-finite loss stops the run with an error naming the iteration, before anything of it is
    saved: the last checkpoint stays the last finite state and nothing is exported."""
    iterations, start, best, scores = (
        cfg.iterations,
        state["start"],
        state["best"],
        state["scores"],
    )
    live_log = ckpt_dir / "log.csv"
    rows = [r for r in read_log(live_log) if int(r["iteration"]) <= start] if rank == 0 else []
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
            if not math.isfinite(loss):
                raise RuntimeError(
                    f"training diverged: the loss is {loss} at iteration {iteration} (learning "
                    f"rate {lr:g}); lower train.lr or add train.warmup and rerun. Nothing was "
                    f"exported; {ckpt_dir / 'last.pt'} keeps the last finite state"
                )
            row: dict[str, Any] = {
                "iteration": iteration,
                "loss": f"{loss:.6g}",
                "lr": f"{lr:.6g}",
                "tiles_per_s": f"{trainer.batch / (time.perf_counter() - tic):.4g}",
            }
            if validation.labels and (iteration % cfg.val_every == 0 or iteration == iterations):
                if rank == 0:
                    scores = validation(trainer.model)
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
                    _checkpoint(trainer, ckpt_dir / "best.pt", rank, iteration, best, scores, meta)
            if iteration % cfg.checkpoint_every == 0 or iteration == iterations:
                _checkpoint(trainer, ckpt_dir / "last.pt", rank, iteration, best, scores, meta)
            if writer is not None:
                row["seconds"] = f"{time.perf_counter() - began:.1f}"
                writer.writerow(row)
                live.flush()
                rows.append(row)
            bar.set_postfix(loss=row["loss"], lr=row["lr"], refresh=False)
            bar.update()
            tic = time.perf_counter()
    bar.close()
    return rows


def _fingerprint(
    group: Any,
    split: Split,
    cfg: TrainConfig,
    model_cfg: dict[str, Any],
    augment_cfg: AugmentConfig,
) -> str:
    """What a run's weights depend on: its result settings (not ``export`` and ``val_every``, which
    only pick the state exported; ``precision`` as resolved on the device), the split, and the
    content of the arrays it reads (their stored bytes: any change of a pixel, a label or a weight
    changes it). A checkpoint resumes only a run with the same fingerprint; run settings (device,
    processes, workers, cadence) and the memory format are not in it."""
    settings = result_settings("train", cfg.to_mapping())
    del settings["export"]
    augment = result_settings("augment", augment_cfg.to_mapping())
    if cfg.data != "bank":  # the bank's size and sharding matter only when it is read
        augment = {k: v for k, v in augment.items() if k not in ("bank_size", "shards")}
    arrays = [name for name in ("raw", "labels", "weights", "mask") if name in group]
    recipe = {
        "train": settings,
        "model": model_cfg,
        "augment": augment,
        "split": split,
        "data": group.digest(arrays),
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()


def _checkpoint(
    trainer: _Trainer,
    path: Path,
    rank: int,
    iteration: int,
    best: dict[str, Any],
    scores: dict[str, float],
    meta: dict[str, Any],
) -> None:
    """Gather the training state from every process; rank 0 writes it to ``path`` atomically.
    A state with non-finite weights is never saved."""
    if not _finite(trainer.model):
        raise RuntimeError(
            f"training diverged: the weights are not finite at iteration {iteration}; lower "
            "train.lr and rerun (nothing was saved or exported)"
        )
    state = {**trainer.state(), "iteration": iteration, "best": best, "scores": scores, **meta}
    if rank == 0:
        save_file(state, path)


def _export(run: Path, checkpoint: Path) -> None:
    """``run/model.pt``: a checkpoint's weights, model config, normalisation, split and scores."""
    ckpt = load_checkpoint(checkpoint)
    model = UNet(**ckpt["model_config"])
    model.load_state_dict(ckpt["model"])
    if not _finite(model):
        raise RuntimeError(f"{checkpoint}: the weights are not finite; not exported")
    keep = (
        "normalization",
        "tile",
        "output_size",
        "iteration",
        "baseline_vrand",
        "split",
        "precision",
    )
    metadata = {k: ckpt[k] for k in keep if k in ckpt}
    save_model(run / "model.pt", model, **metadata, **ckpt["scores"])
    log.info("exported %s from %s (iteration %d)", run / "model.pt", checkpoint, ckpt["iteration"])
