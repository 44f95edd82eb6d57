"""Peak memory of out-of-core prediction against input size (and of in-memory prediction, where it fits).

Run from the repository root:

    python benchmarks/bench_outofcore_predict.py                      # 0.25, 1 and 2 GB: ~10-15 min on 2 cores
    python benchmarks/bench_outofcore_predict.py --sizes-gb 1 4 16    # the issue's sizes (~3x that in free disk)

For each size (decimal GB of uint16 pixels, one square 2D image) a TIFF is generated in a
temporary folder and ``ai4life-kit predict --out-of-core`` denoises it in its own process, so the
process's peak RSS (``ru_maxrss`` from ``wait4``) is that of the prediction alone. Sizes up to
``--in-memory-max-gb`` (and that fit in the available memory) are also run with ``--in-memory``
for comparison. The model is a random-initialised U-Net of depth 1 and width 4 without batch norm
("tiny"): what is measured is memory and I/O against image size, which do not depend on the
network, and a real network would take hours per gigabyte on a CPU. ``--model RUN_DIR`` uses a
trained one instead. Tiles and batch size are the CLI's defaults unless given.

Results go to benchmarks/results/outofcore_predict.{json,md} (``--name`` changes the name);
inputs and outputs are deleted.

Linux's ``ru_maxrss`` of a child includes the RSS its parent had when it forked, so this script's
own process stays small: it imports only the standard library and generates the inputs and the
model in helper processes of its own.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
TINY = {
    "dims": 2,
    "in_channels": 1,
    "out_channels": 1,
    "depth": 1,
    "width": 4,
    "batch_norm": False,
    "n2v2": False,
    "residual": False,
}
# The in-memory path holds the raw image, a float32 copy, the normalised copy, one padded sample,
# the output and the written copy: about 6 float32 copies (measured 5.5) plus the process itself.
IN_MEMORY_FACTOR = 6.0


def _tiny_run(path: Path) -> Path:
    """A run directory holding a random-initialised tiny U-Net and made-up normalisation."""
    import torch

    from ai4life_kit.models.unet import UNet

    torch.manual_seed(0)
    (path / "checkpoints").mkdir(parents=True)
    state = UNet(**TINY).state_dict()
    torch.save({"model_args": TINY, "model_state": state}, path / "checkpoints" / "best.pt")
    norm = {"mean": [1000.0], "std": [300.0], "target_mean": [1000.0], "target_std": [300.0]}
    (path / "normalization.json").write_text(json.dumps(norm))
    return path


def _square(size_gb: float) -> tuple[int, int]:
    side = int(math.sqrt(size_gb * 1e9 / 2))
    return side, side


def _make_input(path: Path, shape: tuple[int, int], seed: int = 0) -> None:
    """A uint16 TIFF (BigTIFF when needed) filled block by block: smooth blobs plus Poisson-like noise."""
    import numpy as np
    import tifffile

    mm = tifffile.memmap(path, shape=shape, dtype=np.uint16, photometric="minisblack")
    offset, dtype = mm.offset, mm.dtype
    del mm
    rng = np.random.default_rng(seed)
    rows = max(1, (64 * 2**20) // (2 * shape[1]))  # ~64 MiB per block
    x = np.arange(shape[1], dtype=np.float32)
    for y0 in range(0, shape[0], rows):
        y1 = min(y0 + rows, shape[0])
        y = np.arange(y0, y1, dtype=np.float32)[:, None]
        clean = 800 + 600 * np.sin(y / 37.0) * np.cos(x / 53.0)
        block = np.memmap(path, dtype=dtype, mode="r+", offset=offset + y0 * shape[1] * 2, shape=(y1 - y0, shape[1]))
        block[:] = np.clip(clean + 30 * rng.standard_normal(clean.shape, dtype=np.float32), 0, 65535)
        block.flush()
        del block  # unmapped: the benchmark's own memory stays small too


def _helper(phase: str, path: Path, *extra: str) -> None:
    """Heavy set-up (numpy, torch) in a process of its own, so this one stays small."""
    subprocess.run([sys.executable, __file__, "--phase", phase, str(path), *extra], check=True)


def _run_predict(cmd: list[str]) -> dict:
    """Run one prediction process; its wall time, exit status and peak RSS (from wait4)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        err.seek(0)
        tail = err.read().strip().splitlines()[-1:] or [""]
    return {
        "exit_code": proc.returncode,
        "wall_s": round(wall, 2),
        "peak_rss_gib": round(usage.ru_maxrss / 2**20, 3),  # Linux: KiB
        "message": tail[0][:300],
    }


def _mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def _bench_size(size_gb: float, args: argparse.Namespace, model: Path, work: Path) -> list[dict]:
    shape = _square(size_gb)
    input_bytes = shape[0] * shape[1] * 2
    need_disk = 3 * input_bytes + 2**30  # input + float32 output + slack
    free = shutil.disk_usage(work).free
    base = {"size_gb": size_gb, "shape": list(shape), "mpix": round(shape[0] * shape[1] / 1e6, 1)}
    if free < need_disk:
        print(f"  {size_gb} GB: skipped, needs {need_disk / 1e9:.1f} GB free disk, {free / 1e9:.1f} GB left")
        return [{**base, "mode": "out-of-core", "skipped": f"needs {need_disk / 1e9:.1f} GB of free disk"}]
    src = work / f"input_{size_gb}gb.tif"
    t0 = time.perf_counter()
    _helper("make-input", src, *map(str, shape))
    print(f"  {size_gb} GB: {shape[0]}x{shape[1]} uint16 input written in {time.perf_counter() - t0:.0f} s")
    exe = str(Path(sys.executable).parent / "ai4life-kit")
    common = [exe, "predict", str(model), str(src), "-q", "--device", args.device, "--overwrite"]
    common += ["--batch-size", str(args.batch_size)] + (["--tile", args.tile] if args.tile else [])
    rows = []
    modes = ["out-of-core"]
    in_memory_need = IN_MEMORY_FACTOR * input_bytes * 2 + 2**30
    if size_gb <= args.in_memory_max_gb:
        if in_memory_need < 0.8 * _mem_available():
            modes.append("in-memory")
        else:
            rows.append({**base, "mode": "in-memory", "skipped": f"needs ~{in_memory_need / 2**30:.0f} GiB of RAM"})
    for mode in modes:
        out = work / mode
        result = _run_predict([*common, "--out", str(out), f"--{mode}"])
        dst = out / src.name
        mpix = shape[0] * shape[1] / 1e6
        row = {
            **base,
            "mode": mode,
            **result,
            "mpix_per_s": round(mpix / result["wall_s"], 2),
            "output_bytes": dst.stat().st_size if dst.exists() else None,
        }
        print(f"    {mode}: peak RSS {row['peak_rss_gib']:.2f} GiB, {row['wall_s']:.0f} s, exit {row['exit_code']}")
        rows.append(row)
        shutil.rmtree(out, ignore_errors=True)
    src.unlink()
    return rows


def _machine() -> str:
    mem = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem = int(line.split()[1]) / 2**20
    cpus = len(os.sched_getaffinity(0))
    return f"{platform.processor() or platform.machine()}, {cpus} CPUs, {mem:.0f} GiB RAM, {platform.platform()}"


def _markdown(r: dict) -> str:
    lines = [
        f"Measured {r['date']} on {r['machine']}; load average {r['load_before']} before, "
        f"{r['load_after']} after. Model: {r['model']}; tile {r['tile']}, batch {r['batch_size']}, "
        f"device {r['device']}. Each run is its own `ai4life-kit predict` process (peak RSS = its ru_maxrss; "
        "wall time includes start-up and the model load).",
        "",
        "| input (uint16) | pixels | mode | peak RSS (GiB) | wall (s) | MPix/s | output (GB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in r["runs"]:
        size = f"{row['size_gb']} GB ({row['shape'][0]}x{row['shape'][1]})"
        if "skipped" in row:
            lines.append(f"| {size} | {row['mpix']} MPix | {row['mode']} | skipped: {row['skipped']} | | | |")
            continue
        status = "" if row["exit_code"] == 0 else f" (failed: {row['message']})"
        out_gb = f"{row['output_bytes'] / 1e9:.2f}" if row["output_bytes"] else "-"
        lines.append(
            f"| {size} | {row['mpix']} MPix | {row['mode']}{status} | {row['peak_rss_gib']:.2f} | "
            f"{row['wall_s']:.0f} | {row['mpix_per_s']:.2f} | {out_gb} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-gb", type=float, nargs="+", default=[0.25, 1.0, 2.0], help="input sizes (uint16)")
    parser.add_argument("--in-memory-max-gb", type=float, default=1.0, help="also run --in-memory up to this size")
    parser.add_argument("--model", type=Path, help="run directory or .zip (default: a tiny random U-Net)")
    parser.add_argument("--tile", help="--tile for ai4life-kit predict (default: its own)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workdir", type=Path, help="where inputs and outputs go (default: a temporary folder)")
    parser.add_argument("--name", default="outofcore_predict", help="results file name (without suffix)")
    parser.add_argument("--phase", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        phase, path, *extra = args.phase
        if phase == "make-input":
            _make_input(Path(path), (int(extra[0]), int(extra[1])))
        else:
            _tiny_run(Path(path))
        return

    RESULTS.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": _machine(),
        "torch": subprocess.run(
            [sys.executable, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True
        ).stdout.strip(),
        "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "model": str(args.model) if args.model else "tiny random U-Net (depth 1, width 4, no batch norm)",
        "tile": args.tile or "default (768)",
        "batch_size": args.batch_size,
        "device": args.device,
        "runs": [],
    }
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="ai4life-ooc-bench-") as tmp:
        work = Path(tmp)
        model = args.model
        if model is None:
            model = work / "run"
            _helper("make-model", model)
        for size in args.sizes_gb:
            results["runs"].extend(_bench_size(size, args, model, work))
            (RESULTS / f"{args.name}.json").write_text(json.dumps(results, indent=2))  # partial results too
    results["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    (RESULTS / f"{args.name}.json").write_text(json.dumps(results, indent=2))
    table = _markdown(results)
    (RESULTS / f"{args.name}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
