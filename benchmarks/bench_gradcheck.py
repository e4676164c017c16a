"""numlab.gradcheck.gradcheck against torch.autograd.gradcheck, in one run.

usage: python benchmarks/bench_gradcheck.py [--sizes 64 256 1024] [--repeats 5] [--threads 1]
                                           [--clock cpu|wall]

For every hand-written layer in numlab.layers (the correct and the wrong version) and every
input size n, times numlab's batched check and torch's check with fast_mode=False and
fast_mode=True (median of --repeats rounds in which the three take turns, so a shared
machine's load hits all three alike, after one warm-up round), all in float64 with the same
eps/atol/rtol, and prints a markdown table with the ratios, the three verdicts and numlab's
minor page faults per call (each one is fresh memory from the OS: at n = 1024 numlab's
temporaries cost many of them; it does not pool memory to avoid them, since no notebook
checks a layer that large).
Wrong layers are included on purpose: a checker must be fast on the failures too.
"""
from __future__ import annotations

import argparse
import functools
import platform
import resource
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _table import markdown, median  # noqa: E402

from numlab.finite_diff import gradcheck  # noqa: E402
from numlab.layers import LAYERS, problem  # noqa: E402

EPS, ATOL, RTOL = 1e-6, 1e-5, 1e-3


CLOCKS = {"cpu": time.thread_time, "wall": time.perf_counter}


def interleaved_ms(calls: dict, repeats: int, clock=time.thread_time) -> tuple[dict, dict, dict]:
    """Median ms of each call, timed in turn within every round (so a shared machine's load
    hits all of them alike), after one untimed warm-up round; each call's value; and each
    call's median count of minor page faults (fresh memory from the OS, ~2 us each here)."""
    values = {name: call() for name, call in calls.items()}  # warm-up: first vmap trace
    times = {name: [] for name in calls}
    faults = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = clock()
            call()
            times[name].append(1e3 * (clock() - start))
            faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return ({name: median(ts) for name, ts in times.items()}, values,
            {name: median(fs) for name, fs in faults.items()})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for both (1 keeps a shared machine's noise down)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu",
                        help="cpu: CPU time of this thread (torch runs on it with --threads 1; "
                             "other processes' load barely moves it); wall: elapsed time")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu measures one thread: use it with --threads 1")
    print(f"torch {torch.__version__}, {platform.machine()}, {args.threads} thread(s), float64, "
          f"eps={EPS:g} atol={ATOL:g} rtol={RTOL:g}, {args.clock} time, median of {args.repeats}\n")
    settings = {"eps": EPS, "atol": ATOL, "rtol": RTOL}
    rows, disagreements, ratios = [], 0, {}
    for name in LAYERS:
        for wrong in (False, True):
            for n in args.sizes:
                fn, inputs = problem(name, n, wrong=wrong, seed=0)
                check = functools.partial(torch.autograd.gradcheck, fn, inputs,
                                          raise_exception=False, **settings)

                def fast(check=check):
                    torch.manual_seed(0)  # fast mode draws random projections: repeatable
                    return check(fast_mode=True)

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ms, values, faults = interleaved_ms(
                        {"ours": functools.partial(gradcheck, fn, inputs, **settings),
                         "full": check, "fast": fast}, args.repeats, CLOCKS[args.clock])
                ours_ms, full_ms, fast_ms = ms["ours"], ms["full"], ms["fast"]
                ours, full, fast_ok = values["ours"], values["full"], values["fast"]
                agree = ours.passed == full
                disagreements += not agree
                ratios.setdefault(n, []).append(full_ms / ours_ms)
                verdicts = " / ".join("pass" if v else "FAIL" for v in (ours.passed, full, fast_ok))
                rows.append([f"{name}{' (wrong)' if wrong else ''}", n, f"{ours_ms:.2f}",
                             f"{faults['ours']:.0f}",
                             f"{full_ms:.1f}", f"{fast_ms:.2f}", f"{full_ms / ours_ms:.1f}x",
                             f"{fast_ms / ours_ms:.2f}x",
                             verdicts + ("" if agree else " (DISAGREE)")])
    print(markdown(["layer", "n", "numlab ms", "numlab faults", "torch full ms", "torch fast ms",
                    "full / numlab", "fast / numlab", "verdict numlab / full / fast"], rows))
    print()
    for n, rs in ratios.items():
        print(f"n = {n}: numlab vs torch's full check: speed-up {statistics.geometric_mean(rs):.1f}x "
              f"(geometric mean), min {min(rs):.1f}x, over {len(rs)} layers")
    goal = {n: min(rs) for n, rs in ratios.items() if n >= 256}
    if goal:
        print("goal, at least 10x torch's full check for n >= 256: " + ", ".join(
            f"n = {n} {'met' if r >= 10 else 'NOT met'} (slowest layer {r:.1f}x)"
            for n, r in goal.items()))
    print(f"verdicts that differ from torch's full check: {disagreements} of {len(rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
