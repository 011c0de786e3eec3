"""Training speed per network, precision and memory format, side by side in one run.

One training step as ``unetpipe.train`` runs it (autocast forward, float32 weighted loss of Eq. 1,
backward, Adam; random tiles) timed in parts (forward, loss + backward, optimiser) for:

* the demo net (depth 4, base 16, 252 px tiles; config/demo.yaml),
* the CPU recipe net (depth 5, base 16, 572 px tiles; config/isbi2012-cpu.yaml),
* the paper's net (depth 5, base 64, 572 px tiles; only ``--paper-steps`` steps: it is slow),

each in float32 and bfloat16 (and float16 on CUDA) x NCHW (contiguous) and channels_last, the
reduced precisions also with their outermost levels in float32 (``model.float32_levels``, column
``f32 lv``; ``--float32-levels``, default 1); the ratio is to float32 NCHW, today's CPU
training. The measured 3x3-convolution peak of each precision (benchmarks/peak.py) gives the
fraction of it a step reaches (3x the forward FLOPs).

    python benchmarks/bench_train.py                   # ~3 minutes on 2 idle cores
    python benchmarks/bench_train.py --nets demo cpu --steps 5
    python benchmarks/bench_train.py --nets cpu --float32-levels 1 2
    python benchmarks/bench_train.py --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from peak import conv_peak, exact_flops

from unetpipe.losses import weighted_cross_entropy
from unetpipe.precision import (
    MEMORY_FORMATS,
    autocast,
    cpu_has_native_bf16,
    torch_memory_format,
)
from unetpipe.sections import ModelConfig, TrainConfig
from unetpipe.train import _Trainer

NETS = {"demo": (4, 16, 252), "cpu": (5, 16, 572), "paper": (5, 64, 572)}


def timed_steps(
    device: str, net: dict, tile: tuple[int, ...], precision: str, fmt: str, steps: int
) -> dict[str, float]:
    """Median seconds of forward, loss + backward, optimiser and the whole step over ``steps``
    steps after one warm-up step, with the trainer of unetpipe.train (``net``: model settings
    over the defaults; ``tile``: one extent per axis)."""
    cfg = TrainConfig.from_mapping({"optimizer": "adam", "lr": 1e-4, "precision": precision})
    trainer = _Trainer(cfg, ModelConfig.from_mapping(net), torch.device(device), 0, 1)
    trainer.start(fmt)
    out = trainer.model.output_size(tuple(tile))
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    image = torch.randn(1, 1, *tile, device=device)
    image = image.contiguous(memory_format=torch_memory_format(fmt, image.dim()))
    target = torch.randint(0, 2, (1, *out), device=device)
    weights = torch.rand(1, *out, device=device) + 0.5
    parts: dict[str, list[float]] = {"forward": [], "backward": [], "optimizer": [], "step": []}
    for step in range(steps + 1):
        sync()
        t0 = time.perf_counter()
        with autocast(device, trainer.precision):
            logits = trainer.net(image)
        sync()
        t1 = time.perf_counter()
        loss = weighted_cross_entropy(logits, target, weights)
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.scaler.scale(loss).backward()
        sync()
        t2 = time.perf_counter()
        trainer.scaler.step(trainer.optimizer)
        trainer.scaler.update()
        sync()
        t3 = time.perf_counter()
        if step:  # the first step builds the kernels
            for name, seconds in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t3 - t0), strict=True):
                parts[name].append(seconds)
    return {name: statistics.median(values) for name, values in parts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--nets", nargs="*", default=list(NETS), choices=list(NETS))
    parser.add_argument("--steps", type=int, default=4, help="timed steps (demo and cpu nets)")
    parser.add_argument("--paper-steps", type=int, default=1, help="timed steps, paper net")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument(
        "--float32-levels",
        type=int,
        nargs="*",
        default=[1],
        help="model.float32_levels of the extra reduced-precision rows (none: no such rows)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    precisions = ["float32", "bfloat16"] + (["float16"] if cuda else [])
    print(
        f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads, "
        f"native bfloat16 on this CPU: {cpu_has_native_bf16()}"
    )
    peaks = {p: conv_peak(p, args.device) for p in precisions}
    print(
        "3x3 conv peak (two 64->64 convs on 256^2, channels_last): "
        + ", ".join(f"{p} {g:.0f} GFLOP/s" for p, g in peaks.items())
    )
    header = (
        f"{'net':6s} {'tile':>4s} {'precision':9s} {'f32 lv':>6s} {'format':13s} {'fwd s':>7s} "
        f"{'bwd s':>7s} {'opt s':>7s} {'step s':>7s} {'steps/s':>7s} {'ratio':>6s} {'% peak':>6s}"
    )
    print(header)
    for net in args.nets:
        depth, base, tile = NETS[net]
        steps = args.paper_steps if net == "paper" else args.steps
        flops = 3 * exact_flops({"depth": depth, "base_channels": base}, (tile, tile))
        baseline = None
        rows = [(p, None) for p in precisions] + [
            (p, n) for p in precisions if p != "float32" for n in args.float32_levels
        ]
        for precision, levels in rows:
            for fmt in MEMORY_FORMATS:
                net_cfg = {"depth": depth, "base_channels": base, "float32_levels": levels}
                t = timed_steps(args.device, net_cfg, (tile, tile), precision, fmt, steps)
                baseline = baseline or t["step"]
                achieved = flops / t["step"] / 1e9
                print(
                    f"{net:6s} {tile:4d} {precision:9s} {levels or '-':>6} {fmt:13s} "
                    f"{t['forward']:7.3f} {t['backward']:7.3f} {t['optimizer']:7.3f} "
                    f"{t['step']:7.3f} "
                    f"{1 / t['step']:7.2f} {baseline / t['step']:5.2f}x "
                    f"{achieved / peaks[precision]:6.1%}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
