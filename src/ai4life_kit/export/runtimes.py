"""Consumers' Python runtimes: exact pins installed from PyPI into venvs of their own, on first use.

Each runtime lives in ``$AI4LIFE_KIT_CACHE/runtimes/NAME`` (default ``~/.cache/ai4life-kit``), outside
any project, and is reused only when its stamp file, written last after a complete install, lists
exactly the wanted pins. Old torch releases exist on PyPI only as CUDA builds: pip takes them with
their nvidia-* wheels (3-6 GB a runtime) and they run on the CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ai4life_kit.errors import Ai4LifeKitError
from ai4life_kit.fileio import waiting_lock

__all__ = ["RUNTIMES", "Runtime", "default_cache_dir", "ensure_runtime"]

STAMP = "ai4life-kit-runtime.json"


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


def default_cache_dir() -> Path:
    """``$AI4LIFE_KIT_CACHE`` or ``$XDG_CACHE_HOME/ai4life-kit`` (default ``~/.cache/ai4life-kit``)."""
    base = os.environ.get("AI4LIFE_KIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ai4life-kit"
    )
    return Path(base)


def _stamp_ok(venv: Path, runtime: Runtime) -> bool:
    try:
        stamp = json.loads((venv / STAMP).read_text(encoding="utf-8"))
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
    with waiting_lock(venv.with_name(f".{name}.lock")):
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
        (venv / STAMP).write_text(json.dumps(stamp), encoding="utf-8")
        return python
