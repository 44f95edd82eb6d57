"""Axes, TIFF reading, patch sampling, augmentation and blind-spot masking."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

from ai4life_kit.data.augment import augment_batch
from ai4life_kit.data.axes import Layout, guess_axes, validate_axes
from ai4life_kit.data.loading import load_training_set, split_validation
from ai4life_kit.data.masking import MaskSpec, mask_batch
from ai4life_kit.data.normalization import channel_stats
from ai4life_kit.data.patches import PatchSampler
from ai4life_kit.data.tiff_io import read_image, resolve_inputs, write_image
from ai4life_kit.errors import DataError


@pytest.mark.parametrize(
    ("axes", "shape", "dims", "canonical"),
    [
        ("YX", (5, 7), 2, (1, 1, 5, 7)),
        ("SCYX", (3, 2, 5, 7), 2, (3, 2, 5, 7)),
        ("CZYX", (2, 4, 5, 7), 2, (4, 2, 5, 7)),
        ("TZYX", (3, 4, 5, 7), 3, (3, 1, 4, 5, 7)),
        ("YXC", (5, 7, 3), 2, (1, 3, 5, 7)),
        ("ZCYX", (4, 2, 5, 7), 3, (1, 2, 4, 5, 7)),
    ],
)
def test_layout_round_trip(axes, shape, dims, canonical):
    arr = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    layout = Layout.of(shape, axes, dims)
    canon = layout.to_canonical(arr)
    assert canon.shape == canonical
    np.testing.assert_array_equal(layout.from_canonical(canon), arr)


def test_axes_validation_and_guessing():
    assert validate_axes("scyx") == "SCYX"
    for bad, msg in [("SQYX", "'Q'"), ("SSYX", "repeat"), ("SCY", "Y and X"), ("YX", "2 letters")]:
        with pytest.raises(DataError, match=msg):
            validate_axes(bad, 3 if bad == "YX" else None)
    assert guess_axes((4, 5, 6), 2) == "SYX"
    assert guess_axes((4, 5, 6), 3) == "ZYX"
    with pytest.raises(DataError, match="pass --axes"):
        guess_axes((2, 3, 4, 5, 6), 2)


def test_read_image_axes_from_metadata_and_dtypes(tmp_path):
    data = np.random.default_rng(0).integers(-300, 300, (3, 2, 16, 20)).astype(np.int16)
    tifffile.imwrite(tmp_path / "ij.tif", data.astype(np.uint16), imagej=True, metadata={"axes": "ZCYX"})
    img = read_image(tmp_path / "ij.tif")
    assert img.axes == "ZCYX" and img.data.dtype == np.float32 and img.dtype == np.uint16
    tifffile.imwrite(tmp_path / "neg.tif", data)
    assert read_image(tmp_path / "neg.tif", axes="SCYX").data.min() < 0  # int16 negatives survive
    # our own writer round-trips kit axes (S included) and writes a resolution unit
    write_image(tmp_path / "out.tif", data.astype(np.float32), "SCYX")
    back = read_image(tmp_path / "out.tif")
    assert back.axes == "SCYX"
    np.testing.assert_array_equal(back.data, data)
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        assert tif.pages[0].tags["ResolutionUnit"].value != 1  # not NONE


def test_bad_files_are_data_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"contains no \.tif"):
        resolve_inputs([tmp_path / "empty"])
    with pytest.raises(DataError, match="does not exist"):
        resolve_inputs([tmp_path / "nope.tif"])
    with pytest.raises(DataError, match="matches no file"):
        resolve_inputs([str(tmp_path / "*.tif")])
    (tmp_path / "junk.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(DataError, match="not a readable TIFF"):
        read_image(tmp_path / "junk.tif")
    nan = np.ones((8, 8), np.float32)
    nan[2, 2] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", nan)
    with pytest.raises(DataError, match="NaN or Inf"):
        read_image(tmp_path / "nan.tif")
    tifffile.imwrite(tmp_path / "c.tif", np.ones((8, 8), np.complex64))
    with pytest.raises(DataError, match="dtype"):
        read_image(tmp_path / "c.tif")


def test_channel_stats_and_constant_images():
    imgs = [np.stack([np.full((1, 4, 4), 1.0), np.arange(16.0).reshape(1, 4, 4)], axis=1).astype(np.float32)]
    imgs[0][0, 0, 0, 0] = 3.0
    mean, std = channel_stats(imgs)
    assert mean[1] == pytest.approx(7.5) and std[1] == pytest.approx(np.arange(16.0).std())
    with pytest.raises(DataError, match="constant in channel 0"):
        channel_stats([np.ones((1, 1, 4, 4), np.float32)], ["flat.tif"])


def test_sampler_returns_real_windows_with_matching_targets():
    rng = np.random.default_rng(0)
    imgs = [rng.random((2, 2, 40, 50), dtype=np.float32), rng.random((1, 2, 33, 33), dtype=np.float32)]
    tgts = [a * 2 + 1 for a in imgs]
    sampler = PatchSampler(imgs, tgts, (16, 16), torch.device("cpu"))
    x, y = sampler.sample(32, torch.Generator().manual_seed(1))
    assert x.shape == (32, 2, 16, 16)
    torch.testing.assert_close(y, x * 2 + 1)
    for patch in x[:8].numpy():
        hits = 0
        for img in imgs:
            for sample in img:
                rows, cols = np.nonzero(sample[0] == patch[0, 0, 0])
                for r, c in zip(rows, cols, strict=True):
                    hits += np.array_equal(sample[:, r : r + 16, c : c + 16], patch)
        assert hits == 1
    with pytest.raises(DataError, match="smaller than the patch size"):
        PatchSampler([np.zeros((1, 1, 8, 40), np.float32)], None, (16, 16), torch.device("cpu"), ["tiny.tif"])


def test_augmentation_applies_the_same_transform_to_input_and_target():
    x = torch.randn(64, 1, 8, 8)
    y = x * 3
    ax, ay = augment_batch([x, y], torch.Generator().manual_seed(0), True, (-2, -1))
    torch.testing.assert_close(ay, ax * 3)
    changed = [not torch.equal(a, b) for a, b in zip(ax, x, strict=True)]
    assert 40 < sum(changed) < 64  # about 7/8 of samples get a non-identity transform
    # every output is one of the 8 dihedral transforms of its input
    for a, b in zip(ax, x, strict=True):
        options = [torch.rot90(b, k, (-2, -1)) for k in range(4)]
        options += [torch.flip(o, (-1,)) for o in options]
        assert any(torch.equal(a, o) for o in options)


@pytest.mark.parametrize("replacement", ["uniform", "median"])
def test_masking_hides_a_fraction_and_never_copies_the_centre(replacement):
    torch.manual_seed(0)
    x = torch.arange(16 * 2 * 64 * 64, dtype=torch.float32).reshape(16, 2, 64, 64)  # all values distinct
    masked, mask = mask_batch(x, MaskSpec(0.5, 5, replacement), torch.Generator().manual_seed(0))
    frac = mask.float().mean().item() * 100
    assert 0.3 < frac < 0.7
    assert torch.equal(masked[~mask], x[~mask])
    assert not torch.any(masked[mask] == x[mask])  # the blind spot never sees its own value
    # replacements come from the 5x5 neighbourhood of the same channel
    diff = (masked[mask] - x[mask]).abs()
    assert diff.max() <= 2 * 64 + 2 + 1e-3


def test_struct_mask_hides_neighbours_along_x_only():
    x = torch.zeros(4, 1, 32, 32)
    spec = MaskSpec(1.0, 5, "uniform", struct_axis=-1, struct_span=5)
    x = x + torch.arange(32.0)  # values vary along x
    masked, mask = mask_batch(x, spec, torch.Generator().manual_seed(0))
    changed = masked != x
    rows_changed = changed.nonzero()
    centres = mask.nonzero()
    assert len(centres) > 0
    for b, _c, r, col in rows_changed.tolist():
        near = centres[(centres[:, 0] == b) & (centres[:, 2] == r)]
        assert ((near[:, 3] - col).abs() <= 2).any()  # same row, within span//2 along x
    # ... and the mask does hide them: every pixel within span//2 on a blind spot's row is
    # overwritten (a blind spot there may get a value equal to its own from another row, as this
    # image only varies along x).
    for dx in (-2, -1, 1, 2):
        col = centres[:, 3] + dx
        ok = (col >= 0) & (col < 32)
        line = (centres[ok, 0], centres[ok, 1], centres[ok, 2], col[ok])
        assert (changed[line] | mask[line]).all()
        assert changed[line].float().mean() > 0.9


def test_training_set_checks_and_validation_split(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        tifffile.imwrite(tmp_path / f"a{i}.tif", rng.random((64, 64), dtype=np.float32))
    tifffile.imwrite(tmp_path / "t0.tif", rng.random((64, 60), dtype=np.float32))
    ts = load_training_set([tmp_path / "a0.tif", tmp_path / "a1.tif", tmp_path / "a2.tif"], None, 2)
    train, val = split_validation(ts, 0.3, [32, 32])
    assert len(train.images) == 2 and len(val.images) == 1
    one = load_training_set([tmp_path / "a0.tif"], None, 2)
    train, val = split_validation(one, 0.2, [32, 32])
    assert train.images[0].shape[2:] == (64, 32) or train.images[0].shape[2:] == (32, 64)
    with pytest.raises(DataError, match="too small"):
        split_validation(one, 0.2, [48, 48])
    with pytest.raises(DataError, match="has shape"):
        load_training_set([tmp_path / "a0.tif"], [tmp_path / "t0.tif"], 2)
    with pytest.raises(DataError, match="must pair up"):
        load_training_set([tmp_path / "a0.tif", tmp_path / "a1.tif"], [tmp_path / "t0.tif"], 2)
