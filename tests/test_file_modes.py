"""Every file and folder the kit writes gets the mode the umask gives (0644 / 0755 under umask 022).

Temporary names made with ``mkstemp`` / ``mkdtemp`` are 0600 / 0700; renamed as they are, a
package or a Zarr output would be unreadable to a container's non-root user or a colleague.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from ai4life_kit.fileio import apply_umask_mode, atomic_write_text
from kit_helpers import invoke, small_spec


@pytest.fixture(params=[0o022, 0o027], ids=["umask022", "umask027"])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _modes(root: Path) -> dict[str, int]:
    """``relative path -> permission bits`` for ``root`` and everything below it."""
    out = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        out[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return out


def _assert_umask_modes(root: Path, umask: int) -> None:
    wrong = {}
    for rel, mode in _modes(root).items():
        path = root / rel
        want = (0o777 if path.is_dir() else 0o666) & ~umask
        if path.is_file() and mode & 0o111:
            want |= 0o111 & ~umask  # an executable the kit made on purpose keeps its x bits
        if mode != want:
            wrong[rel] = oct(mode)
    assert not wrong, f"modes other than the umask's in {root}: {wrong}"


def test_atomic_files_and_folders_get_umask_modes(tmp_path, umask):
    atomic_write_text(tmp_path / "a.txt", "x")
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o666 & ~umask
    folder = tmp_path / "made-by-mkdtemp"
    folder.mkdir(mode=0o700)
    (folder / "sub").mkdir(mode=0o700)
    (folder / "sub" / "f").write_text("y")
    os.chmod(folder / "sub" / "f", 0o600)
    apply_umask_mode(folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((folder / "sub").stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((folder / "sub" / "f").stat().st_mode) == 0o666 & ~umask


@pytest.mark.slow
def test_run_dir_package_and_predictions_get_umask_modes(tmp_path, umask):
    """Train, package, predict to TIFF and to Zarr: nothing the kit writes is 0600 or 0700."""
    from ai4life_kit.config.io import save_spec
    from ai4life_kit.export import package_run
    from ai4life_kit.simulate import simulate_dataset

    sim = simulate_dataset(tmp_path / "sim", shape=(96, 96), n=1, seed=7)
    save_spec(
        small_spec("n2v", 2, model__width=8, training__epochs=1, training__steps_per_epoch=3), tmp_path / "s.yaml"
    )
    run = tmp_path / "run"
    result = invoke("train", tmp_path / "s.yaml", "--data", sim["noisy"][0], "--out", run, "--device", "cpu", "-q")
    assert result.exit_code == 0, result.stderr
    _assert_umask_modes(run, umask)

    out = tmp_path / "pkg" / "m.bioimageio.zip"
    package_run(run, out, authors=["Ada Lovelace"], run_test=False, onnx=False)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask
    import zipfile

    with zipfile.ZipFile(out) as zf:  # and what unzipping it gives, rdf.yaml included
        inside = {i.filename: stat.S_IMODE(i.external_attr >> 16) for i in zf.infolist()}
    assert inside and all(mode == 0o666 & ~umask for mode in inside.values()), inside

    result = invoke("predict", out, sim["noisy"][0], "--out", tmp_path / "tif", "--device", "cpu", "-q")
    assert result.exit_code == 0, result.stderr
    _assert_umask_modes(tmp_path / "tif", umask)

    pytest.importorskip("zarr")
    result = invoke(
        "predict", run, sim["noisy"][0], "--out", tmp_path / "zarr", "--format", "zarr", "--device", "cpu", "-q"
    )
    assert result.exit_code == 0, result.stderr
    written = list((tmp_path / "zarr").glob("*.zarr"))
    assert written and np.all([p.is_dir() for p in written])
    _assert_umask_modes(tmp_path / "zarr", umask)
