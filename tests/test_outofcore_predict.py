"""Out-of-core prediction: streamed tile by tile from and to disk, equal to in-memory prediction."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from ai4life_kit.data.sources import ArraySource, ChunkCache, MemmapTiffSource, open_source
from ai4life_kit.data.tiff_io import read_image, write_image
from ai4life_kit.data.views import CanonicalView
from ai4life_kit.errors import DataError, OutputExistsError
from ai4life_kit.models.unet import UNet
from ai4life_kit.prediction import Predictor
from ai4life_kit.prediction.streaming import read_padded_tile
from ai4life_kit.prediction.tiling import plan_grid, symmetric_index
from kit_helpers import invoke

NORM = {"mean": 100.0, "std": 20.0, "target_mean": 90.0, "target_std": 15.0}


def _model_args(dims: int = 2, channels: int = 1, depth: int = 2, width: int = 8, batch_norm: bool = True) -> dict:
    return {
        "dims": dims,
        "in_channels": channels,
        "out_channels": channels,
        "depth": depth,
        "width": width,
        "batch_norm": batch_norm,
        "n2v2": False,
        "residual": False,
    }


def _model(args: dict, seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    model = UNet(**args)
    for m in model.modules():  # non-trivial batch-norm statistics, as after training
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model


def _norm(channels: int) -> dict:
    return {
        "mean": [NORM["mean"] + 10 * c for c in range(channels)],
        "std": [NORM["std"] + c for c in range(channels)],
        "target_mean": [NORM["target_mean"]] * channels,
        "target_std": [NORM["target_std"]] * channels,
    }


def _predictor(dims: int = 2, channels: int = 1, depth: int = 2) -> Predictor:
    args = _model_args(dims, channels, depth)
    norm = _norm(channels)
    return Predictor(
        _model(args), norm["mean"], norm["std"], norm["target_mean"], norm["target_std"], dims, depth, "cpu"
    )


def _run_dir(path: Path, **model_args) -> Path:
    """A run directory (checkpoint + normalisation) for a random-initialised U-Net."""
    args = _model_args(**model_args)
    (path / "checkpoints").mkdir(parents=True)
    torch.save({"model_args": args, "model_state": _model(args).state_dict()}, path / "checkpoints" / "best.pt")
    (path / "normalization.json").write_text(json.dumps(_norm(args["in_channels"])))
    return path


def _image(shape, seed: int = 1, dtype=np.float32) -> np.ndarray:
    img = np.random.default_rng(seed).normal(100, 20, shape).clip(0, None)
    return img.astype(dtype)


def _streamed(p: Predictor, img: np.ndarray, axes: str, **kwargs) -> np.ndarray:
    """Out-of-core prediction between in-memory sources (same code path as files)."""
    out = np.full(img.shape, np.nan, dtype=np.float32)
    view = CanonicalView(ArraySource(img, axes), p.spatial_ndim)
    p.predict_view(view, CanonicalView(ArraySource(out, axes), p.spatial_ndim), **kwargs)
    return out


def _fail_on_batch(k: int):
    """A progress callback that raises after ``k`` batches (a write failing midway)."""
    calls = []

    def progress(n: int) -> None:
        calls.append(n)
        if len(calls) == k:
            raise RuntimeError("disk full")

    return progress


def _read(path: Path, axes: str | None = None, dims: int = 2):
    """Open an output afresh: a private chunk cache, so no chunk read earlier is served again."""
    return open_source(path, axes, dims, cache=ChunkCache())


def _leftovers(folder: Path) -> list[str]:
    return sorted(f.name for f in folder.iterdir() if f.name.startswith("."))


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_symmetric_index_is_np_pad(n):
    x = np.arange(n)
    for before in (0, 1, 5, 16):
        for after in (0, 2, 9, 23):  # padding longer than the axis repeats the reflection
            padded = np.pad(x, (before, after), mode="symmetric")
            np.testing.assert_array_equal(x[symmetric_index(-before, n + after, n)], padded)


def test_padded_tiles_read_only_their_window():
    img = _image((2, 45, 37))
    view = CanonicalView(ArraySource(img, "CYX"), 2)
    grid = plan_grid(img.shape[1:], (32, 32), 8, 4, 512)
    assert min(grid.counts) >= 2
    widths = [(0, 0)] + [(0, p - s) for p, s in zip(grid.padded, grid.shape, strict=True)]
    padded = np.pad(img, widths, mode="symmetric")
    for origin in grid.origins():
        window = (slice(None), *(slice(o, o + t) for o, t in zip(origin, grid.tile, strict=True)))
        np.testing.assert_array_equal(read_padded_tile(view, 0, origin, grid), padded[window])


# Out-of-core runs the same batches through the same network as in memory, so the numbers are
# not just close but identical.
@pytest.mark.parametrize(
    ("axes", "shape", "dims", "channels", "tile", "tta"),
    [
        ("SYX", (3, 130, 70), 2, 1, (96, 96), False),  # batches span samples; sizes not tile multiples
        ("TCYX", (2, 2, 101, 67), 2, 2, (96, 96), False),
        ("YXC", (77, 90, 2), 2, 2, (80, 80), False),
        ("ZYX", (21, 38, 35), 3, 1, (28, 28, 28), False),
        ("CZYX", (2, 9, 30, 41), 3, 2, (28, 28, 28), False),
        ("YX", (5, 7), 2, 1, None, False),  # padding longer than the image
        ("SYX", (2, 90, 50), 2, 1, (80, 80), True),
        ("ZYX", (8, 24, 30), 3, 1, (28, 28, 28), True),
    ],
)
def test_streamed_equals_in_memory(axes, shape, dims, channels, tile, tta):
    p = _predictor(dims, channels, depth=1 if dims == 3 else 2)
    img = _image(shape)
    if tile is not None:
        assert len(p.plan([shape[axes.index(a)] for a in ("ZYX" if dims == 3 else "YX")], tile)) > 1
    expected = p.predict(img, axes, tile=tile, tta=tta, batch_size=3)
    np.testing.assert_array_equal(_streamed(p, img, axes, tile=tile, tta=tta, batch_size=3), expected)


def test_progress_counts_tiles():
    p = _predictor()
    img = _image((2, 130, 70))
    done = []
    _streamed(p, img, "SYX", tile=(96, 96), batch_size=3, progress=done.append)
    assert sum(done) == p.n_tiles(img.shape, "SYX", (96, 96)) and max(done) == 3


@pytest.mark.parametrize(
    ("fmt", "axes", "shape", "dims"),
    [("tif", "SCYX", (2, 1, 130, 101), 2), ("tif", "YXC", (90, 77, 1), 2), ("zarr", "TYX", (2, 99, 120), 2)]
    + [("zarr", "CZYX", (1, 12, 40, 37), 3), ("tif", "ZYX", (12, 40, 37), 3)],
)
def test_files_round_trip_with_shape_axes_and_values(tmp_path, fmt, axes, shape, dims):
    if fmt == "zarr":
        pytest.importorskip("zarr")
    p = _predictor(dims, depth=1)
    img = _image(shape, dtype=np.uint16)
    write_image(tmp_path / "in.tif", img, axes, dtype=np.uint16)
    tile = (96, 96) if dims == 2 else (40, 40, 40)
    dst = p.predict_to(tmp_path / "in.tif", tmp_path / f"out.{fmt}", tile=tile)
    expected = p.predict(img.astype(np.float32), axes, tile=tile)
    back = _read(dst, None, dims)
    assert (back.axes, back.shape, back.dtype) == (axes, shape, np.float32)
    np.testing.assert_array_equal(back.read_all(), expected)
    if fmt == "tif":
        assert isinstance(back, MemmapTiffSource)  # uncompressed and contiguous: memory-mappable
        again = read_image(dst, None, dims)
        assert again.axes == axes
        np.testing.assert_array_equal(again.data, expected)
        with tifffile.TiffFile(dst) as tif:
            assert tif.pages[0].tags["ResolutionUnit"].value == 3  # CENTIMETER, as write_image writes
    else:
        core = p.plan(img.shape[-dims:], tile).core
        assert tuple(back.chunks[-dims:]) == tuple(min(c, n) for c, n in zip(core, shape[-dims:], strict=True))
    assert _leftovers(tmp_path) == []


def test_zarr_input_streams_from_chunks(tmp_path):
    pytest.importorskip("zarr")
    from ai4life_kit.data.targets import ZarrTarget

    img = _image((3, 150, 110), dtype=np.uint16)
    src = ZarrTarget.create(tmp_path / "in.zarr", img.shape, "TYX", chunks=(1, 64, 64), dtype=np.uint16)
    src.write(tuple(slice(0, n) for n in img.shape), img)
    p = _predictor()
    p.predict_to(tmp_path / "in.zarr", tmp_path / "out.tif", tile=(96, 96))
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out.tif"), p.predict(img, "TYX", tile=(96, 96)))


@pytest.mark.parametrize("fmt", ["tif", "zarr"])
def test_interrupted_writes_leave_nothing_and_never_clobber(tmp_path, fmt):
    if fmt == "zarr":
        pytest.importorskip("zarr")
    p = _predictor()
    img = _image((3, 130, 70))
    src = ArraySource(img, "SYX", tmp_path / "in.tif")
    dst = tmp_path / f"out.{fmt}"

    with pytest.raises(RuntimeError, match="disk full"):
        p.predict_to(src, dst, tile=(96, 96), progress=_fail_on_batch(2))
    assert not dst.exists() and _leftovers(tmp_path) == []

    p.predict_to(src, dst, tile=(96, 96))
    first = _read(dst).read_all()
    with pytest.raises(OutputExistsError, match="--overwrite"):
        p.predict_to(src, dst, tile=(96, 96))
    with pytest.raises(RuntimeError, match="disk full"):  # a failed --overwrite run keeps the old output
        p.predict_to(src, dst, tile=(96, 96), overwrite=True, progress=_fail_on_batch(2))
    np.testing.assert_array_equal(_read(dst).read_all(), first)
    assert _leftovers(tmp_path) == []
    p.predict_to(ArraySource(img + 50, "SYX"), dst, tile=(96, 96), overwrite=True)
    assert not np.array_equal(_read(dst).read_all(), first)
    assert _leftovers(tmp_path) == []


def test_nan_input_is_a_data_error_without_output(tmp_path):
    img = _image((64, 64))
    img[40, 3] = np.nan
    with pytest.raises(DataError, match="NaN"):
        _predictor().predict_to(ArraySource(img, "YX"), tmp_path / "out.tif")
    assert list(tmp_path.iterdir()) == []


def test_zarr_output_without_zarr_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "zarr", None)  # import zarr -> ImportError
    with pytest.raises(DataError, match=r"pip install 'ai4life-kit\[zarr\]'"):
        _predictor().predict_to(ArraySource(_image((64, 64)), "YX"), tmp_path / "out.zarr")
    assert list(tmp_path.iterdir()) == []


# -- the command line ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return _run_dir(tmp_path_factory.mktemp("ooc") / "run")


def test_cli_out_of_core_equals_in_memory(tmp_path, run_dir, monkeypatch):
    img = _image((2, 150, 130), dtype=np.uint16)
    write_image(tmp_path / "img.tif", img, "SYX", dtype=np.uint16)
    outputs = {}
    for mode in ("--out-of-core", "--in-memory", None):
        out = tmp_path / f"out{mode}"
        args = ["predict", run_dir, tmp_path / "img.tif", "--out", out, "--tile", "96,96", "--device", "cpu"]
        result = invoke(*args, *([mode] if mode else []))
        assert result.exit_code == 0, result.output
        assert "Wrote 1 file(s)" in result.output
        back = read_image(out / "img.tif")
        assert (back.axes, back.data.shape) == ("SYX", img.shape)
        outputs[mode] = back.data
    np.testing.assert_array_equal(outputs["--out-of-core"], outputs["--in-memory"])
    np.testing.assert_array_equal(outputs[None], outputs["--in-memory"])

    # above the size threshold the default is out of core (here lowered to a few pixels)
    streamed = []
    original = Predictor.predict_to
    monkeypatch.setattr("ai4life_kit.prediction.predictor.STREAM_ABOVE_BYTES", 1000)
    monkeypatch.setattr(Predictor, "predict_to", lambda *a, **k: streamed.append(a[1]) or original(*a, **k))
    result = invoke("predict", run_dir, tmp_path / "img.tif", "--out", tmp_path / "auto", "-q", "--tile", "96,96")
    assert result.exit_code == 0, result.output
    assert len(streamed) == 1
    np.testing.assert_array_equal(read_image(tmp_path / "auto" / "img.tif").data, outputs["--in-memory"])


def test_cli_zarr_inputs_and_outputs(tmp_path, run_dir):
    pytest.importorskip("zarr")
    from ai4life_kit.data.targets import ZarrTarget

    img = _image((2, 120, 100), dtype=np.uint16)
    src = ZarrTarget.create(tmp_path / "stack.ome.zarr", img.shape, "TYX", chunks=(1, 50, 50), dtype=np.uint16)
    src.write(tuple(slice(0, n) for n in img.shape), img)
    write_image(tmp_path / "img.tif", img, "TYX", dtype=np.uint16)
    common = ["--out", tmp_path / "out", "-q", "--tile", "96,96"]
    # a Zarr input gives a Zarr output by default; --format zarr turns a TIFF into Zarr
    assert invoke("predict", run_dir, tmp_path / "stack.ome.zarr", *common).exit_code == 0
    result = invoke("predict", run_dir, tmp_path / "img.tif", *common, "--format", "zarr", "--in-memory")
    assert result.exit_code == 0, result.output
    expected = Predictor.load(run_dir, "cpu").predict(img, "TYX", tile=(96, 96))
    for name in ("stack.zarr", "img.zarr"):
        back = _read(tmp_path / "out" / name)
        assert back.axes == "TYX"
        np.testing.assert_array_equal(back.read_all(), expected)


def test_cli_bad_requests_are_one_line_errors(tmp_path, run_dir, monkeypatch):
    write_image(tmp_path / "img.tif", _image((64, 64)), "YX")
    base = ["predict", run_dir, tmp_path / "img.tif", "--out", tmp_path / "out", "-q"]
    result = invoke(*base, "--format", "png")
    assert result.exit_code == 2 and "--format" in result.output
    assert invoke(*base, "--out-of-core").exit_code == 0
    result = invoke(*base, "--out-of-core")
    assert result.exit_code == 2 and "already exists" in result.output
    monkeypatch.setitem(sys.modules, "zarr", None)
    result = invoke(*base, "--format", "zarr")
    assert result.exit_code == 2 and "pip install 'ai4life-kit[zarr]'" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert sorted(f.name for f in (tmp_path / "out").iterdir()) == ["img.tif"]


# -- memory bound -------------------------------------------------------------------------------
# RLIMIT_DATA caps the process's private writable memory (heap, anonymous mmaps: everything numpy
# and torch allocate) but not file mappings (the memory-mapped input and output live in the page
# cache). RLIMIT_AS would count those mappings, whose size grows with the image though they cost
# no memory, so it cannot tell the two paths apart on large images. A torch process needs about
# 250-300 MB of it on its own (with the thread count fixed below).
DATA_LIMIT = 500 * 2**20
# 196 MiB as float32. In memory the CLI holds the uint16 input and the float32 output (6 bytes a pixel,
# ~300 MB more than the torch process); out of core it holds a few tiles (~300 MB in all).
MEDIUM = (7168, 7168)


def _limited_cli(*args) -> subprocess.CompletedProcess:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (DATA_LIMIT, DATA_LIMIT))

    # Fixed thread counts and malloc arenas: every thread's stack and arena count against the limit.
    env = dict(os.environ, OMP_NUM_THREADS="2", MKL_NUM_THREADS="2", MALLOC_ARENA_MAX="2")
    cmd = [sys.executable, "-m", "ai4life_kit", "predict", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, preexec_fn=limit)


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_DATA semantics are Linux's")
def test_out_of_core_stays_under_a_memory_limit_that_in_memory_exceeds(tmp_path):
    run = _run_dir(tmp_path / "run", depth=1, width=4, batch_norm=False)
    img = np.random.default_rng(0).integers(0, 2000, MEDIUM, dtype=np.uint16)
    tifffile.imwrite(tmp_path / "medium.tif", img)
    common = ["--tile", "256,256", "--device", "cpu", "-q"]

    streamed = _limited_cli(run, tmp_path / "medium.tif", "--out", tmp_path / "ooc", "--out-of-core", *common)
    assert streamed.returncode == 0, streamed.stderr
    in_memory = _limited_cli(run, tmp_path / "medium.tif", "--out", tmp_path / "mem", "--in-memory", *common)
    assert in_memory.returncode == 1, in_memory.stderr  # the limit binds: without streaming it fails
    assert "out of memory" in in_memory.stderr and "--out-of-core" in in_memory.stderr
    assert not (tmp_path / "mem" / "medium.tif").exists()

    expected = Predictor.load(run, "cpu").predict(img, "YX", tile=(256, 256))
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "ooc" / "medium.tif"), expected)
