"""Peak memory of preparing training data in memory: the statistics, normalisation and patch buffer.

Run from the repository root:

    .venv/bin/python benchmarks/bench_training_memory.py [--image-size 2048] [--n-images 4]
        [--stack-shape 128 1024 1024] [--repeats 1]

Cases (uint16 TIFFs with a Poisson-noisy pattern, written once into a temporary folder):

- ``2d-files``: ``--n-images`` 2D images of ``--image-size`` squared (N2V; one file held out);
- ``3d-stack``: one 3D stack of ``--stack-shape`` (N2V; a strip held out, the single-image split);
- ``2d-pairs``: two 2D input/target pairs of ``--image-size`` squared (CARE; inputs and targets).

Each case runs once per implementation, each time in a fresh child process: what ``train`` does
between reading the spec and building the model (``load_training_set`` with ``loading: memory``,
``split_validation``, ``training_stats`` for inputs and targets, ``make_sampler`` for the
training and validation sets, on the CPU). ``baseline`` is a copy of the code before defect 15
was fixed (``CanonicalView.to_array`` per file, ``channel_stats`` with ``img.std(dtype=float64)``
and ``np.square(img, dtype=float64)``, ``normalise`` into new arrays and a sampler that copies
them into one more buffer, the loaded arrays still referenced); ``current`` is the kit as it is.

Reported per run: the data's size in its file dtype and as float32 (what the ``loading: auto``
switch compares with ``AUTO_LAZY_BYTES``), the peak resident memory the preparation added
(``VmHWM`` after resetting it through ``/proc/self/clear_refs``, minus the resident memory once
torch and the kit are imported), that peak over the float32 size, the memory still held once the
samplers exist (what training keeps), the wall time, and the child's whole peak RSS
(``ru_maxrss``, imports included). Both implementations must draw the same patches (checked).
Linux only. Results go to ``benchmarks/results/training_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

RESULTS = Path(__file__).parent / "results"
PATCH = {2: (64, 64), 3: (16, 64, 64)}
VAL_FRACTION = 0.1


# -- the data ------------------------------------------------------------------------------------


def _planes(shape: tuple[int, ...], n: int, seed: int):
    """``n`` uint16 planes of ``shape``: Poisson photons over a smooth pattern."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    pattern = 200 + 150 * np.sin(yy / 37.0) * np.cos(xx / 23.0)
    for _ in range(n):
        yield rng.poisson(pattern).astype(np.uint16)


def write_cases(root: Path, image_size: int, n_images: int, stack_shape: tuple[int, int, int]) -> dict:
    """Write every case's files under ``root``; return ``{case: (inputs, targets, dims)}``."""
    plane = (image_size, image_size)
    cases = {}
    files = []
    for i, img in enumerate(_planes(plane, n_images, seed=1)):
        files.append(root / f"img{i}.tif")
        tifffile.imwrite(files[-1], img)
    cases["2d-files"] = (files, None, 2)
    stack = root / "stack.tif"
    tifffile.imwrite(
        stack, _planes(stack_shape[1:], stack_shape[0], seed=2), shape=stack_shape, dtype=np.uint16, bigtiff=True
    )
    cases["3d-stack"] = ([stack], None, 3)
    inputs, targets = [], []
    for i, (noisy, clean) in enumerate(zip(_planes(plane, 2, seed=3), _planes(plane, 2, seed=4), strict=True)):
        inputs.append(root / f"noisy{i}.tif")
        targets.append(root / f"clean{i}.tif")
        tifffile.imwrite(inputs[-1], noisy)
        tifffile.imwrite(targets[-1], clean)
    cases["2d-pairs"] = (inputs, targets, 2)
    return cases


# -- the baseline: the in-memory path before defect 15 was fixed -----------------------------------


def baseline_channel_stats(images, names=None):
    """``channel_stats`` before defect 15: a float64 copy of each image for ``std``, another for the squares."""
    from ai4life_kit.errors import DataError

    n_channels = images[0].shape[1]
    total = np.zeros(n_channels)
    total_sq = np.zeros(n_channels)
    count = 0
    for i, img in enumerate(images):
        axes = (0, *range(2, img.ndim))
        per_file_std = img.std(axis=axes, dtype=np.float64)
        if np.any(per_file_std == 0):
            name = names[i] if names is not None else f"image {i}"
            raise DataError(f"{name} is constant in channel {int(np.argmin(per_file_std))}: nothing to learn from")
        total += img.sum(axis=axes, dtype=np.float64)
        total_sq += np.square(img, dtype=np.float64).sum(axis=axes)
        count += img.size // n_channels
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return mean.tolist(), std.tolist()


def baseline_load(inputs, targets, dims, axes=None):
    """``load_training_set(loading="memory")`` before defect 15: ``to_array()`` per file (one float32 array each)."""
    from ai4life_kit.data.loading import load_training_set

    ts = load_training_set(inputs, targets, dims, axes, loading="lazy")  # opens and checks the files only
    ts.images = [v.to_array() for v in ts.images]
    ts.targets = None if ts.targets is None else [v.to_array() for v in ts.targets]
    return ts


def baseline_make_sampler(ts, norm, patch, device):
    """``make_sampler`` before defect 15: normalised copies, copied again into the sampler's buffer.

    The sampler here copies them into one new buffer, as the old sampler's ``torch.cat`` did.
    """
    from ai4life_kit.data.normalization import normalise
    from ai4life_kit.data.patches import PatchSampler

    nd = len(patch)
    imgs = [normalise(a, norm["mean"], norm["std"], nd) for a in ts.images]
    tgts = ts.targets and [normalise(a, norm["target_mean"], norm["target_std"], nd) for a in ts.targets]
    return PatchSampler(imgs, tgts, patch, device, ts.names)


# -- one run, in a child process --------------------------------------------------------------------


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(impl: str, inputs: list[str], targets: list[str] | None, dims: int) -> dict:
    """Prepare the data as ``train`` does (``impl``: ``baseline`` or ``current``); memory and time."""
    import torch

    from ai4life_kit.data.loading import load_training_set, make_sampler, split_validation, training_stats

    patch = PATCH[dims]
    device = torch.device("cpu")
    load, stats, sampler = (
        (baseline_load, baseline_channel_stats, baseline_make_sampler)
        if impl == "baseline"
        else (lambda i, t, d: load_training_set(i, t, d, loading="memory"), training_stats, make_sampler)
    )
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # VmHWM := VmRSS
    before = _status_kib("VmRSS")
    t0 = time.perf_counter()
    # What _train does, in order, keeping what it keeps (ts, the two sets, both samplers).
    ts = load(inputs, targets, dims)
    train_set, val_set = split_validation(ts, VAL_FRACTION, patch)
    mean, std = stats(train_set.images, train_set.names)
    t_mean, t_std = mean, std
    if train_set.targets is not None:
        t_mean, t_std = stats(train_set.targets, [f"target {n}" for n in train_set.names])
    norm = {"mean": mean, "std": std, "target_mean": t_mean, "target_std": t_std}
    train_sampler = sampler(train_set, norm, patch, device)
    val_sampler = sampler(val_set, norm, patch, device) if val_set is not None else train_sampler
    wall = time.perf_counter() - t0
    peak, held = _status_kib("VmHWM"), _status_kib("VmRSS")
    views = load_training_set(inputs, targets, dims, loading="lazy")
    n = sum(v.size for v in views.images + (views.targets or []))
    native = sum(v.size * v.dtype.itemsize for v in views.images + (views.targets or []))
    digest = []
    for s in (train_sampler, val_sampler):
        x, y = s.sample(64, torch.Generator().manual_seed(0))
        digest.append(float(x.double().sum()) + (float(y.double().sum()) if y is not None else 0.0))
    return {
        "impl": impl,
        "native_mb": native / 2**20,
        "float32_mb": n * 4 / 2**20,
        "peak_mb": (peak - before) / 1024,
        "held_mb": (held - before) / 1024,
        "wall_s": wall,
        "process_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "mean": mean,
        "std": std,
        "patch_digest": digest,
    }


def run_child(impl: str, inputs, targets, dims: int) -> dict:
    cmd = [sys.executable, __file__, "--child", impl, str(dims), json.dumps([str(p) for p in inputs])]
    cmd.append(json.dumps([str(p) for p in targets]) if targets else "null")
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{impl} child failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=2048)
    parser.add_argument("--n-images", type=int, default=4)
    parser.add_argument("--stack-shape", type=int, nargs=3, default=[128, 1024, 1024])
    parser.add_argument("--repeats", type=int, default=1, help="runs per case and implementation (the median)")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        impl, dims, inputs, targets = args.child
        print(json.dumps(child(impl, json.loads(inputs), json.loads(targets), int(dims))))
        return
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "loadavg_start": os.getloadavg(),
        "runs": [],
    }
    header = (
        f"{'case':<9} {'impl':<8} {'file MB':>8} {'float32 MB':>10} {'peak MB':>8} {'peak/f32':>8} "
        f"{'held MB':>8} {'wall s':>7} {'process MB':>10}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-train-mem-") as tmp:
        cases = write_cases(Path(tmp), args.image_size, args.n_images, tuple(args.stack_shape))
        print(header, flush=True)
        for case, (inputs, targets, dims) in cases.items():
            results = {}
            for impl in ("baseline", "current"):
                runs = [run_child(impl, inputs, targets, dims) for _ in range(args.repeats)]
                r = sorted(runs, key=lambda r: r["peak_mb"])[len(runs) // 2] | {"case": case}
                results[impl] = r
                report["runs"].append(r)
                print(
                    f"{case:<9} {impl:<8} {r['native_mb']:>8.0f} {r['float32_mb']:>10.0f} {r['peak_mb']:>8.0f} "
                    f"{r['peak_mb'] / r['float32_mb']:>8.2f} {r['held_mb']:>8.0f} {r['wall_s']:>7.2f} "
                    f"{r['process_peak_mb']:>10.0f}",
                    flush=True,
                )
            old, new = results["baseline"], results["current"]
            same = old["patch_digest"] == new["patch_digest"]
            rel = max(abs(a / b - 1) for a, b in zip(old["mean"] + old["std"], new["mean"] + new["std"], strict=True))
            print(
                f"{case:<9} peak {old['peak_mb'] / new['peak_mb']:.1f}x lower; same patches: {same}; "
                f"statistics differ by {rel:.1e} (relative)",
                flush=True,
            )
    report["loadavg_end"] = os.getloadavg()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "training_memory.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
