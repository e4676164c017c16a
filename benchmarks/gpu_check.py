"""Notebook 04's comparisons on a CUDA GPU: underflow, skipped steps, fp32/fp16/bf16 step times.

usage: python benchmarks/gpu_check.py [--width 4096] [--batch 4096] [--steps 20] [--strict]

Prints markdown tables for the README:
1. what autocast and torch.amp.GradScaler can do on the GPU (numlab.device.capabilities);
2. the share of gradient entries flushed to zero on the demo task (loss x 1e-5): fp16
   without scaling, fp16 with the loss times 2**15, bf16; GPU next to CPU (the notebook's);
3. the scaler's skipped steps: injected overflows at steps 12, 13, 30 (growth_interval 5)
   and the first real overflows with the loss at 1 (growth_interval 10);
4. median time of one training step of an MLP (three width x width layers, tanh) per
   precision, as a speed-up over fp32, with TF32 off (true fp32) and on.
Without CUDA it says so and exits with status 0 (so `make bench` passes on a laptop), or 1
with --strict. `--device cpu` runs the same tables on the CPU (to try the script anywhere).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _table import markdown  # noqa: E402

from numlab import device as nldevice  # noqa: E402
from numlab import mixed_precision as mp  # noqa: E402


def underflow_rows(devices):
    rows = []
    for dev in devices:
        m = mp.gradient_magnitudes(loss_scale=1e-5, scale=2.0**15, device=dev)
        rows.append([dev, f"{np.median(m.fp32):.2e}", f"{100 * m.zero_fp16:.1f}%",
                     f"{100 * m.zero_fp16_scaled:.2f}%", f"{100 * m.zero_bf16:.2f}%"])
    return rows


def scaler_rows(dev):
    injected = mp.train("fp16", scaler=True, steps=40, init_scale=2.0**10, growth_interval=5,
                        overflow_at=(12, 13, 30), device=dev)
    wild = mp.train("fp16", scaler=True, steps=80, loss_scale=1.0, growth_interval=10,
                    device=dev)
    bf16 = mp.train("bf16", scaler=True, steps=80, loss_scale=1.0, growth_interval=10,
                    device=dev)
    rows = []
    for name, run in [("fp16, injected at 12, 13, 30", injected),
                      ("fp16, loss x 1, real overflows", wild),
                      ("bf16, loss x 1, real overflows", bf16)]:
        rows.append([name, str(run.skipped), f"2**{np.log2(run.scale.max()):.0f}",
                     f"2**{np.log2(run.scale[-1]):.0f}", f"{run.loss[-1]:.4f}"])
    return rows, injected.skipped == [12, 13, 30]


def speed_rows(dev, width, batch, steps):
    rows = []
    settings = [("TF32 off", False)] + ([("TF32 on", True)] if dev.type == "cuda" else [])
    for label, tf32 in settings:
        if dev.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = tf32
        t = mp.step_times(device=dev, width=width, batch=batch, steps=steps, warmup=3)
        rows += [[label, p, f"{t.ms[p]:.3f}", f"x{t.ratio(p):.2f}"] for p in t.ms]
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu to try it")
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--strict", action="store_true", help="exit 1 when there is no CUDA")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device here (torch {torch.__version__}, "
              f"devices available: {nldevice.available()}); nothing was measured. "
              "Run this script on a machine with an NVIDIA GPU and a CUDA build of torch.")
        return 1 if args.strict else 0
    dev = nldevice.pick(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    cuda = torch.version.cuda or "-"
    print(f"## gpu_check on {dev.type}: {name} (torch {torch.__version__}, CUDA {cuda})\n")
    print(nldevice.capabilities(dev.type), "\n")

    devices = [dev.type] + (["cpu"] if dev.type != "cpu" else [])
    print("Gradient entries flushed to 0 on the demo task (loss x 1e-5):")
    print(markdown(["device", "median abs(grad), fp32", "fp16", "fp16, loss x 2**15", "bf16"],
                   underflow_rows(devices)))

    rows, exact = scaler_rows(dev)
    print("\nGradScaler (torch.amp.GradScaler): skipped steps and scale:")
    print(markdown(["run", "skipped steps", "largest scale", "final scale", "final loss"], rows))
    print(f"skipped steps == injected overflows: {exact}")

    width, batch = (args.width, args.batch) if dev.type == "cuda" else (256, 256)
    steps = args.steps if dev.type == "cuda" else 3
    print(f"\nOne training step, MLP 3 x ({width}x{width}) + tanh, batch {batch}, median ms:")
    print(markdown(["fp32 matmuls", "precision", "ms/step", "speed-up vs fp32"],
                   speed_rows(dev, width, batch, steps)))
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
