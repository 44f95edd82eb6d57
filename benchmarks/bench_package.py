"""``package`` wall time for a 2D model (bioimageio test included) and the zip size.

    .venv/bin/python benchmarks/bench_package.py [--repeats 3] [--width 32] [--consumers]

1. trains a recipe-sized N2V2 U-Net (2D, depth 2, width 32 as model_specs use) for a few steps on
   a simulated 512 x 512 image (how well it is trained does not change what is timed);
2. packages it ``--repeats`` times exactly as ``ai4life-kit package`` does (three weight formats,
   test tensors cropped from the training image, format validation, ``bioimageio test``) and
   records the wall time of each step;
3. optionally (``--consumers``) times ``validate --consumers``: the package in every consumer's own
   runtime (BioEngine, ilastik, deepImageJ's engines, QuPath), per consumer, runtimes already installed.

Aim: under 30 s for the whole ``package`` on 2 CPU cores. Writes
``benchmarks/results/package.json`` and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "package.json"


def _train(root: Path, width: int) -> Path:
    from ai4life_kit.config import parse_spec
    from ai4life_kit.simulate import simulate_dataset
    from ai4life_kit.training import train

    sim = simulate_dataset(root / "sim", shape=(512, 512), n=1, seed=0)
    spec = parse_spec(
        {
            "name": "bench-n2v2-2d",
            "algorithm": {"name": "n2v2"},
            "model": {"depth": 2, "width": width},
            "data": {"dims": 2, "patch_size": [64, 64], "val_fraction": 0.1},
            "training": {"epochs": 1, "steps_per_epoch": 5, "batch_size": 8, "val_patches": 8},
        },
        "benchmark",
    )
    return train(spec, [str(p) for p in sim["noisy"]], None, root / "run", device="cpu", progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--consumers", action="store_true", help="also time the package in every consumer runtime")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    import torch

    from ai4life_kit.export import package_run

    work = Path(tempfile.mkdtemp(prefix="bench-package-"))
    run_dir = _train(work, args.width)
    runs = []
    for i in range(args.repeats):
        out = work / f"bench-{i}.bioimageio.zip"
        t0 = time.perf_counter()
        result = package_run(
            run_dir, out, name="Benchmark N2V2 2D", authors=["Benchmark"], github_user="benchmark-user"
        )
        wall = time.perf_counter() - t0
        if not result.report.passed:
            raise SystemExit(f"package failed its test: {result.report.one_line()}")
        runs.append(
            {
                "wall_seconds": round(wall, 2),
                "steps": {k: round(v, 2) for k, v in result.timings.items()},
                "zip_bytes": result.size_bytes,
            }
        )
        print(f"run {i + 1}/{args.repeats}: {wall:.1f} s, {result.size_bytes / 1e6:.2f} MB")

    import io
    import zipfile

    import numpy as np

    with zipfile.ZipFile(out) as zf:
        test_shape = list(np.load(io.BytesIO(zf.read("test_input.npy"))).shape)
    walls = [r["wall_seconds"] for r in runs]
    summary = {
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        },
        "model": {"dims": 2, "depth": 2, "width": args.width, "algorithm": "n2v2"},
        "weight_formats": result.weight_formats,
        "test_tensor_shape": test_shape,
        "package_wall_seconds_median": round(statistics.median(walls), 2),
        "package_wall_seconds_min": round(min(walls), 2),
        "target_seconds": 30,
        "zip_bytes": runs[-1]["zip_bytes"],
        "zip_megabytes": round(runs[-1]["zip_bytes"] / 1e6, 2),
        "runs": runs,
    }
    if args.consumers:
        from ai4life_kit.export.consumers import RUNTIMES, ensure_runtime, run_consumers

        for name in RUNTIMES:  # installs are timed apart from the checks
            ensure_runtime(name)
        t0 = time.perf_counter()
        matrix = run_consumers(out)
        summary["consumers_seconds"] = round(time.perf_counter() - t0, 2)
        summary["consumers_seconds_each"] = matrix.seconds
        summary["consumers_passed"] = matrix.passed
        summary["consumers_failures"] = matrix.failures()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
