"""``challenge test``: build a context's image for real and run it the way Grand Challenge does.

With an engine: build (podman: private storage, local base image, host CA bundle), then run with
``--network=none --read-only --memory=...``, ``/input`` read-only and an empty ``/tmp``, as the
image's non-root user. Without one: run the entry point directly (``python -m ai4life_kit
challenge run``) on the same folders, and say that the image itself was not tested.

Either way every output is checked against the contract (present, shape, float32, resolution unit,
finite values, nothing extra) and the seconds per case are reported.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ai4life_kit.challenge.base_image import ensure_base_image
from ai4life_kit.challenge.context import Context, load_context
from ai4life_kit.challenge.contract import DEFAULT_CHALLENGE, Challenge, check_output, find_cases, output_path
from ai4life_kit.challenge.engine import Engine, build_image, find_engine, run_container
from ai4life_kit.challenge.runner import SUMMARY_PREFIX
from ai4life_kit.fileio import atomic_write_text

__all__ = [
    "CaseCheck",
    "ContextTestReport",
    "build_context_image",
    "check_outputs",
    "format_report",
    "parse_summary",
    "run_direct",
    "run_context_test",
]

Log = Callable[[str], None]
PYPI_SIMPLE = "https://pypi.org/simple"


@dataclass
class CaseCheck:
    """One input and what the run made of it."""

    name: str
    shape: list[int]
    dtype: str
    seconds: float | None = None
    input_range: list[float] | None = None
    output_range: list[float] | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class ContextTestReport:
    """Everything ``challenge test`` measured; ``ok`` when the run exited 0 and every output is right."""

    context: str
    mode: str
    """``podman``, ``docker`` or ``direct`` (no engine: the entry point without a container)."""
    engine: str | None
    image: str | None
    base_image: str | None = None
    build_seconds: float | None = None
    image_size_bytes: int | None = None
    run_seconds: float | None = None
    exit_code: int | None = None
    cases: list[CaseCheck] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    log_tail: str = ""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.problems and all(not c.problems for c in self.cases)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def build_context_image(
    engine: Engine,
    ctx: Context,
    log: Log,
    base_image: str | None = None,
    log_file: Path | None = None,
    no_cache: bool = False,
) -> tuple[str, float]:
    """Build ``ctx``'s image; return (base image used, seconds)."""
    base = ensure_base_image(engine, log, base_image)
    build_args = {}
    if any((ctx.path / "wheels").glob("torch-*.whl")):
        # torch comes from wheels/: point the extra index at PyPI (already pip's index) instead
        # of the PyTorch CPU index, which machines without internet cannot reach.
        build_args["TORCH_INDEX_URL"] = PYPI_SIMPLE
    log(f"building {ctx.image} with {engine.name} on {base}")
    seconds = build_image(
        engine, ctx.path, ctx.image, log, base_image=base, build_args=build_args,
        log_file=log_file or ctx.path / "test" / "build.log", no_cache=no_cache,
    )  # fmt: skip
    return base, seconds


def _fresh_output_dir(path: Path, challenge: Challenge) -> Path:
    """An empty output root the image's non-root user can write to.

    ``challenge``'s output folders are created here, owned by the caller and writable by everyone,
    so that the caller can delete what the container's user wrote (the runner creates them when
    missing, as on Grand Challenge).
    """
    if path.exists():
        shutil.rmtree(path)
    for out_dir in sorted({t.output_dir for t in challenge.tracks.values()}):
        inner = path / out_dir
        inner.mkdir(parents=True, exist_ok=True)
        for folder in (inner, *inner.parents):
            os.chmod(folder, 0o777)
            if folder == path:
                break
    return path


def run_direct(ctx: Context, input_root: Path, output_root: Path, timeout: float = 3600) -> tuple[int, str, float]:
    """The entry point without a container, in a clean environment like the image's."""
    tmp = tempfile.mkdtemp(prefix="ai4life-kit-direct-")
    env = {**os.environ, "HOME": tmp, "TMPDIR": tmp, "MPLCONFIGDIR": f"{tmp}/mpl", "TORCH_HOME": f"{tmp}/torch"}
    cmd = [sys.executable, "-m", "ai4life_kit", "challenge", "run"]
    for model in ctx.models:
        cmd += ["--model", str(ctx.path / model)]
    cmd += ["--input-root", str(input_root), "--output-root", str(output_root), "--challenge", ctx.challenge.name]
    if ctx.info.get("tta"):
        cmd.append("--tta")
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, timeout=timeout, check=False
        )
        return proc.returncode, proc.stdout, time.perf_counter() - start
    except subprocess.TimeoutExpired:
        return 124, f"(timed out after {timeout} s)", time.perf_counter() - start
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def parse_summary(output: str) -> dict[str, Any] | None:
    for line in reversed(output.splitlines()):
        if line.startswith(SUMMARY_PREFIX):
            try:
                return json.loads(line[len(SUMMARY_PREFIX) :])
            except ValueError:
                return None
    return None


def _range(data: np.ndarray) -> list[float]:
    return [round(float(data.min()), 3), round(float(data.max()), 3)]


def check_outputs(
    input_root: Path,
    output_root: Path,
    summary: dict[str, Any] | None,
    challenge: str | Challenge = DEFAULT_CHALLENGE,
) -> tuple[list[CaseCheck], list[str]]:
    """Check every expected output; return per-case checks and problems that belong to no case."""
    import tifffile

    seconds = {Path(r["input"]).name: r["seconds"] for r in (summary or {}).get("results", [])}
    checks: list[CaseCheck] = []
    outputs = []
    for case in find_cases(input_root, challenge):
        name = f"{case.track.name}/{case.path.name}"
        out = output_path(output_root, case)
        outputs.append(out.relative_to(output_root).as_posix())
        try:
            raw = tifffile.imread(case.path)
            if raw.size == 0:
                raise ValueError("no image data")
        except Exception as exc:  # an unreadable input cannot have a right output
            written = "present" if out.exists() else "missing"
            problem = f"input is not a readable TIFF ({exc}); output {written}"
            checks.append(CaseCheck(name, [], "?", seconds.get(case.path.name), problems=[problem]))
            continue
        check = CaseCheck(
            name=name,
            shape=list(raw.shape),
            dtype=str(raw.dtype),
            seconds=seconds.get(case.path.name),
            input_range=_range(raw),
        )
        check.problems = check_output(out, raw.shape)
        if not check.problems:
            denoised = tifffile.imread(out)
            check.output_range = _range(denoised)
            in_span = float(raw.max()) - float(raw.min())
            if in_span > 10 and float(denoised.max()) - float(denoised.min()) <= 1.5:
                check.warnings.append("output spans [0, 1]-like values: was the input scale undone?")
        checks.append(check)
    produced = sorted(p.relative_to(output_root).as_posix() for p in output_root.rglob("*") if p.is_file())
    extra = [p for p in produced if p not in outputs]
    problems = [f"unexpected file in the output: {p}" for p in extra]
    return checks, problems


def run_context_test(
    path: Path,
    *,
    engine: str = "auto",
    base_image: str | None = None,
    input_root: Path | None = None,
    memory: str = "4g",
    timeout: float = 3600,
    log: Log = print,
) -> ContextTestReport:
    """Build and run ``path``'s image on its test inputs (or ``input_root``) and check the outputs."""
    ctx = load_context(path)
    inputs = Path(input_root) if input_root else ctx.test_input
    find_cases(inputs, ctx.challenge)  # fail early and clearly when there is nothing to run on
    output_root = _fresh_output_dir(ctx.path / "test" / "output", ctx.challenge)
    eng = find_engine(engine)
    if eng is not None:
        report = ContextTestReport(str(ctx.path), eng.name, eng.describe(), ctx.image)
        report.base_image, report.build_seconds = build_context_image(eng, ctx, log, base_image)
        _, report.image_size_bytes = eng.image_info(ctx.image)
        log(f"built in {report.build_seconds:.0f} s, image size {report.image_size_bytes / 1e6:.0f} MB")
        log(f"running {ctx.image} on {inputs}: --network=none --read-only --memory={memory}, /input read-only")
        run = run_container(eng, ctx.image, input_dir=inputs, output_dir=output_root, memory=memory, timeout=timeout)
        rc, output, report.run_seconds = run.returncode, run.output, run.seconds
    else:
        report = ContextTestReport(str(ctx.path), "direct", None, None)
        log(
            "no container engine found (no docker daemon, no podman): running the entry point directly on the "
            "same folders; this tests the predictor and the contract, NOT the image (run scripts/setup-podman.sh)"
        )
        rc, output, report.run_seconds = run_direct(ctx, inputs, output_root, timeout)
    report.exit_code = rc
    report.log_tail = "\n".join(output.strip().splitlines()[-40:])
    summary = parse_summary(output)
    if rc != 0:
        report.problems.append(f"the run exited with code {rc} (expected 0)")
    if summary is None:
        report.problems.append("the run printed no summary line (did the entry point start?)")
    report.cases, extra = check_outputs(inputs, output_root, summary, ctx.challenge)
    report.problems += extra
    atomic_write_text(ctx.path / "test" / "report.json", json.dumps(report.to_dict(), indent=2) + "\n")
    return report


def format_report(report: ContextTestReport) -> str:
    """A readable summary: how it ran, one line per case, the verdict."""
    lines = []
    how = {"direct": "entry point run directly (no container engine)"}.get(
        report.mode, f"{report.mode} container: --network=none --read-only, /input read-only, non-root"
    )
    lines.append(f"context:   {report.context}")
    lines.append(f"mode:      {how}")
    if report.engine:
        lines.append(f"engine:    {report.engine}")
    if report.build_seconds is not None:
        lines.append(f"image:     {report.image} on {report.base_image}")
        lines.append(
            f"build:     {report.build_seconds:.1f} s, image size {(report.image_size_bytes or 0) / 1e6:.0f} MB"
        )
    lines.append(f"run:       {report.run_seconds:.1f} s wall, exit code {report.exit_code}")
    lines.append(f"{'case':44s} {'shape':22s} {'dtype':8s} {'s/case':>7s}  result")
    for c in report.cases:
        secs = f"{c.seconds:7.2f}" if c.seconds is not None else "      -"
        verdict = "ok" if not c.problems else "; ".join(c.problems)
        if c.warnings:
            verdict += " (warning: " + "; ".join(c.warnings) + ")"
        lines.append(f"{c.name:44s} {tuple(c.shape)!s:22s} {c.dtype:8s} {secs}  {verdict}")
    for p in report.problems:
        lines.append(f"problem:   {p}")
    if report.ok:
        lines.append(f"PASSED: {len(report.cases)} output(s) float32, input shape, resolution unit set, finite")
    else:
        lines.append("FAILED; last lines of the run's log:")
        lines += ["  " + line for line in report.log_tail.splitlines()[-20:]]
    return "\n".join(lines)
