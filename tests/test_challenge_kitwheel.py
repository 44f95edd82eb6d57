"""The kit's wheel: pip wheel from a source checkout, written from the installed files otherwise."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ai4life_kit.challenge import kitwheel


def _package_files(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as zf:
        return {n for n in zf.namelist() if n.startswith("ai4life_kit/")}


def test_the_dev_install_is_found_as_a_source_checkout():
    root = kitwheel.source_checkout()
    if root is None:
        pytest.skip("ai4life-kit is not an editable install here")
    assert (root / "pyproject.toml").is_file()
    assert Path(kitwheel.__file__).resolve().is_relative_to(root)


def test_the_written_wheel_installs_and_holds_what_pip_builds(tmp_path, monkeypatch):
    """Without a checkout (the kit installed from a wheel) the wheel is written from the package files."""
    monkeypatch.setattr(kitwheel, "source_checkout", lambda: None)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    lines: list[str] = []
    written = kitwheel.build_kit_wheel(tmp_path / "a", lines.append)
    assert written.name == "ai4life_kit-0.1.0-py3-none-any.whl"
    assert lines == [f"  kit wheel {written.name} written from the installed package (not a source checkout)"]
    assert kitwheel.build_kit_wheel(tmp_path / "b").read_bytes() == written.read_bytes()
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target", str(site)]
    subprocess.run([*pip, str(written)], check=True, capture_output=True)
    assert [p.name for p in (site / "bin").iterdir()] == ["ai4life-kit"]
    assert (site / "ai4life_kit" / "challenge" / "templates" / "Dockerfile.in").is_file()
    monkeypatch.undo()
    if kitwheel.source_checkout() is not None:  # the same package files as the project's own build
        (tmp_path / "pip").mkdir()
        assert _package_files(kitwheel.build_kit_wheel(tmp_path / "pip")) == _package_files(written)


def test_a_failing_pip_build_falls_back_to_the_package_files(tmp_path, monkeypatch):
    monkeypatch.setattr(kitwheel, "source_checkout", lambda: tmp_path)

    def fail(checkout, dest_dir):
        raise kitwheel._PipWheelFailed("exit 1: no backend")

    monkeypatch.setattr(kitwheel, "_pip_wheel", fail)
    lines: list[str] = []
    wheel = kitwheel.build_kit_wheel(tmp_path, lines.append)
    assert wheel.is_file() and "ai4life_kit/challenge/runner.py" in _package_files(wheel)
    assert len(lines) == 1 and "pip wheel could not build" in lines[0] and "exit 1: no backend" in lines[0]
