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


@pytest.mark.parametrize("n2v2", [False, True])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_tiled_equals_whole_image_2d(depth, n2v2):
    p = _predictor(depth=depth, n2v2=n2v2)
    img = _image((301, 275))  # not a multiple of anything
    whole = p.predict(img, "YX", tile=(2048, 2048))
    assert plan_grid(img.shape, (2048, 2048), p.halo, p.multiple, 512).counts == (1, 1)
    tile = 2 * p.halo + 64
    grid = plan_grid(img.shape, (tile, tile), p.halo, p.multiple, 512)
    assert min(grid.counts) >= 3  # really tiled, with tiles meeting inside the image
    tiled = p.predict(img, "YX", tile=(tile, tile), batch_size=3)
    np.testing.assert_allclose(tiled, whole, rtol=1e-4, atol=1e-3)


def test_tiled_equals_whole_image_3d_multichannel():
    p = _predictor(dims=3, channels=2, depth=1)
    img = _image((2, 21, 38, 35))  # C, Z, Y, X
    whole = p.predict(img, "CZYX", tile=(512, 512, 512))
    tiled = p.predict(img, "CZYX", tile=(40, 40, 40))
    assert min(plan_grid(img.shape[1:], (40, 40, 40), p.halo, p.multiple, 128).counts) >= 2
    np.testing.assert_allclose(tiled, whole, rtol=1e-4, atol=1e-3)


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
