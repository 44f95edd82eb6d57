"""Challenge submission image: size, build time, seconds per 1024 x 1024 x 10-slice case on CPU.

    .venv/bin/python benchmarks/bench_challenge.py [--engine auto] [--warm] [--save] [--repeat 2] [--slices 10]

1. trains a recipe-sized structN2V U-Net (depth 2, width 32, as model_specs/mdc24-*.yaml) for a
   few steps and packages it (what is timed downstream does not depend on how well it is trained);
2. ``challenge build`` -> a context; builds its image (``--no-cache`` unless ``--warm``; the base
   image stays cached and its one-time bootstrap is reported separately when it happens);
3. runs the image like Grand Challenge (no network, read-only, 4 GiB) on one ``(10, 1024, 1024)``
   uint16 stack, and the same entry point directly on this machine, for comparison;
4. optionally saves the image as ``.tar.gz`` (``--save``) and times it.

Writes ``benchmarks/results/challenge.json`` and prints it. Without docker or podman only the
direct run is measured (and the JSON says so).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

from ai4life_kit.challenge import runner
from ai4life_kit.challenge.base_image import LOCAL_BASE_IMAGE, ensure_base_image
from ai4life_kit.challenge.context import render_context
from ai4life_kit.challenge.contract import OUTPUT_DIR, TRACKS, check_output
from ai4life_kit.challenge.ctest import build_context_image, parse_summary
from ai4life_kit.challenge.engine import find_engine, run_container

RESULTS = Path(__file__).resolve().parent / "results" / "challenge.json"


def _package(root: Path) -> Path:
    from ai4life_kit.config import parse_spec
    from ai4life_kit.export import package_run
    from ai4life_kit.simulate import add_noise, simulate_ground_truth
    from ai4life_kit.training import train

    rng = np.random.default_rng(0)
    noisy = np.stack([add_noise(simulate_ground_truth((256, 256), rng, 1500.0), rng, structured_noise="row")])
    tifffile.imwrite(root / "noisy.tif", noisy, metadata={"axes": "IYX"})
    spec = parse_spec(
        {
            "name": "bench-structn2v2",
            "algorithm": {"name": "structn2v", "n2v2": True},
            "model": {"depth": 2, "width": 32},
            "data": {"dims": 2, "axes": "SYX", "patch_size": [64, 64], "val_fraction": 0.2},
            "training": {"epochs": 1, "steps_per_epoch": 5, "batch_size": 8, "val_patches": 8},
        },
        "benchmark",
    )
    run_dir = train(spec, [root / "noisy.tif"], None, root / "run", device="cpu", progress=False)
    return package_run(run_dir, root / "bench.bioimageio.zip", authors=["benchmark"], onnx=False, run_test=False).path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", default="auto", help="auto, docker, podman or none")
    parser.add_argument("--warm", action="store_true", help="reuse cached build layers (default: --no-cache build)")
    parser.add_argument("--save", action="store_true", help="also time `challenge save` (gzip, verify)")
    parser.add_argument("--slices", type=int, default=10)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=2, help="runs per measurement; the best is reported")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-challenge-"))
    log = print
    result: dict = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "case_shape": [args.slices, args.size, args.size],
    }
    try:
        t0 = time.perf_counter()
        pkg = _package(work)
        result["package_seconds"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        ctx = render_context([pkg], "structured", work / "bench-submission", log=log)
        result["context_seconds"] = round(time.perf_counter() - t0, 1)

        case = np.random.default_rng(1).integers(200, 4000, (args.slices, args.size, args.size), dtype=np.uint16)
        inputs = work / "input"
        (inputs / TRACKS["structured"].input_dir).mkdir(parents=True)
        tifffile.imwrite(inputs / TRACKS["structured"].input_dir / "case.tif", case)

        # the same entry point on this machine, without a container (best of --repeat: shared
        # CPUs make single timings noisy)
        models = runner.load_models([pkg])
        direct = []
        for _ in range(args.repeat):
            report = runner.run_cases(models, inputs, work / "direct", overwrite=True, log=lambda m: None)
            direct.append(round(report.results[0].seconds, 2))
        result["direct"] = {"seconds_per_case": min(direct), "all": direct}

        engine = find_engine(args.engine)
        result["engine"] = engine.describe() if engine else None
        if engine is not None:
            had_base = engine.name != "podman" or engine.image_exists(LOCAL_BASE_IMAGE)
            t0 = time.perf_counter()
            base = ensure_base_image(engine, log)
            if not had_base:
                result["base_bootstrap_seconds"] = round(time.perf_counter() - t0, 1)
            _, seconds = build_context_image(engine, ctx, log, base, no_cache=not args.warm)
            _, size = engine.image_info(ctx.image)
            result["build"] = {"seconds": round(seconds, 1), "cache": "warm" if args.warm else "none", "base": base}
            result["image_size_mb"] = round(size / 1e6)
            in_container, walls = [], []
            for i in range(args.repeat):
                out = work / f"output-{i}"
                out.mkdir()
                os.chmod(out, 0o777)
                run = run_container(engine, ctx.image, input_dir=inputs, output_dir=out, memory="4g")
                summary = parse_summary(run.output) or {}
                problems = check_output(out / OUTPUT_DIR / "case.tif", case.shape)
                if run.returncode != 0 or problems:
                    raise SystemExit(f"container run failed (exit {run.returncode}): {problems}\n{run.output[-2000:]}")
                in_container.append(summary["results"][0]["seconds"])
                walls.append(round(run.seconds, 2))
            result["container"] = {
                "seconds_per_case": min(in_container),
                "all": in_container,
                "wall_seconds_incl_start": min(walls),
                "flags": "--network=none --read-only --memory=4g",
            }
            if args.save:
                from ai4life_kit.challenge.save import save_context_image

                saved = save_context_image(ctx.path, work / "bench.tar.gz", log=log)
                result["save"] = {"seconds": round(saved.seconds, 1), "archive_mb": round(saved.size_bytes / 1e6)}
            engine.call("image", "prune", "-f", check=False)  # older builds of the tag; keeps the cache
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
