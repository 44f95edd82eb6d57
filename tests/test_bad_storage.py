"""Damaged inputs and hostile outputs: one line, the right exit code, nothing half-written.

Truncated TIFFs, a file where a folder should be, a read-only or full file system, SIGTERM
and the temporaries a ``kill -9`` leaves: each used to end in "Internal error", a SIGBUS or
stray hidden files. Full and read-only file systems are real tmpfs mounts (root can mount;
CI runs as root, see scripts/setup-podman.sh), not mocks.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from ai4life_kit.fileio import remove_stale_temporaries, scratch_dir
from ai4life_kit.training import train
from kit_helpers import invoke, run_cli, small_spec

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A trained run directory (one short epoch) and the image it was trained on."""
    root = tmp_path_factory.mktemp("storage")
    image = root / "img.tif"
    rng = np.random.default_rng(0)
    tifffile.imwrite(image, (rng.random((128, 128)) * 1000).astype(np.uint16))
    spec = small_spec("n2v", training__epochs=1, training__steps_per_epoch=2)
    train(spec, [image], None, root / "run", progress=False)
    return root / "run", image


@contextlib.contextmanager
def tmpfs(path: Path, size_bytes: int, read_only: bool = False):
    """A tmpfs of ``size_bytes`` mounted at ``path`` (created) for the block."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size_bytes}" + (",ro" if read_only else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _one_line_error(res, *fragments: str) -> None:
    err = res.stderr.strip().splitlines()
    assert err, res.stdout
    last = err[-1]
    assert last.startswith("Error: "), res.stderr
    assert "Internal error" not in res.stderr and "Traceback" not in res.stderr, res.stderr
    for fragment in fragments:
        assert fragment in last, last


def _hidden_temporaries(*folders: Path) -> list[Path]:
    return [p for folder in folders if folder.exists() for p in folder.rglob(".*.tmp*")]


# -- 5: truncated TIFFs -------------------------------------------------------------------


def _truncated(src: Path, dst: Path, fraction: float) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


@pytest.mark.parametrize("compression", [None, "zlib"], ids=["contiguous", "tiled-zlib"])
def test_truncated_tiff_is_a_data_error_everywhere(tmp_path, run_dir, compression):
    run, _ = run_dir
    rng = np.random.default_rng(1)
    good = tmp_path / "good.tif"
    tile = (64, 64) if compression else None
    tifffile.imwrite(good, (rng.random((256, 256)) * 1000).astype(np.uint16), compression=compression, tile=tile)
    bad = _truncated(good, tmp_path / "bad" / "bad.tif", 0.6)
    expect = "truncated" if compression is None else "cannot be read at"
    spec = Path(__file__).parents[1] / "model_specs" / "n2v-2d.yaml"
    for loading in ("memory", "lazy"):
        res = invoke("train", spec, "--data", bad, "--out", tmp_path / f"r-{loading}", "--loading", loading,
                     "--epochs", "1", "--steps-per-epoch", "1", "--patch-size", "32,32")  # fmt: skip
        assert res.exit_code == 2, res.stderr
        _one_line_error(res, str(bad), expect)
        assert not (tmp_path / f"r-{loading}").exists()
    for mode in ("--out-of-core", "--in-memory"):
        res = invoke("predict", run, bad, "--out", tmp_path / "pred", mode, "-q")
        assert res.exit_code == 2, res.stderr
        _one_line_error(res, "bad.tif")
        assert not (tmp_path / "pred").exists()  # the folder predict created is gone again


# -- 6: a file where a folder should be ----------------------------------------------------


def test_a_file_where_a_folder_should_be(tmp_path, run_dir):
    run, image = run_dir
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    spec = Path(__file__).parents[1] / "model_specs" / "n2v-2d.yaml"
    train_args = ["--epochs", "1", "--steps-per-epoch", "1", "--patch-size", "32,32"]
    cases = {
        "predict --out FILE": ["predict", run, image, "--out", blocker, "-q"],
        "predict --out FILE/sub": ["predict", run, image, "--out", blocker / "sub", "-q"],
        "predict --out-of-core": ["predict", run, image, "--out", blocker / "sub", "--out-of-core", "-q"],
        "train --out FILE": ["train", spec, "--data", image, "--out", blocker, *train_args],
        "train --out FILE/run": ["train", spec, "--data", image, "--out", blocker / "run", *train_args],
        "package --out FILE/x.zip": ["package", run, "--author", "A", "--out", blocker / "x.bioimageio.zip"],
        "evaluate --json FILE/x.json": ["evaluate", tmp_path, "--gt", tmp_path, "--json", blocker / "x.json"],
    }
    for what, args in cases.items():
        res = invoke(*args)
        assert res.exit_code == 2, f"{what}: {res.stderr}"
        _one_line_error(res, str(blocker), "is a file, not a folder")
    assert blocker.read_text() == "not a folder"
    folder = tmp_path / "scores"
    folder.mkdir()
    res = invoke("evaluate", tmp_path, "--gt", tmp_path, "--json", folder, "--overwrite")
    assert res.exit_code == 2
    _one_line_error(res, str(folder), "is a folder")
    assert folder.is_dir()


def test_predict_checks_the_output_folder_before_predicting(tmp_path, run_dir, monkeypatch):
    """A bad --out fails before any tile runs, not after the whole image was denoised."""
    run, image = run_dir
    from ai4life_kit.prediction import Predictor

    calls = []
    monkeypatch.setattr(Predictor, "predict", lambda *a, **k: calls.append(1))
    (tmp_path / "afile").write_text("x")
    res = invoke("predict", run, image, "--out", tmp_path / "afile", "-q")
    assert res.exit_code == 2 and calls == []


# -- 7: read-only and full file systems ----------------------------------------------------


@needs_root
def test_read_only_file_system_is_named_before_any_work(tmp_path, run_dir):
    run, image = run_dir
    spec = Path(__file__).parents[1] / "model_specs" / "n2v-2d.yaml"
    with tmpfs(tmp_path / "ro", 4 * 2**20, read_only=True) as ro:
        for args in (
            ["predict", run, image, "--out", ro / "pred", "-q"],
            ["train", spec, "--data", image, "--out", ro / "run", "--epochs", "1"],
            ["package", run, "--author", "A", "--out", ro / "m.bioimageio.zip"],
            ["simulate", ro / "sim", "--shape", "64,64"],
        ):
            res = invoke(*args)
            assert res.exit_code == 2, res.stderr
            _one_line_error(res, "read-only file system")


def _epochs_on_disk(run: Path) -> tuple[int, int, list[int]]:
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"]
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)["epoch"]
    rows = (run / "metrics.csv").read_text().strip().splitlines()[1:]
    return last, best, [int(r.split(",")[0]) for r in rows]


@needs_root
def test_full_disk_during_resume_leaves_a_consistent_epoch(tmp_path, run_dir):
    """No space for epoch 2's files: one line, exit 1, and epoch 1's set as it was (none ahead)."""
    _, image = run_dir
    spec = small_spec("n2v", training__epochs=1, training__steps_per_epoch=2)
    spec_file = tmp_path / "spec.yaml"
    from ai4life_kit.config.io import save_spec

    save_spec(spec, spec_file)
    probe = tmp_path / "probe"
    train(spec, [image], None, probe, progress=False)
    one_epoch = sum(p.stat().st_size for p in probe.rglob("*") if p.is_file())
    # Room for one epoch's files and a little, not for a second set written beside the first.
    with tmpfs(tmp_path / "small", int(one_epoch * 1.4)) as small:
        run = small / "run"
        res = run_cli("train", spec_file, "--data", image, "--out", run, "--quiet")
        assert res.returncode == 0, res.stderr
        before = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}
        res = run_cli("train", spec_file, "--data", image, "--out", run, "--resume", "--epochs", "3", "--quiet")
        assert res.returncode == 1, res.stderr
        _one_line_error(res, "no space left on device", str(small))
        assert _epochs_on_disk(run) == (1, 1, [1])
        assert {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()} == before
        assert _hidden_temporaries(run) == []


@needs_root
@pytest.mark.parametrize("mode", ["--in-memory", "--out-of-core"])
def test_full_disk_while_predicting(tmp_path, run_dir, mode):
    """The out-of-core TIFF is a memory map: unreserved, a full disk killed it with SIGBUS."""
    run, _ = run_dir
    image = tmp_path / "big.tif"
    tifffile.imwrite(image, np.random.default_rng(2).random((1024, 1024)).astype(np.float32))  # 4 MiB out
    with tmpfs(tmp_path / "small", 2 * 2**20) as small:
        res = run_cli("predict", run, image, "--out", small / "pred", mode, "-q")
        assert res.returncode == 1, (res.returncode, res.stderr)
        _one_line_error(res, "no space left on device", "big.tif")
        assert _hidden_temporaries(small) == []
        assert not list(small.rglob("*.tif"))


# -- 9: SIGTERM and stale temporaries ------------------------------------------------------


def _wait_for(predicate, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def _terminate_when(ready, *args, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """Run the CLI, send SIGTERM once ``ready()`` holds, and return the process and its stderr."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ai4life_kit", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        _wait_for(lambda: ready() or proc.poll() is not None, timeout=300)
        assert proc.poll() is None, f"{args[0]} ended before the signal"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    return proc, err


def test_sigterm_during_out_of_core_predict_removes_the_temporary(tmp_path, run_dir):
    run, _ = run_dir
    image = tmp_path / "big.tif"
    tifffile.imwrite(image, np.random.default_rng(3).random((2048, 2048)).astype(np.float32))
    out = tmp_path / "pred"
    proc, err = _terminate_when(lambda: bool(_hidden_temporaries(out)), "predict", run, image, "--out", out,
                                "--out-of-core", "-q")  # fmt: skip
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "Terminated."
    assert _hidden_temporaries(out) == [] and not (out / "big.tif").exists()


def test_sigterm_during_package_removes_zip_and_scratch(tmp_path, run_dir):
    pytest.importorskip("bioimageio.spec")
    run, _ = run_dir
    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    out = tmp_path / "pkg" / "m.bioimageio.zip"
    # The zip's temporary appears once the weights are exported, before the long test.
    proc, err = _terminate_when(lambda: bool(_hidden_temporaries(out.parent)), "package", run, "--author", "A",
                                "--out", out, env=env)  # fmt: skip
    assert proc.returncode == 143, err
    assert _hidden_temporaries(out.parent) == [] and not out.exists()
    assert not list(scratch.glob("ai4life-kit-package-*"))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path, run_dir):
    run, image = run_dir
    out = tmp_path / "pred"
    out.mkdir()
    dead = out / f".img.tif.{_dead_pid()}.abc123.tmp.tif"
    dead.write_bytes(b"left by kill -9")
    alive = out / f".img.tif.{os.getpid()}.def456.tmp.tif"  # a live writer's: must stay
    alive.write_bytes(b"being written")
    unrelated = out / ".notes.tmp.txt"  # no pid: not ours to judge
    unrelated.write_text("user file")
    res = invoke("predict", run, image, "--out", out, "-q")
    assert res.exit_code == 0, res.stderr
    assert not dead.exists() and alive.exists() and unrelated.exists()
    assert (out / "img.tif").is_file()
    assert remove_stale_temporaries(out / "img.tif") == []  # the live one is still left alone


def test_stale_scratch_folders_of_dead_packagers_are_removed(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    stale = tmp_path / f"ai4life-kit-package-{_dead_pid()}-xyz"
    (stale / "weights").mkdir(parents=True)
    live = tmp_path / f"ai4life-kit-package-{os.getpid()}-live"
    live.mkdir()
    with scratch_dir("package") as mine:
        assert Path(mine).parent == tmp_path and Path(mine).name.startswith(f"ai4life-kit-package-{os.getpid()}-")
        assert not stale.exists() and live.exists()
    assert not Path(mine).exists()


def test_broken_pipe_is_not_an_internal_error():
    proc = subprocess.run(
        f"{sys.executable} -m ai4life_kit train --help | head -n 1", shell=True, capture_output=True, text=True
    )
    assert "Internal error" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_a_sigterm_that_a_library_wraps_in_its_own_error_still_exits_143(tmp_path, monkeypatch):
    """pydantic's serializer turns the Terminated of a SIGTERM into a PydanticSerializationError
    (seen in CI, during package); the command must still say "Terminated." and exit 143."""
    import ai4life_kit.config as config

    def wrapping_library(*args, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises Terminated here
        except BaseException as exc:
            raise RuntimeError(f"serialization failed: {exc!r}") from None
        raise AssertionError("SIGTERM did not arrive")

    monkeypatch.setattr(config, "load_spec", wrapping_library)
    result = invoke("train", tmp_path / "spec.yaml", "--data", tmp_path / "x.tif", "--out", tmp_path / "run")
    assert result.exit_code == 143, result.output
    assert "Terminated." in result.output and "Internal error" not in result.output
    # and a later command in the same process is not taken for a terminated one
    monkeypatch.setattr(config, "load_spec", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("a bug")))
    result = invoke("train", tmp_path / "spec.yaml", "--data", tmp_path / "x.tif", "--out", tmp_path / "run")
    assert result.exit_code == 1 and "Internal error: RuntimeError: a bug" in result.output
