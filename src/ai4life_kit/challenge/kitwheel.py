"""The kit itself as a wheel for the image (``kit/ai4life_kit-VERSION-py3-none-any.whl``).

The image installs it with ``--no-deps`` (its dependencies come from ``requirements.txt``). Same
source, same bytes, so the image's kit layer stays cached.

- From a source checkout (an editable install): ``pip wheel --no-deps --no-build-isolation
  --no-index`` with the project's own build backend, offline, from a fresh copy of the checkout
  (setuptools keeps ``build/lib`` in the project folder between builds: a module deleted from the
  source stayed in the next wheel when built in place), with ``SOURCE_DATE_EPOCH`` fixed
  (three builds gave the same sha256). About 1.5 s.
- Otherwise (installed from a wheel or an sdist, as in the kit's own image or after
  ``pip install ai4life-kit``) pip has no project to build (``pip wheel`` takes a project
  folder, an sdist or a requirement from an index, never an installed distribution), and a build
  with isolation would need an index for setuptools: the installed files are written into a wheel
  here, without build tools. The same happens when the checkout's build fails, or setuptools is
  not installed.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

__all__ = ["build_kit_wheel", "source_checkout", "write_installed_wheel"]

SOURCE_DATE_EPOCH = "315532800"
"""1980-01-01, the earliest date a zip holds: every file of the wheel gets it."""
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_BUILD_FILES = ("pyproject.toml", "setup.py", "setup.cfg", "MANIFEST.in")
_BUILD_FILE_PREFIXES = ("README", "LICENSE", "LICENCE", "COPYING", "NOTICE", "AUTHORS")

Log = Callable[[str], None]


class _PipWheelFailed(Exception):
    pass


def _package_dir() -> Path:
    import ai4life_kit

    return Path(ai4life_kit.__file__).resolve().parent


def source_checkout() -> Path | None:
    """The project folder the running kit is an editable install of, else None.

    Read from the install's ``direct_url.json`` (PEP 610, written by pip); the running package
    must lie inside that folder, next to its ``pyproject.toml``.
    """
    try:
        text = distribution("ai4life-kit").read_text("direct_url.json")
        info = json.loads(text) if text else {}
    except (PackageNotFoundError, ValueError):
        return None
    url = urllib.parse.urlparse(str(info.get("url", "")))
    if not info.get("dir_info", {}).get("editable") or url.scheme != "file":
        return None
    root = Path(urllib.request.url2pathname(url.path)).resolve()
    if not (root / "pyproject.toml").is_file() or not _package_dir().is_relative_to(root):
        return None
    return root


def build_kit_wheel(dest_dir: Path, log: Log | None = None) -> Path:
    """A wheel of the running ai4life-kit source in ``dest_dir`` (see the module's docstring for how)."""
    say = log or (lambda message: None)
    checkout = source_checkout()
    if checkout is None:
        wheel = write_installed_wheel(dest_dir)
        say(f"  kit wheel {wheel.name} written from the installed package (not a source checkout)")
        return wheel
    try:
        wheel = _pip_wheel(checkout, dest_dir)
        say(f"  kit wheel {wheel.name} built by pip wheel from {checkout}")
    except _PipWheelFailed as exc:
        wheel = write_installed_wheel(dest_dir)
        say(f"  kit wheel {wheel.name} written from the package files: pip wheel could not build {checkout} ({exc})")
    return wheel


def _pip_wheel(checkout: Path, dest_dir: Path) -> Path:
    """``pip wheel`` of a fresh copy of ``checkout``, offline, with the build backend installed here."""
    if importlib.util.find_spec("setuptools") is None:
        raise _PipWheelFailed("setuptools, its build backend, is not installed")
    pkg = _package_dir()
    with tempfile.TemporaryDirectory(prefix="ai4life-kit-wheel-") as tmp:
        project, out = Path(tmp) / "project", Path(tmp) / "out"
        project.mkdir()
        for f in checkout.iterdir():
            if f.is_file() and (f.name in _BUILD_FILES or f.name.upper().startswith(_BUILD_FILE_PREFIXES)):
                shutil.copy2(f, project / f.name)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo")
        shutil.copytree(pkg, project / pkg.relative_to(checkout), ignore=ignore)
        cmd = [sys.executable, "-m", "pip", "wheel", "--isolated", "--no-deps", "--no-build-isolation"]
        cmd += ["--no-index", "--quiet", "--wheel-dir", str(out), str(project)]
        env = {**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise _PipWheelFailed(f"{type(exc).__name__}: {exc}") from None
        wheels = sorted(out.glob("ai4life_kit-*.whl"))
        if proc.returncode != 0 or len(wheels) != 1:
            lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
            raise _PipWheelFailed(f"exit {proc.returncode}: " + " | ".join(lines[-5:]))
        dest = Path(dest_dir) / wheels[0].name
        shutil.move(wheels[0], dest)
    return dest


def write_installed_wheel(dest_dir: Path) -> Path:
    """A pure-Python wheel of the installed package's files (deterministic bytes, no build tools).

    Only the package is included (no tests, no caches); dependencies are not declared because the
    image installs them from ``requirements.txt`` and the kit with ``--no-deps``.
    """
    import ai4life_kit

    pkg = _package_dir()
    version = ai4life_kit.__version__
    dist_info = f"ai4life_kit-{version}.dist-info"
    wheel = Path(dest_dir) / f"ai4life_kit-{version}-py3-none-any.whl"
    files = sorted(
        p for p in pkg.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
    )
    metadata = (
        "Metadata-Version: 2.1\nName: ai4life-kit\n"
        f"Version: {version}\nSummary: ai4life-kit (built into a challenge submission image)\n"
        "Requires-Python: >=3.10\n"
    )
    meta_files = {
        "METADATA": metadata,
        "WHEEL": "Wheel-Version: 1.0\nGenerator: ai4life-kit\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        "entry_points.txt": "[console_scripts]\nai4life-kit = ai4life_kit.cli.app:main\n",
        "top_level.txt": "ai4life_kit\n",
    }
    records: list[str] = []
    with zipfile.ZipFile(wheel, "w") as zf:

        def add(arcname: str, data: bytes) -> None:
            info = zipfile.ZipInfo(arcname, date_time=_ZIP_DATE)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            records.append(f"{arcname},sha256={digest},{len(data)}")

        for f in files:
            add("ai4life_kit/" + f.relative_to(pkg).as_posix(), f.read_bytes())
        for fname, text in meta_files.items():
            add(f"{dist_info}/{fname}", text.encode())
        records.append(f"{dist_info}/RECORD,,")
        add_record = zipfile.ZipInfo(f"{dist_info}/RECORD", date_time=_ZIP_DATE)
        add_record.external_attr = 0o644 << 16
        zf.writestr(add_record, "\n".join(records) + "\n")
    return wheel
