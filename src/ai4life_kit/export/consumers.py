"""Test a bioimage.io package in the runtimes its consumers really run, and say which weights load where.

A package that passes ``bioimageio test`` in our own stack (torch 2.13) can still fail where a
scientist runs it: deepImageJ's libtorch 2.0, bioimage.io's review runtime (torch 2.5.1,
bioimageio.core 0.10.4), ilastik 1.4.2 (bioimageio.core 0.10.2, torch 2.7). Each of those runtimes
is a virtual environment installed from PyPI on first use into a cache outside the project
(``$AI4LIFE_KIT_CACHE/runtimes``, default ``~/.cache/ai4life-kit/runtimes``) and reused after.
The checks run there in a subprocess (:mod:`ai4life_kit.export._consumer_probe`), so nothing of
the running environment leaks into them.

The facts behind each consumer (versions, tolerances, limits) are in the project's
``shared/reference/consumers.md``; in short:

============== ============================================= ================================
consumer        runtime                                        weights it runs, in its order
============== ============================================= ================================
current         this environment                               state dict, TorchScript, ONNX
bioengine       torch 2.5.1, bioimageio.core 0.10.4, ORT 1.20.1 state dict, TorchScript, ONNX
ilastik         torch 2.7.1, bioimageio.core 0.10.2             TorchScript, state dict
deepimagej      torch 2.0.1 (libtorch 2.0.0), ORT 1.15.0        TorchScript, ONNX
deepimagej-1.13 torch 1.13.1 (JDLL's default install)          TorchScript
qupath          rules, TorchScript as deepImageJ's engine       TorchScript (2D only)
============== ============================================= ================================
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ai4life_kit.errors import Ai4LifeKitError, UserInputError

__all__ = [
    "CONSUMERS",
    "RUNTIMES",
    "Cell",
    "ConsumerReport",
    "Runtime",
    "default_cache_dir",
    "ensure_runtime",
    "run_consumers",
]

_MARK = "@@AI4LIFE_KIT_CONSUMER@@"
_PROBE = Path(__file__).with_name("_consumer_probe.py")
_TESTRUN = Path(__file__).with_name("_testrun.py")
_STAMP = "ai4life-kit-runtime.json"
WEIGHT_FORMATS = ("pytorch_state_dict", "torchscript", "onnx")
# deepImageJ's own implementations (JDLL); anything else and it refuses the model.
_DIJ_PROCESSING = {
    "binarize",
    "clip",
    "ensure_dtype",
    "fixed_zero_mean_unit_variance",
    "scale_linear",
    "scale_range",
    "sigmoid",
    "zero_mean_unit_variance",
}
# ilastik's smallest tiles; its blockwise prediction must match the whole image at these sizes.
ILASTIK_MIN_BLOCK = {2: 512, 3: 64}


@dataclass(frozen=True)
class Runtime:
    """A consumer's Python runtime: exact pins installed into a venv of their own."""

    name: str
    requirements: tuple[str, ...]
    description: str

    def path(self, cache: Path) -> Path:
        return cache / "runtimes" / self.name


RUNTIMES: dict[str, Runtime] = {
    "bioengine": Runtime(
        "bioengine",
        # torchvision 0.20.1 and tensorflow are in the BioEngine too; our weights need neither.
        (
            "torch==2.5.1",
            "numpy==1.26.4",
            "bioimageio.core==0.10.4",
            "onnxruntime==1.20.1",
            # bioimageio.spec 0.5.10 cannot serialise with pydantic 2.14
            "pydantic<2.14",
        ),
        "bioimage.io's review runtime (BioEngine)",
    ),
    "ilastik": Runtime(
        "ilastik",
        ("torch==2.7.1", "bioimageio.core==0.10.2", "bioimageio.spec==0.5.9.1", "pydantic<2.14"),
        "ilastik 1.4.2's bioimageio stack with the torch of its environment",
    ),
    "deepimagej": Runtime(
        "deepimagej",
        # libtorch 2.0.0 is JDLL's newest PyTorch engine; onnxruntime 1.15 is the oldest for Python 3.11
        # (JDLL runs 1.13.1).
        ("torch==2.0.1", "numpy<2", "onnxruntime==1.15.0"),
        "deepImageJ's engines: PyTorch 2.0 (libtorch) and onnxruntime",
    ),
    "deepimagej-1.13": Runtime(
        "deepimagej-1.13",
        ("torch==1.13.1", "numpy<2"),
        "JDLL's default PyTorch 1.13.1 engine (used for rdfs whose pytorch_version is 1.x)",
    ),
}


@dataclass(frozen=True)
class Consumer:
    """Where scientists run models: which runtime, which checks, which weight formats (in its order)."""

    name: str
    title: str
    runtime: str | None
    checks: tuple[str, ...]
    weight_formats: tuple[str, ...]


CONSUMERS: dict[str, Consumer] = {
    c.name: c
    for c in (
        Consumer("current", "this environment", None, ("bioimageio",), WEIGHT_FORMATS),
        Consumer("bioengine", "bioimage.io review (BioEngine)", "bioengine", ("bioimageio",), WEIGHT_FORMATS),
        Consumer(
            "ilastik",
            "ilastik 1.4.2",
            "ilastik",
            ("rules", "bioimageio", "blockwise"),
            ("torchscript", "pytorch_state_dict"),
        ),
        Consumer("deepimagej", "deepImageJ (Fiji)", "deepimagej", ("rules", "engine"), ("torchscript", "onnx")),
        Consumer("deepimagej-1.13", "deepImageJ, PyTorch 1.13.1", "deepimagej-1.13", ("engine",), ("torchscript",)),
        Consumer("qupath", "QuPath", "deepimagej", ("rules", "engine"), ("torchscript",)),
    )
}


@dataclass
class Cell:
    """One consumer x weight format (or ``rules``) result."""

    status: str
    """``passed``, ``failed`` or ``n/a`` (the consumer does not run this, or cannot)."""
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.status == "failed"


@dataclass
class ConsumerReport:
    """The matrix: consumer -> column (``rules`` or a weight format) -> :class:`Cell`."""

    source: str
    cells: dict[str, dict[str, Cell]] = field(default_factory=dict)
    versions: dict[str, dict[str, str]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not any(cell.failed for row in self.cells.values() for cell in row.values())

    def failures(self) -> list[str]:
        return [
            f"{consumer} {column}: {cell.detail}"
            for consumer, row in self.cells.items()
            for column, cell in row.items()
            if cell.failed
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "passed": self.passed,
            "cells": {c: {k: vars(v) for k, v in row.items()} for c, row in self.cells.items()},
            "versions": self.versions,
            "seconds": self.seconds,
        }


def default_cache_dir() -> Path:
    """``$AI4LIFE_KIT_CACHE`` or ``$XDG_CACHE_HOME/ai4life-kit`` (default ``~/.cache/ai4life-kit``)."""
    base = os.environ.get("AI4LIFE_KIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ai4life-kit"
    )
    return Path(base)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock so that two processes never install the same runtime at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _stamp_ok(venv: Path, runtime: Runtime) -> bool:
    try:
        stamp = json.loads((venv / _STAMP).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return stamp.get("requirements") == list(runtime.requirements) and (venv / "bin" / "python").exists()


def ensure_runtime(name: str, cache: Path | None = None, log: Callable[[str], None] | None = None) -> Path:
    """The venv of runtime ``name``, installed from PyPI on first use; returns its ``python``.

    A venv is reused only when its stamp (written last, after a complete install) lists exactly
    the wanted requirements; an interrupted or outdated install is removed and redone.
    """
    runtime = RUNTIMES[name]
    cache = Path(cache or default_cache_dir())
    venv = runtime.path(cache)
    with _locked(venv.with_name(f".{name}.lock")):
        if _stamp_ok(venv, runtime):
            return venv / "bin" / "python"
        if log:
            log(f"installing the {name} runtime ({', '.join(runtime.requirements)}) into {venv}; this happens once")
        if venv.exists():
            shutil.rmtree(venv)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
        python = venv / "bin" / "python"
        # Old torch releases are CUDA builds on PyPI; pip takes them with their nvidia-* wheels
        # (several GB) and they run on the CPU.
        cmd = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *runtime.requirements]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.strip().splitlines() if not ln.startswith("WARNING: Location")]
            shutil.rmtree(venv, ignore_errors=True)
            raise Ai4LifeKitError(
                f"could not install the {name} runtime ({' '.join(runtime.requirements)}): "
                + (" | ".join(lines[-2:]) or f"pip exited with {proc.returncode}")
            )
        stamp = {"requirements": list(runtime.requirements), "install_seconds": round(time.perf_counter() - t0, 1)}
        (venv / _STAMP).write_text(json.dumps(stamp), encoding="utf-8")
        return python


# -- reading the package ------------------------------------------------------------------


@dataclass
class _Package:
    zip: Path
    root: Path
    rdf: dict[str, Any]

    @property
    def input(self) -> dict[str, Any]:
        return self.rdf["inputs"][0]

    @property
    def output(self) -> dict[str, Any]:
        return self.rdf["outputs"][0]

    def axis_ids(self, tensor: dict[str, Any]) -> list[str]:
        return [str(a.get("id", a.get("type"))) for a in tensor["axes"]]

    @property
    def spatial(self) -> list[str]:
        return [a for a in self.axis_ids(self.input) if a in ("z", "y", "x")]

    def file(self, source: str) -> Path:
        return self.root / source

    @property
    def weights(self) -> dict[str, Any]:
        return {k: v for k, v in (self.rdf.get("weights") or {}).items() if v}


def _open_package(path: Path, root: Path) -> _Package:
    from ai4life_kit.export.validate import inspect_zip

    rdf = inspect_zip(path)
    with zipfile.ZipFile(path) as zf:
        zf.extractall(root)
    return _Package(Path(path), root, rdf)


def _source(entry: Any) -> str:
    return entry["source"] if isinstance(entry, dict) else str(entry)


def _read_sample_tensor(pkg: _Package, tensor: dict[str, Any]) -> np.ndarray:
    """The tensor's ``sample_tensor`` TIFF as deepImageJ reads it: by its axes, into the rdf's order."""
    import tifffile

    path = pkg.file(_source(tensor["sample_tensor"]))
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        data = series.asarray()
        axes = series.axes.upper()
    letters = {"batch": "B", "channel": "C", "z": "Z", "y": "Y", "x": "X"}
    wanted = [letters[a] for a in pkg.axis_ids(tensor)]
    for i in reversed(range(len(axes))):  # drop singleton axes the tensor does not have (ImageJ's Q, S...)
        if axes[i] not in wanted and data.shape[i] == 1:
            data = data.squeeze(i)
            axes = axes[:i] + axes[i + 1 :]
    unknown = [a for a in axes if a not in wanted]
    if unknown:
        raise Ai4LifeKitError(f"sample tensor {path.name} has axes {axes!r} that the rdf tensor does not have")
    for a in wanted:
        if a not in axes:
            data = data[np.newaxis]
            axes = a + axes
    return np.ascontiguousarray(np.transpose(data, [axes.index(a) for a in wanted]), dtype=np.float32)


def _numpy_processing(pkg: _Package, steps_key: str, tensor: dict[str, Any]) -> list[dict[str, Any]]:
    return [dict(s) for s in tensor.get(steps_key, []) or []]


def _state_dict_model(pkg: _Package):
    """The packaged architecture file + state dict, in this environment's torch (the reference)."""
    import torch

    w = pkg.weights["pytorch_state_dict"]
    arch = w["architecture"]
    spec = importlib.util.spec_from_file_location("_packaged_architecture", pkg.file(_source(arch)))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    model = getattr(module, arch["callable"])(**(arch.get("kwargs") or {}))
    state = torch.load(pkg.file(_source(w)), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


@functools.cache
def _load_probe():
    """The probe module (run by path in the runtimes) loaded here too, for its processing maths."""
    spec = importlib.util.spec_from_file_location("_ai4life_kit_consumer_probe", _PROBE)
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)  # type: ignore[union-attr]
    return probe


def _apply_processing(steps: list[dict[str, Any]], x: np.ndarray, axes: list[str]) -> np.ndarray:
    return _load_probe()._apply(steps, x, axes)


def _valid_sizes(pkg: _Package) -> dict[str, tuple[int, int]]:
    """``axis -> (min, step)`` of the input's parameterized spatial sizes."""
    out = {}
    for a in pkg.input["axes"]:
        if a.get("id") in ("z", "y", "x"):
            size = a["size"]
            out[a["id"]] = (int(size["min"]), int(size["step"])) if isinstance(size, dict) else (int(size), 0)
    return out


def _resize(x: np.ndarray, sizes: list[int]) -> np.ndarray:
    """Crop (centre) or mirror-pad the trailing spatial axes of ``x`` to ``sizes``."""
    nd = len(sizes)
    for i, s in enumerate(sizes):
        axis = x.ndim - nd + i
        n = x.shape[axis]
        if n > s:
            start = (n - s) // 2
            x = np.take(x, range(start, start + s), axis=axis)
        elif n < s:
            pad = [(0, 0)] * x.ndim
            pad[axis] = ((s - n) // 2, s - n - (s - n) // 2)
            x = np.pad(x, pad, mode="symmetric")
    return np.ascontiguousarray(x, dtype=np.float32)


def _engine_cases(pkg: _Package, work: Path) -> list[dict[str, Any]]:
    """deepImageJ's sample-in / test-out case plus other valid sizes with reference outputs.

    The reference outputs of the other sizes come from the packaged architecture + state dict in
    this environment, pre- and post-processed as the rdf says.
    """
    import torch

    sample = _read_sample_tensor(pkg, pkg.input)
    test_out = np.load(pkg.file(_source(pkg.output["test_tensor"])))
    np.save(work / "sample.npy", sample)
    np.save(work / "test_output.npy", test_out.astype(np.float32))
    cases = [
        {
            "name": "sample input -> test output",
            "input": str(work / "sample.npy"),
            "expected": str(work / "test_output.npy"),
        }
    ]
    sizes = _valid_sizes(pkg)
    spatial = pkg.spatial
    in_axes, out_axes = pkg.axis_ids(pkg.input), pkg.axis_ids(pkg.output)
    model = _state_dict_model(pkg)
    shapes = {
        "smallest valid size": [sizes[a][0] for a in spatial],
        "larger, not square": [sizes[a][0] + (i + 1) * 2 * sizes[a][1] for i, a in enumerate(spatial)],
    }
    for label, shape in shapes.items():
        x = _resize(sample, shape)
        pre = _apply_processing(pkg.input.get("preprocessing") or [], x, in_axes)
        with torch.no_grad():
            y = model(torch.from_numpy(pre)).numpy()
        y = _apply_processing(pkg.output.get("postprocessing") or [], y, out_axes)
        stem = label.replace(" ", "_").replace(",", "")
        np.save(work / f"{stem}_in.npy", x)
        np.save(work / f"{stem}_out.npy", y)
        cases.append({"name": label, "input": str(work / f"{stem}_in.npy"), "expected": str(work / f"{stem}_out.npy")})
    return cases


def _blockwise_job(pkg: _Package, work: Path) -> dict[str, Any]:
    """An image over two of ilastik's smallest blocks per axis, made by mirroring the test input."""
    test_in = np.load(pkg.file(_source(pkg.input["test_tensor"]))).astype(np.float32)
    sizes = _valid_sizes(pkg)
    dims = len(pkg.spatial)

    def valid_at_least(axis: str, n: int) -> int:
        lo, step = sizes[axis]
        return lo if n <= lo or step == 0 else lo + -(-(n - lo) // step) * step

    block = {a: valid_at_least(a, ILASTIK_MIN_BLOCK[dims]) for a in pkg.spatial}
    # Two steps more than a block: every axis gets a seam, and a 3D check stays within memory.
    image = [block[a] + 2 * max(sizes[a][1], 1) for a in pkg.spatial]
    x = _resize(test_in, image)
    np.save(work / "blockwise_image.npy", x)
    shape = {"batch": 1, "channel": int(x.shape[1]), **block}
    halo = [int(a.get("halo", 0)) for a in pkg.output["axes"] if a.get("id") in ("z", "y", "x")]
    return {"zip": str(pkg.zip), "image": str(work / "blockwise_image.npy"), "block_shape": shape, "halo": halo}


# -- rules checked on the rdf -------------------------------------------------------------


def _rules(consumer: str, pkg: _Package) -> Cell:
    problems: list[str] = []
    n_in, n_out = len(pkg.rdf.get("inputs", [])), len(pkg.rdf.get("outputs", []))
    weights = pkg.weights
    if consumer == "deepimagej":
        if n_in != 1:
            problems.append(f"{n_in} inputs (deepImageJ takes exactly one)")
        for t in pkg.rdf["inputs"] + pkg.rdf["outputs"]:
            for a in t["axes"]:
                if a.get("type") == "channel" and not a.get("channel_names"):
                    problems.append(f"tensor {t['id']!r}: channel axis without channel_names")
            key = "preprocessing" if t in pkg.rdf["inputs"] else "postprocessing"
            for step in t.get(key) or []:
                if step.get("id") not in _DIJ_PROCESSING:
                    problems.append(f"{key} {step.get('id')!r} is not implemented by deepImageJ")
        dij = (pkg.rdf.get("config") or {}).get("deepimagej")
        if isinstance(dij, dict) and dij.get("allow_tiling") is not True:
            problems.append("config.deepimagej.allow_tiling is not true (tiling off)")
        if not isinstance(pkg.rdf.get("documentation"), str):
            problems.append("documentation is not a plain string (deepImageJ's parser casts it to one)")
        if not ({"torchscript", "onnx"} & set(weights)):
            problems.append("no TorchScript or ONNX weights (deepImageJ runs state dicts only in a separate Python)")
        for t in pkg.rdf["inputs"]:
            if "sample_tensor" not in t:
                problems.append(f"input {t['id']!r} has no sample_tensor")
    elif consumer == "ilastik":
        if n_in != 1 or n_out != 1:
            problems.append(f"{n_in} inputs / {n_out} outputs (ilastik needs exactly one of each)")
        if "channel" not in pkg.axis_ids(pkg.output):
            problems.append("the output has no axis with id 'channel'")
        if not ({"torchscript", "pytorch_state_dict"} & set(weights)):
            problems.append("neither TorchScript nor state-dict weights (ilastik never runs ONNX)")
    elif consumer == "qupath":
        if "z" in pkg.spatial:
            return Cell("n/a", "QuPath runs 2D models only")
        if n_in != 1 or n_out != 1:
            problems.append(f"{n_in} inputs / {n_out} outputs (QuPath needs exactly one of each)")
        if "torchscript" not in weights:
            problems.append("no TorchScript weights (QuPath runs no other PyTorch format)")
    if problems:
        return Cell("failed", "; ".join(problems))
    return Cell("passed", "one input, one output, supported axes and processing")


def _engine_version(pkg: _Package) -> str:
    """The libtorch JDLL picks: the installed engine closest to ``pytorch_version`` in the same major."""
    ts = pkg.weights.get("torchscript") or {}
    version = str(ts.get("pytorch_version") or "1.13.1")
    return "2.0.0" if version.split(".")[0] == "2" else "1.13.1"


# -- running a runtime --------------------------------------------------------------------


def _run_probe(python: Path, job: dict[str, Any], work: Path, timeout: float) -> dict[str, Any]:
    job_path = work / f"job-{len(list(work.glob('job-*.json')))}.json"
    job_path.write_text(json.dumps(job), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    cmd = [str(python), str(_PROBE), str(job_path)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False, cwd=work)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish within {timeout:.0f} s", "results": []}
    marker = proc.stdout.rfind(_MARK)
    if marker < 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        return {"error": f"exit code {proc.returncode}: {tail}", "results": []}
    return json.loads(proc.stdout[marker + len(_MARK) :].splitlines()[0])


def _bioimageio_cell(result: dict[str, Any]) -> Cell:
    from ai4life_kit.export.validate import TestReport

    if "summary" not in result:
        return Cell("failed", result.get("error", "the test did not run"))
    return _report_cell(TestReport.from_dict("", result["summary"]))


def _report_cell(report) -> Cell:
    if report.passed:
        n = sum(1 for c in report.checks if c.status == "passed")
        return Cell("passed", f"bioimageio test: {n} of {len(report.checks)} checks passed")
    return Cell("failed", f"bioimageio test status {report.status!r}: {report.one_line()}")


def _engine_cell(result: dict[str, Any], engine: str) -> Cell:
    if "cases" not in result or not result["cases"]:
        return Cell("failed", f"does not load in {engine}: {result.get('error', 'no result')}")
    parts = []
    for case in result["cases"]:
        if "error" in case:
            parts.append(f"{case['name']}: {case['error']}")
        else:
            parts.append(
                f"{case['name']} {tuple(case['shape'][2:])}: max |d| {case['max_abs_diff']:.2g}, "
                f"{case['mismatched']} of {case['elements']} off"
            )
    return Cell("passed" if result.get("passed") else "failed", f"{engine}: " + "; ".join(parts))


def _blockwise_cell(result: dict[str, Any]) -> Cell:
    if "error" in result:
        return Cell("failed", f"blockwise prediction: {result['error']}")
    spatial = {k: v for k, v in result["block_shape"].items() if k in ("z", "y", "x")}
    detail = (
        f"blocks {spatial} over {tuple(result['image_shape'][2:])}: max |d| {result['max_abs_diff']:.2g} "
        f"vs the whole image, {result['mismatched']} of {result['elements']} off"
    )
    return Cell("passed" if result["passed"] else "failed", detail)


def run_consumers(
    path: Path,
    consumers: list[str] | None = None,
    cache: Path | None = None,
    log: Callable[[str], None] | None = None,
    timeout: float = 1800,
) -> ConsumerReport:
    """Test the package at ``path`` for each consumer; install the runtimes it needs on first use.

    Raises
    ------
    ModelLoadError
        ``path`` is not a model zip.
    UserInputError
        An unknown consumer name.
    Ai4LifeKitError
        A runtime could not be installed (no PyPI and no cached copy).
    """
    from ai4life_kit.export.validate import github_users_in, run_package_test

    names = consumers or list(CONSUMERS)
    unknown = [n for n in names if n not in CONSUMERS]
    if unknown:
        raise UserInputError(f"unknown consumer {unknown[0]!r}; choose from {', '.join(CONSUMERS)}")
    say = log or (lambda _m: None)
    # Absolute: the probes run in a temporary folder, and a bare name would read as a bioimage.io id.
    path = Path(path).resolve()
    report = ConsumerReport(source=str(path))
    with tempfile.TemporaryDirectory(prefix="ai4life-kit-consumers-") as tmp:
        work = Path(tmp)
        pkg = _open_package(Path(path), work / "package")
        users = github_users_in(pkg.rdf)
        engine_results: dict[str, dict[str, Any]] = {}
        for name in names:
            consumer = CONSUMERS[name]
            t0 = time.perf_counter()
            row: dict[str, Cell] = {}
            present = [wf for wf in consumer.weight_formats if wf in pkg.weights]
            if "rules" in consumer.checks:
                row["rules"] = _rules(name, pkg)
            if row.get("rules") and row["rules"].status == "n/a":
                report.cells[name] = {"rules": row["rules"]}
                continue
            say(f"{consumer.title}: testing {', '.join(present) or 'no weights it runs'}")
            if consumer.runtime is None:
                for wf in present:
                    r = run_package_test(pkg.zip, weight_format=wf)
                    row[wf] = _report_cell(r)
                    report.versions[name] = {**_this_environment(), **r.stack}
            else:
                python = ensure_runtime(consumer.runtime, cache, say)
                job: dict[str, Any] = {"checks": []}
                if "bioimageio" in consumer.checks:
                    job["checks"].append("bioimageio")
                    job["bioimageio"] = {
                        "zip": str(pkg.zip),
                        "weight_formats": present,
                        "github_users": users,
                        "testrun_module": str(_TESTRUN),
                    }
                if "blockwise" in consumer.checks:
                    job["checks"].append("blockwise")
                    job["blockwise"] = {**_blockwise_job(pkg, work), "weight_formats": present[:1]}
                engine_key = f"{consumer.runtime}:{','.join(present)}"
                if "engine" in consumer.checks and engine_key not in engine_results:
                    job["checks"].append("engine")
                    job["engine"] = {
                        "weights": {wf: str(pkg.file(_source(pkg.weights[wf]))) for wf in present},
                        "cases": _engine_cases(pkg, work),
                        "input_axes": pkg.axis_ids(pkg.input),
                        "output_axes": pkg.axis_ids(pkg.output),
                        "preprocessing": _numpy_processing(pkg, "preprocessing", pkg.input),
                        "postprocessing": _numpy_processing(pkg, "postprocessing", pkg.output),
                    }
                out = _run_probe(python, job, work, timeout) if job["checks"] else {"results": []}
                if "engine" in job["checks"]:
                    engine_results[engine_key] = out
                elif "engine" in consumer.checks:
                    out = {**out, "results": out["results"] + engine_results[engine_key]["results"]}
                    out.setdefault("versions", engine_results[engine_key].get("versions", {}))
                report.versions[name] = out.get("versions", {})
                by_check = {(r.get("check"), r.get("weight_format")): r for r in out["results"]}
                engine = f"torch {report.versions[name].get('torch', '?')}"
                for wf in present:
                    cells = []
                    if (r := by_check.get(("bioimageio", wf))) is not None:
                        cells.append(_bioimageio_cell(r))
                    if (r := by_check.get(("blockwise", wf))) is not None:
                        cells.append(_blockwise_cell(r))
                    if (r := by_check.get(("engine", wf))) is not None:
                        label = (
                            engine
                            if wf == "torchscript"
                            else f"onnxruntime {report.versions[name].get('onnxruntime', '?')}"
                        )
                        if name == "deepimagej" and wf == "torchscript":
                            label += f" (JDLL picks libtorch {_engine_version(pkg)})"
                        cells.append(_engine_cell(r, label))
                    if not cells:
                        cells.append(Cell("failed", out.get("error") or "no result"))
                    failed = [c for c in cells if c.failed]
                    row[wf] = Cell("failed" if failed else "passed", "; ".join(c.detail for c in (failed or cells)))
            for wf in consumer.weight_formats:
                if wf not in row:
                    row[wf] = Cell("n/a", "not in the package")
            for wf in WEIGHT_FORMATS:
                if wf not in consumer.weight_formats:
                    row.setdefault(wf, Cell("n/a", f"{consumer.title} does not run {wf}"))
            report.cells[name] = row
            report.seconds[name] = round(time.perf_counter() - t0, 1)
    return report


def _this_environment() -> dict[str, str]:
    import torch

    versions = {"python": sys.version.split()[0], "torch": torch.__version__.split("+")[0], "numpy": np.__version__}
    with contextlib.suppress(ImportError):
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    return versions
