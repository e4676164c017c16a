"""Mixed precision speed on the device at hand: fp32 / fp16 / bf16, numlab against bare torch.

usage: python benchmarks/bench_mixed_precision.py [--device auto] [--width 512] [--batch 256]
                                                  [--steps 5] [--threads 1]

Two tables, all measured in this run:
1. numlab.mixed_precision.train (the demo task, with its per-step fp32 reference gradient and
   statistics) against a bare torch loop doing the same autocast / GradScaler steps with no
   bookkeeping (peer). Ratios > 1 are numlab's overhead inside the timed step; the last
   column is the whole call per step, including the untimed fp32 reference gradient.
2. One training step of a wider MLP (numlab.mixed_precision.step_times) per precision, as a
   speed-up over fp32, next to the speed-up of the bare matmul of the same shape (peer): how
   much of the 16-bit matmul speed survives in a whole step.
On a CPU, --threads 1 (default) measures one core; pass 0 for torch's default thread count.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _table import markdown, median  # noqa: E402

from numlab import device as nldevice  # noqa: E402
from numlab import mixed_precision as mp  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CASES = [("fp32", False), ("fp16", False), ("fp16", True), ("bf16", False)]


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def bare_demo_loop(precision, scaler, dev, steps, loss_scale=1e-5):
    """The demo task's steps with plain torch and no bookkeeping: ms per step (median)."""
    model, x, y = mp.demo_problem(0, dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.2 / loss_scale)
    scale = torch.amp.GradScaler(dev.type) if scaler else None
    times = []
    for _ in range(steps + 2):
        sync(dev)
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=DTYPES[precision], enabled=precision != "fp32"):
            loss = torch.nn.functional.mse_loss(model(x), y) * loss_scale
        if scale:
            scale.scale(loss).backward()
            scale.step(opt)
            scale.update()
        else:
            loss.backward()
            opt.step()
        sync(dev)
        times.append(1e3 * (time.perf_counter() - start))
    return median(times[2:])


def matmul_ms(precision, dev, width, batch, repeat=5):
    a = torch.randn(batch, width, device=dev, dtype=DTYPES[precision])
    b = torch.randn(width, width, device=dev, dtype=DTYPES[precision])
    a @ b
    times = []
    for _ in range(repeat):
        sync(dev)
        start = time.perf_counter()
        a @ b
        sync(dev)
        times.append(1e3 * (time.perf_counter() - start))
    return median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--demo-steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads; 0 = torch default")
    args = parser.parse_args(argv)
    dev = nldevice.pick(args.device)
    threads = args.threads or None
    if threads and dev.type == "cpu":
        torch.set_num_threads(threads)
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (
        f"{platform.processor() or platform.machine()}, kernels "
        f"{torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} thread(s)")
    print(f"device: {dev.type} ({where}); torch {torch.__version__}\n")

    rows = []
    for precision, scaler in CASES:  # warm-up: torch's first autograd call costs a second
        mp.train(precision, scaler=scaler, device=dev, steps=2, threads=threads)
        bare_demo_loop(precision, scaler, dev, 2)
    for precision, scaler in CASES:
        start = time.perf_counter()
        run = mp.train(precision, scaler=scaler, device=dev, steps=args.demo_steps,
                       loss_scale=1e-5, threads=threads)
        wall = 1e3 * (time.perf_counter() - start) / args.demo_steps
        bare = bare_demo_loop(precision, scaler, dev, args.demo_steps)
        rows.append([precision + (" + GradScaler" if scaler else ""),
                     f"{run.median_step_ms:.3f}", f"{bare:.3f}",
                     f"{run.median_step_ms / bare:.2f}", f"{wall:.3f}"])
    print("Demo task (Linear 64-64-1, batch 256): one step, median ms")
    print(markdown(["precision", "numlab.train step", "bare torch loop (peer)", "ratio",
                    "numlab.train wall per step (with fp32 reference and statistics)"], rows))

    times = mp.step_times(device=dev, width=args.width, batch=args.batch, steps=args.steps,
                          warmup=1, threads=threads)
    mm = {p: matmul_ms(p, dev, args.width, args.batch) for p in times.ms}
    rows = [[p, f"{times.ms[p]:.2f}", f"x{times.ratio(p):.2f}", f"{mm[p]:.3f}",
             f"x{mm['fp32'] / mm[p]:.2f}"] for p in times.ms]
    print(f"\nMLP 3 x ({args.width}x{args.width}) + tanh, batch {args.batch}: "
          "one training step vs one bare matmul (peer)")
    print(markdown(["precision", "step ms", "step speed-up vs fp32", "matmul ms",
                    "matmul speed-up vs fp32"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
