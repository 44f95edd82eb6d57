"""The image's pins and the torch wheel: markers for the image, pip's own find-links."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ai4life_kit.challenge import deps
from ai4life_kit.errors import UserInputError


class _Dist:
    def __init__(self, name: str, version: str, requires: list[str]):
        self.metadata = {"Name": name}
        self.version = version
        self.requires = requires


_INSTALLED = {
    "torch": _Dist("torch", "2.13.0+cu126", ["nvidia-cudnn-cu12==9.1; platform_system == 'Linux'", "filelock"]),
    "filelock": _Dist("filelock", "3.20.0", []),
    "typer": _Dist(
        "typer",
        "0.20.0",
        [
            "colorama; platform_system == 'Windows'",
            "tomli; python_version < '3.11'",
            "shellingham; sys_platform == 'linux' and python_version >= '3.11'",
            "pytest; extra == 'test'",
            "Not_Installed>=1",
        ],
    ),
    "shellingham": _Dist("shellingham", "1.5.4", []),
}


def test_pins_follow_the_images_markers_not_this_machines(monkeypatch):
    def distribution(name):
        try:
            return _INSTALLED[name.lower().replace("_", "-")]
        except KeyError:
            raise deps.PackageNotFoundError(name) from None

    monkeypatch.setattr(deps, "distribution", distribution)
    assert deps.pinned_requirements(["torch", "typer"]) == [  # sorted by canonical name
        "filelock==3.20.0",
        "Not_Installed",  # not installed here: unpinned, for pip to resolve in the image
        "shellingham==1.5.4",  # Linux, CPython 3.11: kept whatever machine renders the context
        "torch==2.13.0+cpu",  # the CPU build, without the CUDA libraries
        "typer==0.20.0",
    ]


def test_find_links_are_read_the_way_pip_reads_them(tmp_path, monkeypatch):
    conf = tmp_path / "pip.conf"
    conf.write_text(f"[global]\nfind-links = {tmp_path / 'g1'}\n    {tmp_path / 'g2'}\n[install]\nfind-links = /i\n")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
    monkeypatch.setenv("PIP_FIND_LINKS", "/from-env")
    found = deps.pip_find_links()
    assert {str(tmp_path / "g1"), str(tmp_path / "g2"), "/i", "/from-env"} <= set(found)
    assert found[0] == "/from-env" and len(found) == len(set(found))


def test_finding_pip_leaves_setuptools_distutils_in_place():
    """Looking pip up must not switch the process to stdlib distutils: torch.compile would then fail."""
    script = (
        "from ai4life_kit.challenge import deps\n"
        "assert deps.pip_find_links() is not None\n"
        "import distutils\n"
        "print(distutils.__file__)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "setuptools" in proc.stdout, proc.stdout


def test_a_torch_wheel_in_a_pip_conf_folder_is_found(tmp_path, monkeypatch):
    (tmp_path / "wheels").mkdir()
    fake = tmp_path / "wheels" / "torch-9.9.2+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
    fake.write_bytes(b"")
    (tmp_path / "pip.conf").write_text(f"[global]\nfind-links = file://{tmp_path / 'wheels'}\n")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(tmp_path / "pip.conf"))
    monkeypatch.delenv("AI4LIFE_KIT_WHEELS", raising=False)
    assert deps.find_torch_wheel("torch==9.9.2+cpu") == fake
    assert deps.torch_wheel_for("torch==9.9.2+cpu") == fake
    assert deps.torch_wheel_for("torch==9.9.2+cpu", fake) == fake
    with pytest.raises(UserInputError, match=r"is not a torch-9\.9\.3\+cpu-cp311-\*\.whl file"):
        deps.torch_wheel_for("torch==9.9.3+cpu", fake)


def test_torch_pin_is_the_torch_line():
    assert deps.torch_pin(["numpy==2.0", "torch==2.13.0+cpu", "typer==1"]) == "torch==2.13.0+cpu"
