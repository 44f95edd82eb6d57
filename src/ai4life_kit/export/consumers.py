"""Test a bioimage.io package in the runtimes its consumers really run, and say which weights load where.

A package that passes ``bioimageio test`` in our own stack (torch 2.13) can still fail where a
scientist runs it: deepImageJ's libtorch 2.0, bioimage.io's review runtime (torch 2.5.1,
bioimageio.core 0.10.4), ilastik 1.4.2 (bioimageio.core 0.10.2, torch 2.7). Each of those runtimes
is a virtual environment installed from PyPI on first use into a cache outside the project
(:mod:`ai4life_kit.export.runtimes`) and reused after. The checks run there in a subprocess
(:mod:`ai4life_kit.export._consumer_probe`), so nothing of the running environment leaks into them;
what each probe gets is made in :mod:`ai4life_kit.export.consumer_jobs`, the rules read off the rdf
are in :mod:`ai4life_kit.export.consumer_rules`. This module runs the matrix.

The facts behind each consumer (versions, tolerances, limits) are in the project's
``shared/reference/consumers.md``; in short:

=============== =============================================== ==============================
consumer        runtime                                         weights it runs, in its order
=============== =============================================== ==============================
current         this environment                               state dict, TorchScript, ONNX
bioengine       torch 2.5.1, bioimageio.core 0.10.4, ORT 1.20.1 state dict, TorchScript, ONNX
ilastik         torch 2.7.1, bioimageio.core 0.10.2             TorchScript, state dict
deepimagej      torch 2.0.1 (libtorch 2.0.0), ORT 1.15.0        TorchScript, ONNX
deepimagej-1.13 torch 1.13.1 (JDLL's default install)          TorchScript
qupath          rules, TorchScript as deepImageJ's engine       TorchScript (2D only)
=============== =============================================== ==============================
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ai4life_kit.errors import UserInputError
from ai4life_kit.export.consumer_jobs import (
    PROBE,
    blockwise_job,
    engine_cases,
    numpy_processing,
    open_package,
    source,
)
from ai4life_kit.export.consumer_rules import Cell, engine_version, rules
from ai4life_kit.export.runtimes import RUNTIMES, Runtime, default_cache_dir, ensure_runtime
from ai4life_kit.fileio import scratch_dir

__all__ = [
    "CONSUMERS",
    "RUNTIMES",
    "WEIGHT_FORMATS",
    "Cell",
    "Consumer",
    "ConsumerReport",
    "Runtime",
    "default_cache_dir",
    "ensure_runtime",
    "run_consumers",
]

_MARK = "@@AI4LIFE_KIT_CONSUMER@@"
_TESTRUN = Path(__file__).with_name("_testrun.py")
WEIGHT_FORMATS = ("pytorch_state_dict", "torchscript", "onnx")


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


def _run_probe(python: Path, job: dict[str, Any], work: Path, timeout: float) -> dict[str, Any]:
    job_path = work / f"job-{len(list(work.glob('job-*.json')))}.json"
    job_path.write_text(json.dumps(job), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    cmd = [str(python), str(PROBE), str(job_path)]
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


def _check_names(consumers: list[str] | None) -> list[str]:
    """The consumers to test (all by default); an unknown name is a :class:`UserInputError`."""
    names = consumers or list(CONSUMERS)
    unknown = [n for n in names if n not in CONSUMERS]
    if unknown:
        raise UserInputError(f"unknown consumer {unknown[0]!r}; choose from {', '.join(CONSUMERS)}")
    return names


def _current_row(name: str, pkg, present: list[str], report: ConsumerReport) -> dict[str, Cell]:
    """``bioimageio test`` of each weight format in this process; records this environment's versions."""
    from ai4life_kit.export.validate import run_package_test

    row: dict[str, Cell] = {}
    for wf in present:
        r = run_package_test(pkg.zip, weight_format=wf)
        row[wf] = _report_cell(r)
        report.versions[name] = {**_this_environment(), **r.stack}
    return row


def _probe_job(consumer: Consumer, pkg, users: list[str], work: Path, present: list[str]) -> dict[str, Any]:
    """What the probe in ``consumer``'s runtime runs: its checks, each with the inputs it needs."""
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
        job["blockwise"] = {**blockwise_job(pkg, work), "weight_formats": present[:1]}
    if "engine" in consumer.checks:
        job["checks"].append("engine")
        job["engine"] = {
            "weights": {wf: str(pkg.file(source(pkg.weights[wf]))) for wf in present},
            "cases": engine_cases(pkg, work),
            "input_axes": pkg.axis_ids(pkg.input),
            "output_axes": pkg.axis_ids(pkg.output),
            "preprocessing": numpy_processing(pkg, "preprocessing", pkg.input),
            "postprocessing": numpy_processing(pkg, "postprocessing", pkg.output),
        }
    return job


def _probe_cell(name: str, pkg, wf: str, out: dict[str, Any], versions: dict[str, str]) -> Cell:
    """One weight format's cell from the probe's results: failed if any of its checks failed."""
    by_check = {(r.get("check"), r.get("weight_format")): r for r in out["results"]}
    engine = f"torch {versions.get('torch', '?')}"
    cells = []
    if (r := by_check.get(("bioimageio", wf))) is not None:
        cells.append(_bioimageio_cell(r))
    if (r := by_check.get(("blockwise", wf))) is not None:
        cells.append(_blockwise_cell(r))
    if (r := by_check.get(("engine", wf))) is not None:
        label = engine if wf == "torchscript" else f"onnxruntime {versions.get('onnxruntime', '?')}"
        if name == "deepimagej" and wf == "torchscript":
            label += f" (JDLL picks libtorch {engine_version(pkg)})"
        cells.append(_engine_cell(r, label))
    if not cells:
        cells.append(Cell("failed", out.get("error") or "no result"))
    failed = [c for c in cells if c.failed]
    return Cell("failed" if failed else "passed", "; ".join(c.detail for c in (failed or cells)))


def _runtime_row(
    name: str,
    consumer: Consumer,
    pkg,
    present: list[str],
    *,
    users: list[str],
    work: Path,
    cache: Path | None,
    timeout: float,
    say: Callable[[str], None],
    report: ConsumerReport,
) -> dict[str, Cell]:
    """Run ``consumer``'s checks in its runtime (installed on first use); records the runtime's versions."""
    python = ensure_runtime(consumer.runtime, cache, say)
    job = _probe_job(consumer, pkg, users, work, present)
    out = _run_probe(python, job, work, timeout) if job["checks"] else {"results": []}
    report.versions[name] = out.get("versions", {})
    return {wf: _probe_cell(name, pkg, wf, out, report.versions[name]) for wf in present}


def _fill_not_applicable(consumer: Consumer, row: dict[str, Cell]) -> None:
    """``n/a`` for the formats ``consumer`` runs but the package lacks, and for those it never runs."""
    for wf in consumer.weight_formats:
        if wf not in row:
            row[wf] = Cell("n/a", "not in the package")
    for wf in WEIGHT_FORMATS:
        if wf not in consumer.weight_formats:
            row.setdefault(wf, Cell("n/a", f"{consumer.title} does not run {wf}"))


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
    from ai4life_kit.export.validate import github_users_in

    names = _check_names(consumers)
    say = log or (lambda _m: None)
    # Absolute: the probes run in a temporary folder, and a bare name would read as a bioimage.io id.
    path = Path(path).resolve()
    report = ConsumerReport(source=str(path))
    with scratch_dir("consumers") as tmp:
        work = Path(tmp)
        pkg = open_package(Path(path), work / "package")
        users = github_users_in(pkg.rdf)
        for name in names:
            consumer = CONSUMERS[name]
            t0 = time.perf_counter()
            row: dict[str, Cell] = {}
            present = [wf for wf in consumer.weight_formats if wf in pkg.weights]
            if "rules" in consumer.checks:
                row["rules"] = rules(name, pkg)
            if row.get("rules") and row["rules"].status == "n/a":
                report.cells[name] = {"rules": row["rules"]}
                continue
            say(f"{consumer.title}: testing {', '.join(present) or 'no weights it runs'}")
            if consumer.runtime is None:
                row.update(_current_row(name, pkg, present, report))
            else:
                row.update(
                    _runtime_row(
                        name,
                        consumer,
                        pkg,
                        present,
                        users=users,
                        work=work,
                        cache=cache,
                        timeout=timeout,
                        say=say,
                        report=report,
                    )
                )
            _fill_not_applicable(consumer, row)
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
