"""Tiled prediction: seamless, any shape/axes, output in input units."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ai4life_kit.errors import DataError, UserInputError
from ai4life_kit.models.unet import UNet, receptive_field_radius
from ai4life_kit.prediction import Predictor
from ai4life_kit.prediction.tiling import plan_grid


def _predictor(dims=2, channels=1, depth=2, n2v2=False, seed=0) -> Predictor:
    torch.manual_seed(seed)
    model = UNet(dims=dims, in_channels=channels, out_channels=channels, depth=depth, width=8, n2v2=n2v2)
    for m in model.modules():  # non-trivial batch-norm statistics, as after training
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    mean = [100.0 + 10 * c for c in range(channels)]
    std = [20.0 + c for c in range(channels)]
    return Predictor(model, mean, std, [90.0] * channels, [15.0] * channels, dims, depth, "cpu")


def _image(shape, seed=1):
    return np.random.default_rng(seed).normal(100, 20, shape).astype(np.float32)


@pytest.mark.parametrize("border", ["network", "mirror"])
@pytest.mark.parametrize("n2v2", [False, True])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_tiled_equals_whole_image_2d(depth, n2v2, border):
    p = _predictor(depth=depth, n2v2=n2v2)
    p.border = border
    img = _image((301, 275))  # not a multiple of anything
    whole = p.predict(img, "YX", tile=(2048, 2048))
    assert plan_grid(img.shape, (2048, 2048), p.halo, p.multiple, 512, border).counts == (1, 1)
    tile = 2 * p.halo + 64
    grid = plan_grid(img.shape, (tile, tile), p.halo, p.multiple, 512, border)
    assert min(grid.counts) >= 3  # really tiled, with tiles meeting inside the image
    tiled = p.predict(img, "YX", tile=(tile, tile), batch_size=3)
    np.testing.assert_allclose(tiled, whole, rtol=1e-4, atol=1e-3)


def test_tiled_equals_whole_image_3d_multichannel():
    p = _predictor(dims=3, channels=2, depth=1)
    img = _image((2, 33, 38, 35))  # C, Z, Y, X
    whole = p.predict(img, "CZYX", tile=(512, 512, 512))
    tiled = p.predict(img, "CZYX", tile=(28, 28, 28))
    assert min(plan_grid(img.shape[1:], (28, 28, 28), p.halo, p.multiple, 128).counts) >= 3
    np.testing.assert_allclose(tiled, whole, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("dims", [2, 3])
def test_whole_image_is_the_network_on_the_image_padded_to_its_size_multiple(dims):
    """The border treatment: no mirrored halo, only the few pixels up to the ``2**depth`` multiple.

    It is what CAREamics and bioimageio.core's whole-sample prediction compute; any tiling gives it.
    """
    p = _predictor(dims=dims, depth=2 if dims == 2 else 1)
    shape = (301, 275) if dims == 2 else (21, 46, 39)
    img = _image(shape)
    x = (img - p.mean[0]) / (p.std[0] + p.eps)
    pad = [(0, -n % p.multiple) for n in shape]
    with torch.inference_mode():
        y = p.model(torch.from_numpy(np.pad(x, pad, mode="symmetric")[None, None].astype(np.float32)))
    expected = y[0, 0].numpy()[tuple(slice(0, n) for n in shape)] * p.target_std[0] + p.target_mean[0]
    tile = (2 * p.halo + 8,) * dims
    assert sorted(p.plan(shape, tile).counts)[-2:] >= [2, 2]  # tiled along Y and X
    for got in (p.predict(img, "ZYX"[-dims:]), p.predict(img, "ZYX"[-dims:], tile=tile)):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("n", [1, 7, 32, 33, 100, 257, 1000, 1031])
@pytest.mark.parametrize(("want", "halo", "multiple"), [(64, 16, 8), (96, 32, 4), (128, 8, 16)])
def test_tiles_cover_the_axis_once_with_context_where_they_meet(n, want, halo, multiple):
    """Cores partition the image; a core keeps ``halo`` of context on every side another tile takes over."""
    grid = plan_grid((n,), (want,), halo, multiple, 512, "mirror")
    (mirrored,) = grid.axes
    halo = grid.halo  # rounded up to the multiple
    covered = [i for lo, hi in mirrored.cores for i in range(lo, hi)]
    assert covered == list(range(n)) and mirrored.starts[0] == -halo
    for start, (lo, hi) in zip(mirrored.starts, mirrored.cores, strict=True):  # context on every side
        assert lo - start >= halo and start + mirrored.tile - hi >= halo
    (axis,) = plan_grid((n,), (want,), halo, multiple, 512).axes
    padded = -(-n // multiple) * multiple
    assert axis.tile <= max(want, padded if padded <= want else 0) and axis.tile % multiple == 0
    assert axis.starts[0] == 0 and axis.padded == (padded if len(axis.starts) == 1 else axis.padded)
    assert axis.padded >= n and axis.padded - n < axis.tile
    if len(axis.starts) == 1:  # fits: no halo at all, only the size multiple (no wasted voxels)
        assert axis.tile == padded and axis.cores == ((0, n),)
    else:
        assert axis.padded == padded  # the last tile ends where the whole image's padding ends
    covered = [i for lo, hi in axis.cores for i in range(lo, hi)]
    assert covered == list(range(n))
    for i, (start, (lo, hi)) in enumerate(zip(axis.starts, axis.cores, strict=True)):
        assert start % multiple == 0 and start <= lo and hi <= start + axis.tile
        assert i == 0 or lo - start >= halo
        assert i == len(axis.starts) - 1 or start + axis.tile - hi >= halo


def test_a_thin_volume_runs_whole_along_the_axes_that_fit():
    p = _predictor(dims=3, depth=2)
    grid = p.plan((48, 60, 60))
    assert grid.counts == (1, 1, 1) and grid.tile == (48, 60, 60)  # not 112 x 124 x 124


@pytest.mark.parametrize(
    ("shape", "default", "counts", "tile", "cap"),
    [
        ((1024, 1024), 768, (1, 1), (1024, 1024), 2),  # whole: 1.05 MPix instead of 4 x 544^2 = 1.18
        ((64, 512, 512), 128, (1, 2, 2), (64, 288, 288), 1),  # 21 MVox instead of 16 x 64 x 176^2 = 32
        ((200, 200, 200), 128, (1, 1, 1), (200, 200, 200), 1),  # 8 MVox instead of 27 x 112^3 = 38
    ],
)
def test_default_tiles_spend_the_batch_budget_on_fewer_larger_tiles(shape, default, counts, tile, cap):
    """Without --tile a batch holds ``batch_size`` default tiles' worth of pixels, as one larger tile if cheaper."""
    small = plan_grid(shape, None, 32, 4, default, batch_size=1)
    large = plan_grid(shape, None, 32, 4, default, batch_size=4)
    assert (large.counts, large.tile, large.batch_cap) == (counts, tile, cap)
    assert len(large) * np.prod(large.tile) < 0.95 * len(small) * np.prod(small.tile)
    assert large.tiles_per_batch(4) * np.prod(large.tile) <= 4 * default ** len(shape)  # the memory bound holds
    assert small.batch_cap is None and small.tiles_per_batch(4) == 4
    assert plan_grid(shape, small.tile, 32, 4, default, batch_size=4) == small  # --tile is taken as given


def test_an_image_of_few_default_tiles_is_not_retiled():
    """Tiles that already fit, or a larger layout that saves little, keep the default grid and batch."""
    for shape in ((512, 512), (48, 60, 60)):
        default = 768 if len(shape) == 2 else 128
        assert plan_grid(shape, None, 32, 4, default, batch_size=4) == plan_grid(shape, None, 32, 4, default)


@pytest.mark.parametrize("dims", [2, 3])
def test_larger_default_tiles_give_the_same_prediction_within_the_batch_budget(dims, monkeypatch):
    """The budget-planned grid predicts what the default grid and the whole image do; no batch exceeds it."""
    import ai4life_kit.prediction.predictor as predictor_module

    default = 96 if dims == 2 else 40
    monkeypatch.setitem(predictor_module.DEFAULT_TILE, dims, default)
    p = _predictor(dims=dims, depth=2 if dims == 2 else 1)
    shape = (300, 290) if dims == 2 else (14, 100, 90)
    img = _image(shape)
    axes = "ZYX"[-dims:]
    by_batch = {b: p.plan(shape, batch_size=b) for b in (1, 4)}
    assert by_batch[4].batch_cap is not None and len(by_batch[4]) < len(by_batch[1])
    seen: list[tuple[int, ...]] = []
    forward = p._forward

    def recording(precision):
        run = forward(precision)
        return lambda x: seen.append(tuple(x.shape)) or run(x)

    monkeypatch.setattr(p, "_forward", recording)
    planned = p.predict(img, axes, batch_size=4)
    grid = by_batch[4]
    assert {s[2:] for s in seen} == {grid.tile} and sum(s[0] for s in seen) == len(grid)
    assert len(seen) == -(-len(grid) // grid.tiles_per_batch(4))  # batches of the capped size
    assert max(s[0] * np.prod(s[2:]) for s in seen) <= 4 * default**dims  # the memory bound holds
    assert p.n_tiles(img.shape, axes, batch_size=4) == len(grid)  # what the progress bar counts
    np.testing.assert_allclose(planned, p.predict(img, axes, batch_size=1), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(planned, p.predict(img, axes, tile=(1024,) * dims), rtol=1e-4, atol=1e-3)


def test_halo_covers_measured_receptive_field():
    for depth in (1, 2, 3):
        for n2v2 in (False, True):
            torch.manual_seed(depth)
            model = UNet(dims=2, depth=depth, width=16, n2v2=n2v2).double().eval()
            size = 160
            x = torch.zeros((1, 1, size, size), dtype=torch.float64, requires_grad=True)
            model(x)[0, 0, size // 2, size // 2].backward()
            support = torch.nonzero(x.grad[0, 0].abs() > 0)
            radius = int((support - size // 2).abs().max())
            assert radius <= receptive_field_radius(depth), (depth, n2v2, radius)


@pytest.mark.parametrize(
    ("axes", "shape", "dims", "channels"),
    [
        ("YX", (67, 45), 2, 1),
        ("SYX", (3, 64, 64), 2, 1),
        ("TCYX", (2, 3, 40, 33), 2, 3),
        ("ZYX", (5, 48, 48), 2, 1),  # a 2D model applied slice by slice
        ("YXC", (50, 41, 2), 2, 2),
        ("ZYX", (18, 40, 40), 3, 1),
        ("TZCYX", (2, 12, 2, 36, 36), 3, 2),
    ],
)
def test_output_keeps_shape_axes_and_units(axes, shape, dims, channels):
    p = _predictor(dims=dims, channels=channels)
    img = _image(shape)
    out = p.predict(img, axes)
    assert out.shape == img.shape and out.dtype == np.float32
    assert np.isfinite(out).all()
    # back in raw units: around the target mean (90) with the target std scale, not ~N(0, 1)
    assert 20 < float(out.mean()) < 200


def test_samples_are_independent_of_batching():
    p = _predictor()
    stack = _image((4, 64, 80))
    together = p.predict(stack, "SYX", batch_size=4)
    one_by_one = np.stack([p.predict(s, "YX") for s in stack])
    np.testing.assert_allclose(together, one_by_one, rtol=1e-5, atol=1e-4)


def test_tta_is_an_average_of_equivariant_predictions():
    p = _predictor()
    img = _image((64, 64))
    plain = p.predict(img, "YX")
    tta = p.predict(img, "YX", tta=True)
    assert tta.shape == img.shape
    assert not np.allclose(tta, plain)  # a random network is not rotation invariant
    # TTA of a rotated image is the rotated TTA output
    np.testing.assert_allclose(p.predict(np.rot90(img).copy(), "YX", tta=True), np.rot90(tta), rtol=1e-4, atol=1e-3)


def test_bad_requests_are_clear_errors():
    p = _predictor()
    with pytest.raises(DataError, match="channel"):
        p.predict(_image((2, 32, 32)), "CYX")
    with pytest.raises(UserInputError, match="halo"):
        p.predict(_image((256, 256)), "YX", tile=(32, 32))
    with pytest.raises(UserInputError, match="3 values"):
        p.predict(_image((256, 256)), "YX", tile=(64, 64, 64))
    with pytest.raises(DataError, match="axes"):
        p.predict(_image((32, 32)), "ZYX")
    with pytest.raises(DataError, match="Z axis"):
        _predictor(dims=3).predict(_image((32, 32)), "YX")


@pytest.mark.parametrize(("dims", "n2v2"), [(2, True), (3, False)])
def test_onnx_engine_gives_the_torch_prediction(dims, n2v2):
    """``--engine onnx``: the same tiles through ONNX Runtime, the same numbers (N2V2's blur pool too)."""
    p = _predictor(dims=dims, depth=2 if dims == 2 else 1, n2v2=n2v2)
    img = _image((150, 130) if dims == 2 else (20, 40, 36))
    tile = (96, 96) if dims == 2 else (28, 28, 28)
    assert len(p.plan(img.shape, tile)) > 1
    axes = "ZYX"[-dims:]
    expected = p.predict(img, axes, tile=tile, precision="fp32")
    p.engine = "onnx"
    got = p.predict(img, axes, tile=tile)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)
    assert p.engine == "onnx" and next(p.model.parameters()).device.type == "cpu"  # the torch model is untouched
    with pytest.raises(UserInputError, match="fp32"):
        p.predict(img, axes, precision="bf16")
    p.engine = "tvm"  # a typo is an error, not the torch engine
    with pytest.raises(UserInputError, match="choose one of torch, onnx"):
        p.predict(img, axes)


def test_onnx_engine_without_onnxruntime_says_how_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime raises ImportError
    p = _predictor()
    p.engine = "onnx"
    with pytest.raises(UserInputError, match=r"pip install 'ai4life-kit\[bioimageio\]'"):
        p.predict(_image((64, 64)), "YX")
