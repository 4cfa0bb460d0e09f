"""The shift suite's transforms alone, timed pair by pair over a run's test images: what a machine's cores
spend making the suite's 75 shifted copies, apart from scoring them (`evaluate` does both, and on a GPU
overlaps them). Each shift runs as the suite runs it (brainlib.shifts: a thread per core, or batched),
so the sum is what the suite's transforms cost on this machine.

    .venv/bin/python scripts/shift_transform_times.py --run-dir runs/<run> [--severities 1,2,3] [--out times.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from brainlib import shifts
from brainlib.config import run_config
from brainlib.loader import load_run_data
from brainlib.robustness import parse_severities, sample_rows
from brainlib.shifts import SHIFTS


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--severities", default="1,2,3")
    parser.add_argument("--sample", type=int, default=0, help="a stratified sample of this many test images (0: all)")
    parser.add_argument("--out", default="", help="JSON file for the times")
    parser.add_argument(
        "--inner-threads",
        type=int,
        default=shifts.INNER_THREADS,
        help="threads each library may start inside one image's transform (PyTorch, OpenCV, SimpleITK), under "
        "the suite's thread per core; 0: each library's own default, one per core (default: the suite's own)",
    )
    args = parser.parse_args()
    shifts.INNER_THREADS = args.inner_threads
    cfg = run_config(args.run_dir)
    data = load_run_data(cfg)
    rows = data.rows("test")
    rows = sample_rows(rows, data.manifest["label_idx"].to_numpy()[rows], args.sample, cfg.seed)
    clean = np.asarray(data.images[rows])
    for shift in SHIFTS.values():  # imports and first-call set-up (MONAI's import alone took 5 s) left untimed
        shift(clean[:2], 1)
    times = {}
    for shift in SHIFTS.values():
        for severity in parse_severities(args.severities):
            start = time.perf_counter()
            shift(clean, severity)
            times[f"{shift.name}/{severity}"] = round(time.perf_counter() - start, 3)
            print(f"{shift.name} severity {severity}: {times[f'{shift.name}/{severity}']:.2f} s", flush=True)
    by_shift = {name: round(sum(t for k, t in times.items() if k.split("/")[0] == name), 3) for name in SHIFTS}
    result = {
        "images": len(clean),
        "side": int(clean.shape[-1]),
        "cores": os.cpu_count(),
        "inner_threads": args.inner_threads or "each library's default",
        "total_s": round(sum(times.values()), 2),
        "by_shift_s": dict(sorted(by_shift.items(), key=lambda kv: -kv[1])),
        "by_pair_s": times,
    }
    print(f"all {len(times)} pairs over {len(clean)} images: {result['total_s']:.1f} s on {os.cpu_count()} cores")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
