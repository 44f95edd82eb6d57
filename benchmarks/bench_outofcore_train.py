"""Peak memory of training against the size of the data: in-memory vs lazy (out-of-core) loading.

Run from the repository root:

    python benchmarks/bench_outofcore_train.py [--sizes-gb 1 4 20] [--memory-up-to-gb 1] [--steps 100]

For each size, a stack of 2048x2048 uint16 planes (pixel values from a Poisson-noisy pattern,
written plane by plane so the script itself never holds the data) is written as one BigTIFF,
and ``ai4life-kit train`` (N2V2, the shipped 2D recipe at depth 2 / width 32, 64x64 patches,
batch 16) runs on it in a subprocess with ``data.loading: lazy``, and with ``memory`` for the
sizes up to ``--memory-up-to-gb`` (the in-memory path holds the data once as float32, about
2.4x the uint16 size at peak with torch, so much larger sizes would not fit this machine).
Reported per run: the child's peak RSS (``ru_maxrss``), the wall time to the first finished
epoch (opening the data, sampling the normalisation statistics), training patches/s, and the
validation loss at the end.

Needs free disk space for the largest size (checked first). Results go to
``benchmarks/results/outofcore_train.{json,md}``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parents[1]
PLANE = (2048, 2048)


def write_stack(path: Path, size_gb: float, seed: int = 0) -> tuple[int, ...]:
    """A BigTIFF of ``size_gb`` GB of uint16 planes, written one plane at a time."""
    n_planes = max(1, round(size_gb * 1e9 / (PLANE[0] * PLANE[1] * 2)))
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: PLANE[0], : PLANE[1]]
    pattern = 40 + 30 * (np.sin(yy / 37.0) * np.cos(xx / 23.0) + 1)  # photons: structure to learn

    def planes():
        for _ in range(n_planes):
            yield rng.poisson(pattern).astype(np.uint16)

    tifffile.imwrite(path, planes(), shape=(n_planes, *PLANE), dtype=np.uint16, bigtiff=True, metadata={"axes": "IYX"})
    return (n_planes, *PLANE)


def run_training(data: Path, out: Path, loading: str, steps: int, epochs: int) -> dict:
    """``ai4life-kit train`` in a child process; its peak RSS from ``RUSAGE_CHILDREN``."""
    driver = (
        "import resource, subprocess, sys, json, time\n"
        "t0 = time.perf_counter()\n"
        "rc = subprocess.call(sys.argv[1:])\n"
        "print(json.dumps({'rc': rc, 'wall_s': time.perf_counter() - t0,\n"
        "  'peak_rss_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))\n"
    )
    cmd = [
        sys.executable, "-c", driver,
        sys.executable, "-m", "ai4life_kit", "train", str(REPO / "model_specs" / "n2v2-2d.yaml"),
        "--data", str(data), "--out", str(out), "--loading", loading,
        "--epochs", str(epochs), "--steps-per-epoch", str(steps // epochs), "--batch-size", "16",
        "--patch-size", "64,64", "--device", "cpu", "--quiet", "--overwrite",
    ]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True)
    report = json.loads(res.stdout.strip().splitlines()[-1])
    if report["rc"] != 0:
        return {"loading": loading, "error": res.stderr.strip().splitlines()[-1] if res.stderr else "failed"}
    with open(out / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    summary = json.loads((out / "training_summary.json").read_text())
    first_epoch_s = report["wall_s"] - sum(float(r["seconds"]) for r in rows[1:])
    return {
        "loading": loading,
        "peak_rss_gib": report["peak_rss_kib"] / 2**20,
        "wall_s": report["wall_s"],
        "to_first_epoch_s": first_epoch_s,
        "patches_per_s": float(np.median([float(r["patches_per_s"]) for r in rows[1:]] or [rows[0]["patches_per_s"]])),
        "final_val_loss": float(rows[-1]["val_loss"]),
        "steps": summary["steps"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-gb", type=float, nargs="+", default=[1.0, 4.0, 20.0])
    parser.add_argument("--memory-up-to-gb", type=float, default=1.0, help="also train in memory up to this size")
    parser.add_argument("--steps", type=int, default=100, help="training steps per run (4 epochs)")
    parser.add_argument("--workdir", help="parent of the temporary folder (needs the largest size free)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-ooc-train-", dir=args.workdir))
    free = shutil.disk_usage(workdir).free / 1e9
    if free < max(args.sizes_gb) * 1.05 + 1:
        sys.exit(f"need {max(args.sizes_gb) * 1.05 + 1:.1f} GB free in {workdir}, have {free:.1f} GB")
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "memory_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
        "loadavg_start": os.getloadavg(),
        "steps": args.steps,
        "runs": [],
    }
    try:
        for size in args.sizes_gb:
            data = workdir / f"stack-{size:g}gb.tif"
            t0 = time.perf_counter()
            shape = write_stack(data, size)
            print(f"{size:g} GB: wrote {shape} in {time.perf_counter() - t0:.0f} s", flush=True)
            modes = ["lazy"] + (["memory"] if size <= args.memory_up_to_gb else [])
            for loading in modes:
                res = run_training(data, workdir / f"run-{size:g}-{loading}", loading, args.steps, 4)
                res |= {"size_gb": data.stat().st_size / 1e9, "shape": shape}
                report["runs"].append(res)
                print(json.dumps(res), flush=True)
                shutil.rmtree(workdir / f"run-{size:g}-{loading}", ignore_errors=True)
            data.unlink()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report["loadavg_end"] = os.getloadavg()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "outofcore_train.json").write_text(json.dumps(report, indent=2))
    lines = [
        f"# Training memory vs data size ({report['date']}, {report['machine']}, "
        f"{report['memory_gib']:.0f} GiB RAM, load {report['loadavg_start'][0]:.1f})",
        "",
        "| data on disk (GB) | loading | peak RSS (GiB) | to first epoch (s) | patches/s | wall (s) |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        if "error" in r:
            lines.append(f"| {r['size_gb']:.2f} | {r['loading']} | failed: {r['error']} | | | |")
        else:
            lines.append(
                f"| {r['size_gb']:.2f} | {r['loading']} | {r['peak_rss_gib']:.2f} | {r['to_first_epoch_s']:.1f} "
                f"| {r['patches_per_s']:.1f} | {r['wall_s']:.0f} |"
            )
    (RESULTS / "outofcore_train.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
