"""The image's Python dependencies: pins from this machine's installed versions, and the torch CPU wheel.

``requirements.txt`` pins the inference dependencies to the versions installed here (the ones the
model was tested with), for the image's environment (Linux x86_64, CPython 3.11), with torch pinned
to its CPU build. The image installs them with pip at build time: torch from ``wheels/`` when a
local CPU wheel was found (hard-linked into the context), everything else from pip's index.

Why the pins are not pip's resolver (``pip install --dry-run --ignore-installed --report``),
measured with pip 26.3 on a machine with every package installed:

- the pins must be this machine's installed versions and rendering a context must work offline;
  pip's resolver picks versions from an index, and without one (``--no-index``) it finds nothing
  ("No matching distribution found for numpy"); without ``--ignore-installed`` its report lists
  nothing to install (everything is "already satisfied");
- resolving for the image (``--platform manylinux_2_28_x86_64 --python-version 3.11
  --only-binary=:all:`` with the installed versions as constraints) took 2.7 s, downloaded from
  the index and still failed here (ResolutionImpossible: no pydantic-core wheel on the index for
  those tags); and pip evaluates requirement markers for the running interpreter, not for
  ``--python-version`` / ``--platform`` (with ``--python-version 3.8`` it still ignores
  ``typing_extensions; python_version < "3.9"``; pypa/pip#11010, #10050, #6117);
- a package that is not installed here is passed on unpinned, for pip to resolve in the image;
  pip's resolver fails on it instead.

So the closure is read from the installed distributions' metadata (``importlib.metadata``), with
the markers evaluated by ``packaging`` (pip's own, vendored) for the image's environment.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any

from ai4life_kit.errors import UserInputError

__all__ = [
    "INFERENCE_PACKAGES",
    "PYTHON_TAG",
    "find_torch_wheel",
    "pinned_requirements",
    "pip_find_links",
    "torch_pin",
    "torch_requirement",
    "torch_wheel_for",
]

PYTHON_TAG = "cp311"
"""The image's Python (python:3.11-slim and Debian bookworm's python3)."""
INFERENCE_PACKAGES = ("torch", "numpy", "tifffile", "PyYAML", "typer", "rich")
"""What the entry point imports; everything else of ai4life-kit's dependencies stays out."""
_SKIP_PREFIXES = ("nvidia-", "triton", "cuda-")  # GPU-only dependencies of CUDA torch builds
# The image's environment, for requirement markers.
_TARGET_MARKERS = {
    "python_version": "3.11",
    "python_full_version": "3.11.2",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "os_name": "posix",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "platform_release": "",
    "platform_version": "",
    "implementation_version": "3.11.2",
    "extra": "",
}
_FIND_LINKS_SECTIONS = ("global", "install", "download", "wheel", ":env:")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_class() -> Any:
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pip always vendors it
        from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]
    return Requirement


def torch_requirement(version: str) -> str:
    """``torch==X.Y.Z+cpu`` for the installed torch's release: only the CPU build, never CUDA."""
    return f"torch=={version.split('+')[0]}+cpu"


def torch_pin(requirements: Sequence[str]) -> str:
    """The ``torch==...`` line of ``requirements``."""
    return next(r for r in requirements if r.startswith("torch=="))


def pinned_requirements(packages: Sequence[str] = INFERENCE_PACKAGES) -> list[str]:
    """``name==version`` for ``packages`` and everything they need in the image, from this machine.

    Requirement markers are evaluated for the image (Linux x86_64, CPython 3.11); CUDA-only
    dependencies are left out and torch is pinned to its CPU build. Why this is not pip's
    resolver: see the module's docstring.
    """
    requirement_cls = _requirement_class()
    pins: dict[str, str] = {}
    queue = list(packages)
    while queue:
        name = queue.pop(0)
        key = _canonical(name)
        if key in pins or key.startswith(_SKIP_PREFIXES):
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            pins[key] = name  # unpinned: not installed here, so pip resolves it in the image
            continue
        proper = dist.metadata["Name"] or name
        pins[key] = torch_requirement(dist.version) if key == "torch" else f"{proper}=={dist.version}"
        for text in dist.requires or []:
            req = requirement_cls(text)
            if req.marker is None or req.marker.evaluate(_TARGET_MARKERS):
                queue.append(req.name)
    return [pins[k] for k in sorted(pins)]


def _pip_command() -> list[str] | None:
    # Asked of the installed metadata, not with importlib.util.find_spec("pip"): looking up "pip"
    # makes setuptools' distutils shim step aside for the rest of the process (pypa/pip#8761), so a
    # later torch.compile in the same process (a notebook, a test run) fails inside setuptools.
    try:
        distribution("pip")
    except PackageNotFoundError:
        pass
    else:
        return [sys.executable, "-m", "pip"]
    exe = shutil.which("pip3") or shutil.which("pip")
    return [exe] if exe else None


def pip_find_links() -> list[str]:
    """pip's ``find-links`` on this machine, as pip itself reads its configuration (``pip config list``).

    That covers every file pip reads (``PIP_CONFIG_FILE``, the site, user and global ``pip.conf``
    files, XDG folders) and ``$PIP_FIND_LINKS``; without pip, only ``$PIP_FIND_LINKS``.
    """
    found = os.environ.get("PIP_FIND_LINKS", "").split()
    cmd = _pip_command()
    if cmd is None:
        return found
    try:
        proc = subprocess.run(
            [*cmd, "config", "list"], capture_output=True, text=True, timeout=60, check=False,
            env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return found
    for line in proc.stdout.splitlines():  # section.option='value', the value as Python's repr
        key, sep, value = line.partition("=")
        section, _, option = key.rpartition(".")
        if not sep or option != "find-links" or section not in _FIND_LINKS_SECTIONS:
            continue
        try:
            folders = str(ast.literal_eval(value)).split()
        except (ValueError, SyntaxError):
            continue
        found += [f for f in folders if f not in found]
    return found


def find_torch_wheel(requirement: str) -> Path | None:
    """A local CPU torch wheel matching ``torch==X+cpu`` for cp311 / x86_64, if this machine has one.

    Looks in ``$AI4LIFE_KIT_WHEELS``, pip's ``find-links`` folders and ``/opt/wheels``. The file
    name is matched here rather than by ``pip download --no-index``: pip copies the wheel (about
    190 MB for torch; the context hard-links it) and opens it to read its metadata.
    """
    version = requirement.split("==", 1)[1]
    folders = os.environ.get("AI4LIFE_KIT_WHEELS", "").replace(os.pathsep, " ").split()
    folders += [*pip_find_links(), "/opt/wheels"]
    for folder in folders:
        folder = folder.removeprefix("file://")
        if not Path(folder).is_dir():
            continue
        hits = sorted(Path(folder).glob(f"torch-{version}-{PYTHON_TAG}-{PYTHON_TAG}-*linux*_x86_64.whl"))
        if hits:
            return hits[-1]
    return None


def torch_wheel_for(pin: str, given: Path | None = None) -> Path | None:
    """The torch wheel for the context: ``given`` (checked against ``pin``) or one found locally."""
    if given is None:
        return find_torch_wheel(pin)
    wheel = Path(given)
    wanted = f"torch-{pin.split('==')[1]}-{PYTHON_TAG}-"
    if not wheel.is_file() or not wheel.name.startswith(wanted):
        raise UserInputError(f"torch wheel {given} is not a {wanted}*.whl file (the image pins {pin})")
    return wheel
