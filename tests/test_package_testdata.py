"""Where a package's test and sample tensors and cover come from: the run's real training files.

A run records the files its ``--data`` arguments resolved to (absolute paths, axes); packaging
crops them lazily (only the crop's window is read) for TIFF files, folders, globs, Zarr and
lazily loaded data; synthetic test data only with ``--synthetic-test-data``.
"""

from __future__ import annotations

import io
import json
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from ai4life_kit.config import parse_spec, save_spec
from ai4life_kit.data import sources, targets
from ai4life_kit.data.loading import load_training_set, split_validation
from ai4life_kit.errors import DataError, UserInputError
from ai4life_kit.export import load_run, package_run
from ai4life_kit.export.cover import COVER_MAX_BYTES, write_cover
from ai4life_kit.export.testdata import make_test_input, min_size, training_files, valid_size
from ai4life_kit.models.unet import UNet
from ai4life_kit.simulate import simulate_dataset
from ai4life_kit.training import train
from kit_helpers import invoke, small_spec

AUTHOR = "Ada Lovelace"


def tiny_spec(algorithm: str = "n2v2", **overrides):
    """A spec that trains in a second or two: one epoch of a few steps of a small U-Net."""
    return small_spec(
        algorithm,
        2,
        model__width=8,
        training__epochs=1,
        training__steps_per_epoch=3,
        training__batch_size=4,
        training__val_patches=4,
        **overrides,
    )


def expected_crop(image: np.ndarray, run_dir: Path) -> np.ndarray:
    """The centre crop of valid size of a 2D ``y, x`` image for the run's model, as float32."""
    run = load_run(run_dir)
    sizes = [valid_size(n, min_size(run.halo, run.step), run.step, 256) for n in image.shape]
    starts = [(n - s) // 2 for n, s in zip(image.shape, sizes, strict=True)]
    return image[starts[0] : starts[0] + sizes[0], starts[1] : starts[1] + sizes[1]].astype(np.float32)


def zip_members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def write_zarr(path: Path, data: np.ndarray, axes: str, chunks: tuple[int, ...]) -> Path:
    """A Zarr array with xarray-style axis names (what open_source reads back)."""
    target = targets.ZarrTarget.create(path, data.shape, axes, chunks=chunks, dtype=data.dtype)
    target.write(tuple(slice(0, n) for n in data.shape), data)
    return path


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    # Different sizes: the crop must come from the first file, at the first file's size.
    a = simulate_dataset(root / "a", shape=(100, 120), n=1, seed=1)
    b = simulate_dataset(root / "b", shape=(90, 90), n=1, seed=2)
    folder = root / "noisy"
    folder.mkdir()
    (folder / "cell_a.tif").write_bytes(a["noisy"][0].read_bytes())
    (folder / "cell_b.tif").write_bytes(b["noisy"][0].read_bytes())
    (folder / "notes.txt").write_text("not an image")
    return root, folder


# ---------------------------------------------------------------------------------------------
# real trainings from a folder, a glob, Zarr and lazily loaded data
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["folder", "glob", "lazy"])
def test_run_from_folder_glob_or_lazy_data_records_files_and_packages_a_crop_of_them(kind, sim, tmp_path, monkeypatch):
    root, folder = sim
    monkeypatch.chdir(root)  # relative arguments: the summary must still hold absolute paths
    argument = {"folder": "noisy", "glob": "noisy/cell_*.tif", "lazy": "noisy"}[kind]
    spec = tiny_spec(data__loading="lazy" if kind == "lazy" else "memory")
    run = train(spec, [argument], None, tmp_path / "run", device="cpu", progress=False)

    summary = json.loads((run / "training_summary.json").read_text())
    files = [str((folder / n).resolve()) for n in ("cell_a.tif", "cell_b.tif")]
    assert summary["files"] == files
    assert all(Path(f).is_absolute() for f in summary["files"])
    assert summary["data_arguments"] == [argument]
    assert [(i["path"], i["axes"], i["shape"]) for i in summary["inputs"]] == [
        (files[0], "YX", [100, 120]),
        (files[1], "YX", [90, 90]),
    ]
    assert summary["data_loading"] == ("lazy" if kind == "lazy" else "memory")

    monkeypatch.chdir(tmp_path)  # packaging elsewhere: the relative argument no longer resolves
    out = tmp_path / "m.bioimageio.zip"
    result = package_run(run, out, name="Folder model", authors=[AUTHOR], onnx=False, run_test=False)
    assert not any("synthetic" in n for n in result.notes)
    members = zip_members(out)
    test_in = np.load(io.BytesIO(members["test_input.npy"]))
    np.testing.assert_array_equal(test_in[0, 0], expected_crop(tifffile.imread(files[0]), run))
    assert "cell_a.tif" in result.test_source
    sample = tifffile.imread(io.BytesIO(members["sample_input.tif"]))
    np.testing.assert_array_equal(sample, test_in.reshape(sample.shape))

    readme = members["README.md"].decode()
    assert "| `cell_a.tif` | YX | 100 × 120 | uint16 |" in readme
    assert "| `cell_b.tif` | YX | 90 × 90 | uint16 |" in readme
    assert "`noisy`" not in readme and "synthetic" not in readme

    from PIL import Image

    with Image.open(io.BytesIO(members["cover.png"])) as cover:
        assert cover.size[0] == 2 * cover.size[1] and cover.size[1] >= 256
        assert np.asarray(cover).std() > 10  # an image, not a blank canvas
    assert len(members["cover.png"]) < COVER_MAX_BYTES


def test_run_from_zarr_packages_a_crop_of_the_zarr(tmp_path):
    pytest.importorskip("zarr")
    rng = np.random.default_rng(3)
    data = (rng.poisson(30, size=(2, 80, 96)) + 100).astype(np.uint16)  # two T points
    store = write_zarr(tmp_path / "movie.zarr", data, "TYX", chunks=(1, 32, 32))
    run = train(tiny_spec(), [str(store)], None, tmp_path / "run", device="cpu", progress=False)

    summary = json.loads((run / "training_summary.json").read_text())
    assert summary["files"] == [str(store.resolve())]
    assert summary["inputs"][0]["axes"] == "TYX" and summary["inputs"][0]["shape"] == [2, 80, 96]

    out = tmp_path / "m.bioimageio.zip"
    result = package_run(run, out, name="Zarr model", authors=[AUTHOR], onnx=False, run_test=False)
    test_in = np.load(io.BytesIO(zip_members(out)["test_input.npy"]))
    # The middle sample (T = 1) of the two, centre-cropped.
    np.testing.assert_array_equal(test_in[0, 0], expected_crop(data[1], run))
    assert "movie.zarr" in result.test_source and "sample 1 of 2" in result.test_source


def test_supervised_run_records_its_target_files_too(sim, tmp_path):
    root, folder = sim
    targets = root / "gt"
    targets.mkdir(exist_ok=True)
    for name, src in (
        ("cell_a.tif", root / "a" / "gt" / "img_000.tif"),
        ("cell_b.tif", root / "b" / "gt" / "img_000.tif"),
    ):
        (targets / name).write_bytes(src.read_bytes())
    run = train(tiny_spec("care"), [str(folder)], [str(targets)], tmp_path / "run", device="cpu", progress=False)
    summary = json.loads((run / "training_summary.json").read_text())
    assert summary["target_files"] == [str((targets / n).resolve()) for n in ("cell_a.tif", "cell_b.tif")]
    assert summary["target_arguments"] == [str(targets)]
    assert [(t["name"], t["axes"], t["dtype"]) for t in summary["targets"]] == [
        ("cell_a.tif", "YX", "float32"),
        ("cell_b.tif", "YX", "float32"),
    ]
    out = tmp_path / "m.bioimageio.zip"
    package_run(run, out, name="CARE model", authors=[AUTHOR], onnx=False, run_test=False)
    readme = zip_members(out)["README.md"].decode()
    assert "| `cell_a.tif` | `cell_a.tif` | YX | 100 × 120 | uint16 |" in readme


def test_training_set_keeps_resolved_paths_through_the_validation_split(sim, monkeypatch):
    root, folder = sim
    monkeypatch.chdir(root)
    ts = load_training_set(["noisy"], None, 2)
    assert ts.paths == [(folder / "cell_a.tif").resolve(), (folder / "cell_b.tif").resolve()]
    train_set, val_set = split_validation(ts, 0.5, [32, 32])
    assert train_set.paths == ts.paths[:1] and val_set.paths == ts.paths[1:]
    assert train_set.names == ["cell_a.tif"] and val_set.shapes == [(90, 90)]


# ---------------------------------------------------------------------------------------------
# hand-made run directories: reading only the window, old summaries, missing files
# ---------------------------------------------------------------------------------------------
def hand_made_run(root: Path, summary: dict, dims: int = 2, depth: int = 2) -> Path:
    """A run directory with a random U-Net and the given ``training_summary.json``."""
    root.mkdir(parents=True)
    spec = parse_spec(
        {
            "name": "hand-made n2v",
            "algorithm": {"name": "n2v"},
            "model": {"depth": depth, "width": 4},
            "data": {"dims": dims, "patch_size": [16] * dims, "n_channels": 1},
        }
    )
    save_spec(spec, root / "spec.yaml")
    args = {"dims": dims, "in_channels": 1, "out_channels": 1, "depth": depth, "width": 4, "n2v2": False}
    torch.manual_seed(0)
    (root / "checkpoints").mkdir()
    torch.save(
        {"model_args": args, "model_state": UNet(**args).eval().state_dict(), "epoch": 1},
        root / "checkpoints" / "best.pt",
    )
    (root / "normalization.json").write_text(json.dumps({"mean": [100.0], "std": [10.0]}))
    (root / "training_summary.json").write_text(json.dumps(summary))
    return root


def record_reads(monkeypatch, cls) -> list[tuple[int, ...]]:
    """Window sizes of every ``cls.read`` call from now on."""
    sizes: list[tuple[int, ...]] = []
    real = cls.read

    def read(self, key):
        sizes.append(tuple(s.stop - s.start for s in key))
        return real(self, key)

    monkeypatch.setattr(cls, "read", read)
    return sizes


def test_a_small_crop_of_a_large_tiff_reads_only_its_window(tmp_path, monkeypatch):
    path = tmp_path / "large.tif"
    mm = tifffile.memmap(path, shape=(4096, 4096), dtype=np.uint16, metadata={"axes": "YX"})
    mm[1900:2200, 1900:2200] = np.arange(300 * 300, dtype=np.uint16).reshape(300, 300)
    mm.flush()
    del mm
    run = load_run(hand_made_run(tmp_path / "run", {"files": [str(path)]}))
    reads = record_reads(monkeypatch, sources.MemmapTiffSource)
    tracemalloc.start()
    try:
        test = make_test_input(run)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert reads == [(256, 256)]  # the 32 MiB file was never read whole
    assert peak < 4 * 2**20
    expected = tifffile.imread(path)[1920:2176, 1920:2176].astype(np.float32)
    np.testing.assert_array_equal(test.array[0, 0], expected)


def test_a_small_crop_of_a_large_zarr_reads_only_the_chunks_under_it(tmp_path, monkeypatch):
    pytest.importorskip("zarr")
    data = np.random.default_rng(0).integers(0, 1000, size=(3, 1024, 1024), dtype=np.uint16)
    store = write_zarr(tmp_path / "big.zarr", data, "ZYX", chunks=(1, 128, 128))
    run = load_run(hand_made_run(tmp_path / "run", {"files": [str(store)]}))
    reads = record_reads(monkeypatch, sources.ChunkedSource)
    chunks: list[tuple[int, ...]] = []
    real_chunk = sources.ChunkedSource._chunk
    monkeypatch.setattr(sources.ChunkedSource, "_chunk", lambda self, i: chunks.append(i) or real_chunk(self, i))
    test = make_test_input(run)
    assert reads == [(1, 256, 256)]  # one Z plane (the middle one) of a 2D model, one window
    assert sorted(chunks) == [(1, y, x) for y in (3, 4) for x in (3, 4)]  # 4 of the 192 chunks
    np.testing.assert_array_equal(test.array[0, 0], data[1, 384:640, 384:640].astype(np.float32))


def test_3d_crop_of_a_zarr_stack_is_a_valid_centre_box(tmp_path):
    pytest.importorskip("zarr")
    data = np.random.default_rng(1).normal(100, 5, size=(40, 70, 60)).astype(np.float32)
    store = write_zarr(tmp_path / "stack.zarr", data, "ZYX", chunks=(8, 32, 32))
    run = load_run(hand_made_run(tmp_path / "run", {"files": [str(store)]}, dims=3, depth=1))
    test = make_test_input(run)
    # depth 1: min 26, step 2, 3D cap 26 + 4 * 2 = 34
    assert test.array.shape == (1, 1, 34, 34, 34)
    np.testing.assert_array_equal(test.array[0, 0], data[3:37, 18:52, 13:47])


@pytest.mark.parametrize("recorded", ["noisy", "noisy/*.tif", "noisy/cell_a.tif"])
def test_old_summaries_with_relative_folders_globs_or_names_still_find_the_files(recorded, sim, tmp_path):
    root, folder = sim
    # Older runs recorded the raw arguments, relative to where training ran (here: the data root).
    run_dir = hand_made_run(root / f"old-run-{tmp_path.name}", {"files": [recorded]})
    run = load_run(run_dir)
    assert training_files(run)[0].path.resolve() == (folder / "cell_a.tif").resolve()
    test = make_test_input(run)
    np.testing.assert_array_equal(test.array[0, 0], expected_crop(tifffile.imread(folder / "cell_a.tif"), run_dir))


def test_missing_training_files_stop_packaging_with_a_clear_error(tmp_path):
    gone = tmp_path / "moved" / "cell.tif"
    run = hand_made_run(tmp_path / "run", {"files": [str(gone)], "data_arguments": ["moved"]})
    out = tmp_path / "m.bioimageio.zip"
    with pytest.raises(DataError) as info:
        package_run(run, out, authors=[AUTHOR], onnx=False, run_test=False)
    msg = str(info.value)
    assert str(gone) in msg and "--test-image FILE" in msg and "--synthetic-test-data" in msg
    assert "\n" not in msg
    assert not out.exists()


def test_cli_missing_training_files_exit_2_and_the_synthetic_flag_packages_and_says_so(tmp_path):
    gone = tmp_path / "gone.tif"
    run = hand_made_run(tmp_path / "run", {"files": [str(gone)]})
    out = tmp_path / "m.bioimageio.zip"
    result = invoke("package", run, "--out", out, "--author", AUTHOR, "--no-onnx")
    assert result.exit_code == 2
    assert "Traceback" not in result.output + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "gone.tif" in result.stderr and "--synthetic-test-data" in result.stderr and "--test-image" in result.stderr
    assert not out.exists()

    result = invoke("package", run, "--out", out, "--author", AUTHOR, "--no-onnx", "--synthetic-test-data")
    assert result.exit_code == 0, result.output + result.stderr
    assert "bioimageio test passed" in result.stdout  # synthetic, but a consistent package
    assert "synthetic noise" in " ".join(result.stderr.split())  # the note (rich wraps lines)
    members = zip_members(out)
    readme = members["README.md"].decode()
    assert "**The test and sample tensors are synthetic**" in readme
    test_in = np.load(io.BytesIO(members["test_input.npy"]))
    assert test_in.shape == (1, 1, 68, 68)  # depth 2: the minimum size, 2 * halo 32 + step 4
    assert abs(float(test_in.mean()) - 100.0) < 3.0


def test_synthetic_flag_uses_noise_even_with_training_files_and_excludes_test_image(sim, tmp_path):
    _, folder = sim
    run = load_run(hand_made_run(tmp_path / "run", {"files": [str(folder / "cell_a.tif")]}))
    assert make_test_input(run, synthetic=True).synthetic
    with pytest.raises(UserInputError, match="exclude each other"):
        make_test_input(run, folder / "cell_b.tif", synthetic=True)
    with pytest.raises(DataError, match=r"--test-image .*nope\.tif does not exist"):
        make_test_input(run, tmp_path / "nope.tif")
    explicit = make_test_input(run, folder / "cell_b.tif")
    assert "cell_b.tif" in explicit.source and not explicit.synthetic


def test_unreadable_training_file_is_named_in_the_error(tmp_path):
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"II*\x00not really a tiff")
    run = load_run(hand_made_run(tmp_path / "run", {"files": [str(bad)]}))
    with pytest.raises(DataError, match=r"broken\.tif is not a readable TIFF.*--synthetic-test-data"):
        make_test_input(run)


# ---------------------------------------------------------------------------------------------
# the cover
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape",
    [(1, 1, 256, 256), (1, 1, 72, 200), (1, 2, 10, 64, 64), (1, 3, 256, 256)],
    ids=["2d", "wide", "3d-two-channels", "three-channels"],
)
def test_cover_is_2_to_1_under_500_kb_with_one_stretch_for_both_panels(shape, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    noisy = rng.normal(1000, 100, size=shape).astype(np.float32)  # worst case for PNG: pure noise
    path = write_cover(tmp_path / "cover.png", noisy, noisy * 0.5 + 500)  # output: half the contrast
    assert path.stat().st_size < COVER_MAX_BYTES
    with Image.open(path) as cover:
        width, height = cover.size
        pixels = np.asarray(cover.convert("L"), dtype=np.float32)
    assert width == 2 * height and height >= 256
    # Shared stretch: the output panel shows its lower contrast (separate stretches would equalise them).
    body = slice(height // 4, 3 * height // 4)
    left, right = pixels[body, : width // 2 - 4], pixels[body, width // 2 + 4 :]
    left, right = left[left > 0], right[right > 0]  # not the letterbox
    assert right.std() < 0.75 * left.std()


def test_cover_shrinks_until_it_fits_the_byte_limit(tmp_path):
    from PIL import Image

    noisy = np.random.default_rng(0).normal(size=(1, 3, 256, 256)).astype(np.float32)
    path = write_cover(tmp_path / "cover.png", noisy, noisy, max_bytes=100_000)
    assert path.stat().st_size <= 100_000
    with Image.open(path) as cover:
        width, height = cover.size
    assert width == 2 * height
