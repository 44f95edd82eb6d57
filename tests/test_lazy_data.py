"""Lazy (out-of-core) training data: sources, canonical views, the lazy sampler and sampled statistics."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

from ai4life_kit.data.axes import Layout
from ai4life_kit.data.lazy import LazyPatchSampler, sampled_channel_stats
from ai4life_kit.data.loading import load_training_set, make_sampler, split_validation, training_stats
from ai4life_kit.data.normalization import channel_stats
from ai4life_kit.data.patches import PatchSampler
from ai4life_kit.data.sources import (
    ArraySource,
    ChunkCache,
    ChunkedSource,
    MemmapTiffSource,
    open_source,
)
from ai4life_kit.data.views import CanonicalView
from ai4life_kit.errors import DataError

zarr = pytest.importorskip("zarr")

RNG = np.random.default_rng(7)


def _write_ome_zarr(path, data: np.ndarray, axes: str, chunks) -> None:
    """A minimal OME-Zarr 0.5 image: one multiscale level '0' with named axes."""
    root = zarr.open_group(str(path), mode="w")
    kinds = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
    root.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [{"axes": [{"name": a, "type": kinds[a]} for a in axes.lower()], "datasets": [{"path": "0"}]}],
    }
    arr = root.create_array("0", shape=data.shape, chunks=chunks, dtype=data.dtype)
    arr[...] = data


@pytest.fixture(scope="module")
def stack() -> np.ndarray:
    return RNG.integers(0, 4000, size=(3, 70, 90), dtype=np.uint16)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("plain", MemmapTiffSource),
        ("bigendian", MemmapTiffSource),
        ("compressed", ChunkedSource),
        ("zarr", ChunkedSource),
        ("ome-zarr", ChunkedSource),
    ],
)
def test_sources_read_the_same_windows_as_an_eager_read(tmp_path, stack, kind, expected):
    if kind == "plain":
        path = tmp_path / "a.tif"
        tifffile.imwrite(path, stack, metadata={"axes": "IYX"})
    elif kind == "bigendian":
        path = tmp_path / "a.tif"
        tifffile.imwrite(path, stack, metadata={"axes": "IYX"}, byteorder=">")
    elif kind == "compressed":
        path = tmp_path / "a.tif"
        tifffile.imwrite(path, stack, metadata={"axes": "IYX"}, compression="zlib", tile=(32, 32))
    elif kind == "zarr":
        path = tmp_path / "a.zarr"
        arr = zarr.open_array(str(path), mode="w", shape=stack.shape, chunks=(1, 32, 32), dtype=stack.dtype)
        arr[...] = stack
        arr.attrs["_ARRAY_DIMENSIONS"] = ["t", "y", "x"]
    else:
        path = tmp_path / "a.ome.zarr"
        _write_ome_zarr(path, stack, "TYX", (1, 32, 32))
    src = open_source(path)
    assert isinstance(src, expected)
    assert src.shape == stack.shape and src.dtype == np.uint16
    assert src.axes in ("SYX", "TYX")
    for key in [(slice(0, 3), slice(0, 70), slice(0, 90)), (slice(1, 2), slice(31, 65), slice(5, 89))]:
        window = src.read(key)
        assert window.dtype == np.uint16
        np.testing.assert_array_equal(window, stack[key])
    src.close()


def test_chunk_cache_stays_within_its_byte_budget(tmp_path, stack):
    path = tmp_path / "a.zarr"
    arr = zarr.open_array(str(path), mode="w", shape=stack.shape, chunks=(1, 16, 16), dtype=stack.dtype)
    arr[...] = stack
    cache = ChunkCache(max_bytes=5 * 16 * 16 * 2)  # five chunks
    src = open_source(path, axes="SYX", cache=cache)
    for _ in range(50):
        y, x = RNG.integers(0, 70 - 20), RNG.integers(0, 90 - 20)
        s = int(RNG.integers(0, 3))
        np.testing.assert_array_equal(
            src.read((slice(s, s + 1), slice(y, y + 20), slice(x, x + 20))), stack[s : s + 1, y : y + 20, x : x + 20]
        )
        assert cache.nbytes <= cache.max_bytes
    assert cache.misses > 0 and cache.hits > 0


def test_memmap_reads_do_not_accumulate_resident_memory(tmp_path):
    """Reading all of a 512 MiB TIFF window by window: the process's RSS does not grow with it."""
    path = tmp_path / "big.tif"
    shape = (32, 2048, 4096)  # 512 MiB of uint16
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(shape=shape, dtype=np.uint16, metadata={"axes": "ZYX"})
    with open(path, "r+b") as f:  # real (non-sparse) pixels so every read touches new pages
        block = RNG.integers(0, 60000, size=(2048, 4096), dtype=np.uint16).tobytes()
        with tifffile.TiffFile(path) as tif:
            offset = tif.series[0].dataoffset
        f.seek(offset)
        for _ in range(shape[0]):
            f.write(block)

    def rss_mib() -> float:
        with open("/proc/self/status") as fh:
            return int(next(line for line in fh if line.startswith("VmRSS")).split()[1]) / 1024

    src = open_source(path, spatial_ndim=3)
    assert isinstance(src, MemmapTiffSource)
    before = rss_mib()
    for z in range(0, 32, 2):
        src.read((slice(z, z + 2), slice(0, 2048), slice(0, 4096)))
    assert rss_mib() - before < 100


@pytest.mark.parametrize(
    ("axes", "shape", "ndim"),
    [
        ("YX", (30, 40), 2),
        ("TCYX", (2, 3, 30, 40), 2),
        ("ZCYX", (5, 2, 30, 40), 2),
        ("CZYX", (2, 5, 30, 40), 3),
        ("XYZT", (40, 30, 5, 2), 3),
        ("YXC", (30, 40, 3), 2),
    ],
)
def test_canonical_views_match_the_eager_layout(axes, shape, ndim):
    a = RNG.random(shape).astype(np.float32)
    view = CanonicalView(ArraySource(a, axes), ndim)
    ref = Layout.of(shape, axes, ndim).to_canonical(a)
    assert view.shape == ref.shape
    np.testing.assert_array_equal(view.to_array(), ref)
    part = view.narrow(view.ndim - 1, 3, 20)
    np.testing.assert_array_equal(part.to_array(), ref[..., 3:20])
    window = [slice(1, 5)] * ndim
    np.testing.assert_array_equal(part.read(ref.shape[0] - 1, window), ref[..., 3:20][-1][(slice(None), *window)])


def _views(arrays, axes, ndim):
    return [CanonicalView(ArraySource(a, axes), ndim) for a in arrays]


@pytest.mark.parametrize("case", ["2d-files", "3d-channels-targets"])
def test_lazy_sampler_draws_exactly_the_in_memory_patches(case):
    if case == "2d-files":
        raws = [
            RNG.integers(0, 1000, (4, 50, 60)).astype(np.uint16),
            RNG.integers(0, 1000, (1, 80, 40)).astype(np.uint16),
        ]
        axes, ndim, patch, tgts = "SYX", 2, (16, 16), None
    else:
        raws = [RNG.random((2, 12, 40, 36)).astype(np.float32)]
        tgts = [RNG.random((2, 12, 40, 36)).astype(np.float32)]
        axes, ndim, patch = "CZYX", 3, (8, 16, 16)
    mean, std, t_mean, t_std = [3.0] * 2, [2.0] * 2, [0.5] * 2, [0.25] * 2
    views = _views(raws, axes, ndim)
    n_c = views[0].shape[1]
    mean, std, t_mean, t_std = mean[:n_c], std[:n_c], t_mean[:n_c], t_std[:n_c]
    eager_imgs = [v.to_array() for v in views]
    shape = (1, -1) + (1,) * ndim
    norm = lambda arrs, m, s: [(a - np.float32(m).reshape(shape)) / np.float32(s).reshape(shape) for a in arrs]  # noqa: E731
    t_views = _views(tgts, axes, ndim) if tgts else None
    eager = PatchSampler(
        norm(eager_imgs, mean, std),
        norm([v.to_array() for v in t_views], t_mean, t_std) if t_views else None,
        patch,
        torch.device("cpu"),
    )
    lazy = LazyPatchSampler(views, t_views, patch, torch.device("cpu"), mean, std, t_mean, t_std)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for _ in range(5):
        (x1, y1), (x2, y2) = eager.sample(7, g1), lazy.sample(7, g2)
        assert torch.equal(x1, x2)
        assert (y1 is None and y2 is None) or torch.equal(y1, y2)
    assert x2.shape == (7, n_c, *patch) and x2.dtype == torch.float32


def test_lazy_sampler_reports_nan_patches_with_the_file_name():
    a = RNG.random((1, 32, 32)).astype(np.float32)
    a[0, :, 10] = np.nan
    sampler = LazyPatchSampler(
        [CanonicalView(ArraySource(a, "SYX", "holes.tif"), 2)], None, (32, 32), torch.device("cpu"), [0.0], [1.0]
    )
    with pytest.raises(DataError, match=r"holes.tif contains NaN"):
        sampler.sample(2, torch.Generator().manual_seed(0))


def test_sampled_statistics_are_close_to_exact_and_exact_when_small():
    big = (RNG.gamma(2.0, 300.0, size=(2, 2, 700, 900)) + 100).astype(np.float32)
    views = _views([big], "SCYX", 2)
    exact_m, exact_s = channel_stats([big])
    m, s = sampled_channel_stats(views, max_pixels=2**17)
    np.testing.assert_allclose(m, exact_m, rtol=0.02)
    np.testing.assert_allclose(s, exact_s, rtol=0.03)
    small = big[:, :, :100, :100]
    m, s = sampled_channel_stats(_views([np.ascontiguousarray(small)], "SCYX", 2), max_pixels=2**17)
    np.testing.assert_allclose((m, s), channel_stats([small]), rtol=1e-6)
    const = np.zeros((1, 64, 64), np.float32)
    with pytest.raises(DataError, match="constant"):
        sampled_channel_stats(_views([const], "SYX", 2))


def test_loading_keeps_big_data_lazy_and_splits_it_like_arrays(tmp_path, monkeypatch):
    img = RNG.integers(0, 4000, size=(120, 100), dtype=np.uint16)
    path = tmp_path / "one.tif"
    tifffile.imwrite(path, img)
    eager = load_training_set([path], None, 2, loading="memory")
    lazy = load_training_set([path], None, 2, loading="lazy")
    assert not eager.lazy and lazy.lazy
    import ai4life_kit.data.loading as loading

    monkeypatch.setattr(loading, "AUTO_LAZY_BYTES", img.size * 4 - 1)
    assert load_training_set([path], None, 2, loading="auto").lazy
    monkeypatch.setattr(loading, "AUTO_LAZY_BYTES", img.size * 4)
    assert not load_training_set([path], None, 2, loading="auto").lazy
    (tr_e, va_e), (tr_l, va_l) = split_validation(eager, 0.2, (32, 32)), split_validation(lazy, 0.2, (32, 32))
    for e, lz in ((tr_e, tr_l), (va_e, va_l)):
        np.testing.assert_array_equal(e.images[0], lz.images[0].to_array())
    norm = dict(zip(("mean", "std"), training_stats(tr_e.images, tr_e.names), strict=True))
    norm |= {"target_mean": norm["mean"], "target_std": norm["std"]}
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    x_e, _ = make_sampler(tr_e, norm, (32, 32), torch.device("cpu")).sample(4, g1)
    x_l, _ = make_sampler(tr_l, norm, (32, 32), torch.device("cpu")).sample(4, g2)
    assert torch.equal(x_e, x_l)


def test_training_data_may_be_ome_zarr_folders(tmp_path, stack):
    _write_ome_zarr(tmp_path / "a.ome.zarr", stack, "TYX", (1, 32, 32))
    tifffile.imwrite(tmp_path / "b.tif", stack[0])
    ts = load_training_set([tmp_path], None, 2, loading="lazy")
    assert ts.names == ["a.ome.zarr", "b.tif"]
    assert [v.shape for v in ts.images] == [(3, 1, 70, 90), (1, 1, 70, 90)]
    with pytest.raises(DataError, match="does not exist"):
        load_training_set([tmp_path / "missing.zarr"], None, 2)


def train_on_stack(root, fmt: str, loadings=("memory", "lazy"), seed: int | None = None, env=None, **overrides):
    """Both simulated images as one TIFF stack or OME-Zarr, trained on with each of ``loadings``.

    Returns (run directory by loading, the noisy stack, the ground truth of image 0). ``seed``
    (``--seed``), ``env`` and spec ``overrides`` let the benchmark vary what the test fixes.
    """
    from ai4life_kit.config import save_spec
    from ai4life_kit.data.tiff_io import read_image
    from ai4life_kit.simulate import simulate_dataset
    from kit_helpers import QUALITY_BUDGET, QUALITY_SIM, run_cli, small_spec

    sim = simulate_dataset(root / "sim", **QUALITY_SIM)
    noisy = np.stack([read_image(p).data for p in sim["noisy"]]).astype(np.float32)
    gt = read_image(sim["gt"][0]).data
    if fmt == "tiff":
        data = root / "stack.tif"
        tifffile.imwrite(data, noisy, metadata={"axes": "IYX"})
    else:
        data = root / "stack.ome.zarr"
        _write_ome_zarr(data, noisy, "TYX", (1, 64, 64))
    spec = root / "spec.yaml"
    save_spec(small_spec("n2v2", **{**QUALITY_BUDGET, **overrides}), spec)
    extra = [] if seed is None else ["--seed", seed]
    runs = {}
    for loading in loadings:
        runs[loading] = root / f"run-{loading}"
        args = ["train", spec, "--data", data, "--out", runs[loading], "--loading", loading, "--device", "cpu"]
        res = run_cli(*args, *extra, "-q", env=env)
        assert res.returncode == 0, res.stderr
    return runs, noisy, gt


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["tiff", "ome-zarr"])
def test_lazy_training_denoises_like_in_memory_training(tmp_path, fmt):
    """`--loading lazy` on a TIFF stack / an OME-Zarr: same normalisation (to rounding), a real denoiser."""
    import json

    from ai4life_kit.prediction import Predictor
    from kit_helpers import QUALITY_MIN_GAIN_DB, psnr_gain

    runs, noisy, gt = train_on_stack(tmp_path, fmt)
    for loading, run in runs.items():
        assert json.loads((run / "training_summary.json").read_text())["data_loading"] == loading
    norm = {k: json.loads((r / "normalization.json").read_text()) for k, r in runs.items()}
    for key in ("mean", "std"):
        np.testing.assert_allclose(norm["lazy"][key], norm["memory"][key], rtol=1e-9)
    denoised = Predictor.from_run_dir(runs["lazy"], "cpu").predict(noisy[0], "YX")
    before, after = psnr_gain(gt, noisy[0], denoised)
    assert after > before + QUALITY_MIN_GAIN_DB, f"lazy {fmt}: {before:.2f} -> {after:.2f} dB"


def test_the_shared_chunk_cache_never_mixes_up_sources(tmp_path):
    """Sources opened and freed in turn (ids get reused) each read their own pixels."""
    arrays = {}
    for name, value in (("a", 1), ("b", 2)):
        arrays[name] = np.full((40, 40), value, np.uint16)
        z = zarr.open_array(str(tmp_path / f"{name}.zarr"), mode="w", shape=(40, 40), chunks=(20, 20), dtype="uint16")
        z[...] = arrays[name]
    for i in range(20):
        name = "ab"[i % 2]
        src = open_source(tmp_path / f"{name}.zarr", axes="YX")
        np.testing.assert_array_equal(src.read((slice(0, 40), slice(0, 40))), arrays[name])
        del src


def test_zarr_sample_axis_names_are_read(tmp_path):
    data = RNG.integers(0, 100, (2, 3, 20, 24), dtype=np.uint16)
    z = zarr.open_array(str(tmp_path / "s.zarr"), mode="w", shape=data.shape, chunks=(1, 3, 20, 24), dtype="uint16")
    z[...] = data
    z.attrs["_ARRAY_DIMENSIONS"] = ["s", "c", "y", "x"]
    assert open_source(tmp_path / "s.zarr").axes == "SCYX"
