"""Restoration beyond denoising: super-resolution, isotropic reconstruction and deconvolution.

The resampling conventions, the training pairs the degradation model makes, the predictors'
output sizes and seams, the pixel sizes written, the CLI's refusals; and (slow) that the trained
networks beat interpolation on simulated data with a known ground truth.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from scipy import ndimage as ndi

from ai4life_kit.config import parse_spec
from ai4life_kit.data.loading import load_training_set
from ai4life_kit.data.pixel_size import PixelSize, read_pixel_size
from ai4life_kit.errors import ConfigError, DataError, UserInputError
from ai4life_kit.metrics import psnr
from ai4life_kit.models.unet import UNet
from ai4life_kit.prediction import Predictor, RestorationPredictor, load_model
from ai4life_kit.prediction.resample import bicubic_lateral, upsample_axis, upsample_lateral, upsampled_length
from ai4life_kit.simulate import simulate_ground_truth
from ai4life_kit.simulate.degrade import bin_axes, blur, decimate
from ai4life_kit.training import train
from ai4life_kit.training.restoration_pairs import degradation_of, make_restoration_pairs
from kit_helpers import invoke, small_spec

SPECS = Path(__file__).parents[1] / "model_specs"


def restoration_spec(kind: str, factor: int = 1, semi_synthetic: bool = False, **degradation):
    """A fast CARE spec for ``kind`` (see kit_helpers.small_spec)."""
    raw = small_spec("care").model_dump(mode="json")
    raw["task"] = {"kind": kind, "factor": factor, "semi_synthetic": semi_synthetic, "degradation": degradation}
    return parse_spec(raw, "test")


def blobs(shape: tuple[int, ...], seed: int, density: float = 2e-3, sigma: float = 1.5) -> np.ndarray:
    """Isotropic ground truth: random point sources of random brightness, blurred alike along every axis."""
    rng = np.random.default_rng(seed)
    points = (rng.random(shape) < density) * rng.uniform(50, 200, shape)
    return (ndi.gaussian_filter(points, sigma) * 40 + 10).astype(np.float32)


# -- resampling conventions ------------------------------------------------------------------------
def test_upsample_axis_puts_input_plane_z_at_output_plane_z_times_factor_and_is_exact_on_ramps():
    z = np.arange(5, dtype=np.float32)[:, None, None] * 3.0 + np.zeros((5, 2, 3), np.float32)
    up = upsample_axis(z, 4, axis=0)
    assert up.shape == (upsampled_length(5, 4), 2, 3) == (17, 2, 3)
    np.testing.assert_array_equal(up[::4], z)  # the measured planes are kept as they are
    np.testing.assert_allclose(up[:, 0, 0], np.arange(17) * 0.75, atol=1e-6)  # linear in between
    with pytest.raises(ValueError, match="at least 2 planes"):
        upsample_axis(z[:1], 4, axis=0)


def test_upsample_lateral_keeps_block_centres_and_is_the_packaged_networks_first_step():
    rng = np.random.default_rng(0)
    image = rng.random((2, 1, 12, 10), dtype=np.float32)
    up = upsample_lateral(image, 2)
    assert up.shape == (2, 1, 24, 20)
    # binning the bilinear 2x interpolation of a ramp gives the ramp back (pixel centres at block centres)
    ramp = np.add.outer(np.arange(12.0), 2 * np.arange(10.0)).astype(np.float32)
    inner = bin_axes(upsample_lateral(ramp, 2), 2, (-2, -1))[1:-1, 1:-1]
    np.testing.assert_allclose(inner, ramp[1:-1, 1:-1], atol=1e-5)
    # UNet(upsample_factor=2) on the low-resolution input == the same weights on the interpolated input
    torch.manual_seed(0)
    net = UNet(dims=2, depth=2, width=8, residual=True).eval()
    packaged = UNet(dims=2, depth=2, width=8, residual=True, upsample_factor=2).eval()
    packaged.load_state_dict(net.state_dict())
    x = torch.from_numpy(rng.random((1, 1, 16, 16), dtype=np.float32))
    with torch.no_grad():
        torch.testing.assert_close(packaged(x), net(upsample_lateral(x, 2)), rtol=0, atol=0)
    assert bicubic_lateral(image, 2).shape == up.shape


# -- the spec ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("task", "message"),
    [
        ({"kind": "super_resolution", "factor": 1}, "needs task.factor >= 2"),
        ({"kind": "denoise", "factor": 2}, "belong to restoration tasks"),
        ({"kind": "deconvolution", "factor": 2}, "must be 1 for deconvolution"),
        ({"kind": "deconvolution", "semi_synthetic": True}, "psf_sigma > 0"),
    ],
)
def test_a_task_that_cannot_work_is_refused_naming_the_field(task, message):
    raw = small_spec("care").model_dump(mode="json")
    raw["task"] = task
    with pytest.raises(ConfigError, match=message):
        parse_spec(raw, "test")


def test_restoration_tasks_train_care_with_a_2d_network():
    raw = small_spec("n2v").model_dump(mode="json")
    raw["task"] = {"kind": "super_resolution", "factor": 2}
    with pytest.raises(ConfigError, match="trains CARE"):
        parse_spec(raw, "test")
    raw = small_spec("care", dims=3).model_dump(mode="json")
    raw["task"] = {"kind": "isotropic", "factor": 4}
    with pytest.raises(ConfigError, match="2D network"):
        parse_spec(raw, "test")


# -- training pairs ---------------------------------------------------------------------------------
def _training_set(tmp_path, image: np.ndarray, name: str = "img.tif", axes: str = "YX", target=None, scale=1):
    tifffile.imwrite(tmp_path / name, image, metadata={"axes": axes})
    targets = None
    if target is not None:
        tifffile.imwrite(tmp_path / f"gt-{name}", target, metadata={"axes": axes})
        targets = [tmp_path / f"gt-{name}"]
    return load_training_set([tmp_path / name], targets, 2, target_scale=scale)


def test_super_resolution_pairs_are_the_blurred_binned_noisy_image_interpolated_back(tmp_path):
    clean = blobs((67, 64), seed=1)
    task = restoration_spec("super_resolution", 2, True, psf_sigma=1.0).task
    ts = make_restoration_pairs(_training_set(tmp_path, clean), task, seed=5)
    target = clean[:66]  # whole low-resolution pixels only
    np.testing.assert_array_equal(ts.targets[0][0, 0], target)
    expected = upsample_lateral(bin_axes(blur(target, 1.0, axes=(-2, -1)), 2, (-2, -1)), 2)
    np.testing.assert_allclose(ts.images[0][0, 0], expected, rtol=1e-5, atol=1e-4)
    two = _training_set(tmp_path, clean, name="other.tif")
    two.images.append(two.images[0].copy())  # two clean images, as from two files
    two.names.append("copy.tif")
    pairs = make_restoration_pairs(two, task, seed=5)
    assert pairs.images[0].base is pairs.images[1].base is not None  # one flat buffer, as the sampler reads
    assert pairs.targets[0].base is pairs.targets[1].base is not None
    # with noise: the pairs are drawn from the training seed, the same again for the same seed
    noisy = restoration_spec("super_resolution", 2, True, psf_sigma=1.0, peak=20.0).task
    a = make_restoration_pairs(_training_set(tmp_path, clean), noisy, seed=5).images[0]
    b = make_restoration_pairs(_training_set(tmp_path, clean), noisy, seed=5).images[0]
    c = make_restoration_pairs(_training_set(tmp_path, clean), noisy, seed=6).images[0]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.abs(a - expected).mean() > 0.05 * expected.mean()


def test_isotropic_pairs_sample_the_lateral_slices_along_y_as_the_microscope_samples_z(tmp_path):
    volume = blobs((3, 41, 32), seed=2)
    task = restoration_spec("isotropic", 4, psf_sigma=2.0).task
    ts = make_restoration_pairs(_training_set(tmp_path, volume, axes="ZYX"), task, seed=0)
    assert ts.images[0].shape == ts.targets[0].shape == (3, 1, 41, 32)  # (41 - 1) % 4 == 0: no row lost
    low = decimate(blur(volume, 2.0, axes=(-2,)), 4, axis=-2)
    np.testing.assert_allclose(ts.images[0][:, 0], upsample_axis(low, 4, axis=-2), rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(ts.targets[0][:, 0], volume)
    d = degradation_of(task)
    assert (d.mode, d.subsample_axes, d.blur_axes, d.peak) == ("decimate", (-2,), (-2,), None)


def test_real_super_resolution_pairs_need_targets_factor_times_larger(tmp_path):
    low, high = blobs((32, 30), 3), blobs((64, 60), 4)
    task = restoration_spec("super_resolution", 2).task
    ts = make_restoration_pairs(_training_set(tmp_path, low, target=high, scale=2), task, seed=0)
    np.testing.assert_array_equal(ts.images[0][0, 0], upsample_lateral(low, 2))
    np.testing.assert_array_equal(ts.targets[0][0, 0], high)
    with pytest.raises(DataError, match=r"2x larger in Y and X: \(64, 60\)"):
        _training_set(tmp_path, low, name="b.tif", target=blobs((60, 60), 4), scale=2)


# -- predictors -------------------------------------------------------------------------------------
def _predictor(kind: str, factor: int) -> RestorationPredictor:
    torch.manual_seed(0)
    net = UNet(dims=2, depth=2, width=8, residual=True)
    inner = Predictor(net, [10.0], [5.0], [10.0], [5.0], spatial_ndim=2, depth=2, device="cpu", algorithm="care")
    return RestorationPredictor(inner, restoration_spec(kind, factor).task)


def test_super_resolution_output_is_factor_times_larger_and_the_same_tiled_as_whole():
    sr = _predictor("super_resolution", 2)
    image = blobs((2, 60, 70), seed=5)
    whole = sr.predict(image, "SYX")
    assert whole.shape == sr.output_shape(image.shape, "SYX") == (2, 120, 140)
    tiled = sr.predict(image, "SYX", tile=(96, 96))  # tiles of the output grid
    np.testing.assert_allclose(tiled, whole, rtol=1e-5, atol=1e-4)  # no seams where tiles meet
    n_tiled = 2 * len(sr.inner.plan((120, 140), (96, 96)))
    assert sr.n_tiles(image.shape, "SYX", (96, 96)) == n_tiled > sr.n_tiles(image.shape, "SYX") == 2
    assert sr.output_pixel_size(PixelSize(0.2, 0.2, None)) == PixelSize(0.1, 0.1, None)


def test_isotropic_output_has_the_lateral_sampling_along_z_and_combines_xz_and_yz():
    iso = _predictor("isotropic", 3)
    volume = blobs((6, 40, 36), seed=6)
    out = iso.predict(volume, "ZYX")
    assert out.shape == (16, 40, 36) == iso.output_shape(volume.shape, "ZYX")
    assert iso.output_pixel_size(PixelSize(0.1, 0.1, 0.3)).z == pytest.approx(0.1)
    # the recorded Z step over the factor, also where it is not factor x the pixel size
    assert iso.output_pixel_size(PixelSize(0.2, 0.2, 1.0)).z == pytest.approx(1.0 / 3)
    assert iso.output_pixel_size(PixelSize(0.2, 0.2, None)) == PixelSize(0.2, 0.2, 0.2)
    assert iso.output_pixel_size(PixelSize()) == PixelSize(1.0, 1.0, 1.0, "pixel")
    with pytest.raises(UserInputError, match="give 2 sizes"):
        iso.predict(volume, "ZYX", tile=(80, 80, 80))
    # the mean of the network on every XZ slice and on every YZ slice of the Z-interpolated volume, on
    # the package's grid (3 Z planes per plane, the last held), the 2 planes past the volume dropped
    fine = upsample_axis(volume, 3, axis=0, hold_last=True)
    assert fine.shape[0] == 18
    xz = np.stack([iso.inner.predict(fine[:, y, :], "YX") for y in range(40)], axis=1)[:16]
    yz = np.stack([iso.inner.predict(fine[:, :, x], "YX") for x in range(36)], axis=2)[:16]
    np.testing.assert_allclose(out, (xz + yz) / 2, rtol=1e-4, atol=1e-3)
    iso.combine = "geometric"
    np.testing.assert_allclose(iso.predict(volume, "ZYX"), np.sqrt(np.maximum(xz, 0) * np.maximum(yz, 0)), atol=1e-3)
    with pytest.raises(DataError, match="restores volumes"):
        iso.check_input((40, 36), "YX")
    with pytest.raises(UserInputError, match="not offered"):
        iso.require_probabilistic()


# -- pixel sizes in TIFFs -----------------------------------------------------------------------------
def test_pixel_sizes_round_trip_as_imagej_hyperstacks_fiji_reads(tmp_path):
    from ai4life_kit.data.tiff_io import write_image

    write_image(tmp_path / "a.tif", np.zeros((3, 8, 8)), "ZYX", pixel_size=PixelSize(0.2, 0.2, 0.25))
    size = read_pixel_size(tmp_path / "a.tif")
    assert (size.x, size.y, size.z, size.unit) == pytest.approx((0.2, 0.2, 0.25, "um"))
    with tifffile.TiffFile(tmp_path / "a.tif") as tif:  # what Fiji reads: ImageJ's own metadata
        assert tif.is_imagej and tif.imagej_metadata["spacing"] == pytest.approx(0.25)
        assert tif.imagej_metadata["unit"] == "micron"
    write_image(tmp_path / "b.tif", np.zeros((3, 8, 8)), "ZYX")
    assert read_pixel_size(tmp_path / "b.tif") == PixelSize()  # the kit's default resolution is no size
    # an uncalibrated size stays relative (unit pixel) through a second resampling: never made up as microns
    write_image(tmp_path / "c.tif", np.zeros((3, 8, 8)), "ZYX", pixel_size=PixelSize())
    again = read_pixel_size(tmp_path / "c.tif").scaled(x=2, y=2)
    write_image(tmp_path / "d.tif", np.zeros((3, 8, 8)), "ZYX", pixel_size=again)
    assert read_pixel_size(tmp_path / "d.tif").unit == "pixel"
    # a 1 micron pixel is a size, nanometres are converted
    tifffile.imwrite(
        tmp_path / "one.tif", np.zeros((3, 8, 8), np.float32), imagej=True, resolution=(1, 1),
        metadata={"spacing": 4, "unit": "micron", "axes": "ZYX"},
    )  # fmt: skip
    assert read_pixel_size(tmp_path / "one.tif") == PixelSize(1.0, 1.0, 4.0)
    tifffile.imwrite(
        tmp_path / "nm.tif", np.zeros((3, 8, 8), np.float32), imagej=True, resolution=(1 / 65, 1 / 65),
        metadata={"spacing": 200, "unit": "nm", "axes": "ZYX"},
    )  # fmt: skip
    nm = read_pixel_size(tmp_path / "nm.tif")
    assert (nm.x, nm.z, nm.unit) == pytest.approx((0.065, 0.2, "um"))
    assert read_pixel_size(tmp_path) == PixelSize()  # a folder (Zarr) records none here
    tifffile.imwrite(
        tmp_path / "ij.tif",
        np.zeros((3, 8, 8), np.float32),
        imagej=True,
        resolution=(10.0, 10.0),
        metadata={"spacing": 0.8, "unit": "um", "axes": "ZYX"},
    )
    size = read_pixel_size(tmp_path / "ij.tif")
    assert (size.x, size.y, size.z) == pytest.approx((0.1, 0.1, 0.8))


# -- end to end through the CLI -----------------------------------------------------------------------
def _train_iso(tmp_path, volume, steps=25, epochs=2, **kw):
    spec = restoration_spec("isotropic", 4, psf_sigma=2.0)
    raw = spec.model_dump(mode="json")
    raw["training"] |= {"epochs": epochs, "steps_per_epoch": steps, **{k: v for k, v in kw.items() if "__" not in k}}
    raw["data"]["patch_size"] = [32, 32]
    for dotted, value in kw.items():  # section__key overrides, as kit_helpers.small_spec takes them
        if "__" in dotted:
            section, key = dotted.split("__")
            raw[section][key] = value
    path = tmp_path / "aniso.tif"
    tifffile.imwrite(
        path, volume, imagej=True, resolution=(1 / 0.2, 1 / 0.2), metadata={"spacing": 0.8, "unit": "um", "axes": "ZYX"}
    )
    run = train(parse_spec(raw, "test"), [path], None, tmp_path / "run", device="cpu", progress=False)
    return run, path


def test_isotropic_run_predicts_through_the_cli_with_the_new_z_step_in_the_tiff(tmp_path):
    volume = blobs((8, 64, 64), seed=7)
    run, path = _train_iso(tmp_path, volume)
    assert (run / "training_pairs.png").stat().st_size > 10_000
    assert isinstance(load_model(run, "cpu"), RestorationPredictor)
    result = invoke("predict", str(run), str(path), "--out", str(tmp_path / "out"), "-q")
    assert result.exit_code == 0, result.output
    out = tmp_path / "out" / "aniso.tif"
    assert tifffile.imread(out).shape == (29, 64, 64)
    assert read_pixel_size(out) == pytest.approx(PixelSize(0.2, 0.2, 0.2))
    for args, message in (
        (["--out-of-core"], "predict in memory"),
        (["--uncertainty"], "not offered"),
    ):
        bad = invoke("predict", str(run), str(path), "--out", str(tmp_path / "bad"), "-q", *args)
        assert bad.exit_code != 0 and message in bad.output, bad.output
        assert not (tmp_path / "bad" / "aniso.tif").exists()


@pytest.mark.parametrize(
    ("recipe", "args", "message"),
    [
        ("care-2d.yaml", ["--anisotropy", "4"], "--anisotropy is for isotropic recipes"),
        ("n2v2-2d.yaml", ["--semi-synthetic"], "--semi-synthetic is for restoration recipes"),
        ("care-isotropic.yaml", ["--semi-synthetic"], "makes its pairs from --data anyway"),
        ("care-sr2x.yaml", ["--semi-synthetic", "--target", "{img}"], "drop --target"),
        ("care-sr2x.yaml", ["--semi-synthetic", "--ensemble", "2"], "--ensemble is not offered"),
        ("care-sr2x.yaml", ["--semi-synthetic", "--loading", "lazy"], "in memory"),
    ],
)
def test_train_refuses_restoration_options_that_do_not_fit_in_one_line(tmp_path, recipe, args, message):
    img = tmp_path / "img.tif"
    tifffile.imwrite(img, blobs((64, 64), 0))
    args = [a.format(img=img) for a in args]
    result = invoke("train", str(SPECS / recipe), "--data", str(img), "--out", str(tmp_path / "r"), *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "r").exists()


# -- quality: better than interpolation (slow) --------------------------------------------------------
@pytest.mark.slow
def test_isotropic_restoration_of_a_simulated_anisotropic_volume_beats_linear_interpolation(tmp_path):
    truth = blobs((61, 96, 96), seed=11, density=1.5e-3, sigma=1.5)  # isotropic, pixel = axial step / 4
    acquired = decimate(blur(truth, 2.0, axes=(0,)), 4, axis=0)  # axial PSF, then every 4th plane
    run, _ = _train_iso(tmp_path, acquired, steps=50, epochs=6, batch_size=16, val_patches=64, learning_rate=2e-3)
    restored = load_model(run, "cpu").predict(acquired, "ZYX")
    assert restored.shape == truth.shape
    interpolated = upsample_axis(acquired, 4, axis=0)
    gain = psnr(truth, restored) - psnr(truth, interpolated)
    assert gain > 1.5, f"isotropic CARE {psnr(truth, restored):.2f} dB vs linear {psnr(truth, interpolated):.2f} dB"


@pytest.mark.slow
def test_super_resolution_trained_on_semi_synthetic_pairs_beats_bicubic_on_a_new_image(tmp_path):
    rng = np.random.default_rng(0)
    train_clean = simulate_ground_truth((256, 256), rng, peak=60.0)
    tifffile.imwrite(tmp_path / "clean.tif", train_clean)
    spec = restoration_spec("super_resolution", 2, True, psf_sigma=1.0, peak=30.0)
    raw = spec.model_dump(mode="json")
    raw["training"] |= {"epochs": 3, "steps_per_epoch": 25, "val_patches": 32}
    raw["data"]["patch_size"] = [64, 64]
    run = train(parse_spec(raw, "test"), [tmp_path / "clean.tif"], None, tmp_path / "run", device="cpu", progress=False)
    truth = simulate_ground_truth((192, 192), np.random.default_rng(1), peak=60.0)
    low = degradation_of(parse_spec(raw, "test").task).apply(truth, np.random.default_rng(2))
    restored = load_model(run, "cpu").predict(low, "YX")
    assert restored.shape == truth.shape
    gain = psnr(truth, restored) - psnr(truth, bicubic_lateral(low, 2))
    assert gain > 2.0, (
        f"SR CARE {psnr(truth, restored):.2f} dB vs bicubic {psnr(truth, bicubic_lateral(low, 2)):.2f} dB"
    )


# -- packages -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_super_resolution_package_declares_its_2x_output_and_passes_bioimageio_s_test(tmp_path):
    import zipfile

    import yaml

    from ai4life_kit.errors import ModelLoadError
    from ai4life_kit.export import package_run

    tifffile.imwrite(tmp_path / "clean.tif", blobs((128, 128), seed=12))
    spec = restoration_spec("super_resolution", 2, True, psf_sigma=1.0, peak=30.0)
    raw = spec.model_dump(mode="json")
    raw["training"] |= {"epochs": 1, "steps_per_epoch": 4, "batch_size": 4}
    run = train(parse_spec(raw, "sr"), [tmp_path / "clean.tif"], None, tmp_path / "run", device="cpu", progress=False)
    out = tmp_path / "sr.bioimageio.zip"
    result = package_run(run, out, authors=["Ada Lovelace"])  # runs bioimageio.core's test, every weight format
    assert out.is_file() and result.report is not None and result.report.passed
    with zipfile.ZipFile(out) as zf:
        rdf = yaml.safe_load(zf.read("rdf.yaml"))
        test_in = np.load(zf.open("test_input.npy"))
        test_out = np.load(zf.open("test_output.npy"))
        readme = zf.read("README.md").decode()
    assert test_out.shape[-2:] == tuple(2 * n for n in test_in.shape[-2:])
    space = {a["id"]: a for a in rdf["outputs"][0]["axes"] if a["type"] == "space"}
    assert {k: (a["scale"], a["halo"], a["size"]["axis_id"]) for k, a in space.items()} == {
        "y": (0.5, 34, "y"),
        "x": (0.5, 34, "x"),
    }
    assert rdf["weights"]["pytorch_state_dict"]["architecture"]["kwargs"]["upsample_factor"] == 2
    assert "2x super-resolution" in readme and "semi-synthetic pairs" in readme
    # the package's network on the low-resolution input == the run directory's prediction
    np.testing.assert_allclose(
        load_model(run, "cpu").predict(test_in[0, 0], "YX"), test_out[0, 0], rtol=1e-4, atol=1e-3
    )
    with pytest.raises(ModelLoadError, match="super-resolution"):
        Predictor.from_bioimageio(out, "cpu")


def _iso_run_info(factor: int, depth: int = 2, width: int = 8, planes: int | None = None, **model):
    """A :class:`RunInfo` of an (untrained) isotropic run: the package geometry without training."""
    from ai4life_kit.export.rundir import RunInfo

    args = {"dims": 2, "in_channels": 1, "out_channels": 1, "depth": depth, "width": width, **model}
    one = [1.0]
    summary = {"inputs": [{"axes": "ZYX", "shape": [planes, 64, 64]}]} if planes else {}
    return RunInfo(Path("run"), restoration_spec("isotropic", factor), args, {}, [0.0], one, [0.0], one, summary)


def test_an_isotropic_package_for_volumes_too_thin_for_a_z_halo_declares_none():
    thick = _iso_run_info(4, planes=19).package_axes[0]
    assert (thick.min, thick.halo) == (19, 36)  # 9 input planes each side: 2 * 9 + 1
    thin = _iso_run_info(4, planes=18)
    assert (thin.package_axes[0].min, thin.package_axes[0].halo) == (2, 0) and thin.z_seams
    assert not _iso_run_info(4).z_seams  # nothing recorded: the tile-safe geometry
    assert _iso_run_info(8, planes=11).package_axes[0].halo == 8 * 5


@pytest.mark.parametrize("factor", [2, 3, 4, 8])
def test_isotropic_package_network_is_the_2d_network_on_xz_and_yz_slices_of_the_run_s_grid(factor):
    from ai4life_kit.models.unet import IsotropicUNet

    torch.manual_seed(factor)
    info = _iso_run_info(factor, residual=True)
    model = IsotropicUNet(**info.package_model_args).eval()
    net = UNet(**info.model_args).eval()
    net.load_state_dict(model.state_dict())  # the same keys: the run's state dict loads as it is
    z_axis = info.package_axes[0]
    assert z_axis.min > 2 * z_axis.halo / factor  # bioimageio.spec: an output larger than twice its halo
    n = z_axis.min + 3 * z_axis.step
    volume = torch.randn(1, 1, n, 16, 20)
    with torch.no_grad():
        out = model(volume)
        fine = torch.from_numpy(upsample_axis(volume.numpy(), factor, axis=2, hold_last=True))
        xz = torch.stack([net(fine[:, :, :, j]) for j in range(16)], dim=3)
        yz = torch.stack([net(fine[:, :, :, :, j]) for j in range(20)], dim=4)
        scripted = torch.jit.script(model)(volume)
    assert out.shape == (1, 1, factor * n, 16, 20)
    torch.testing.assert_close(out, (xz + yz) / 2, rtol=0, atol=1e-5)
    torch.testing.assert_close(scripted, out, rtol=0, atol=1e-6)
    # every valid z size keeps factor * Z a multiple of the network's step
    assert (factor * z_axis.min) % info.step == 0 and (factor * z_axis.step) % info.step == 0


@pytest.mark.parametrize("factor", [4, 8])
def test_isotropic_package_z_blocks_with_the_declared_halo_meet_without_seams(factor):
    """What ilastik and deepImageJ do along z: blocks of the input with the output halo (in input planes) cut."""
    from ai4life_kit.models.unet import IsotropicUNet

    torch.manual_seed(0)
    info = _iso_run_info(factor)
    z = info.package_axes[0]
    assert z.factor == factor and z.halo % factor == 0
    assert z.halo >= info.halo + factor  # the network's radius on the fine grid plus one interpolation interval
    model = IsotropicUNet(**info.package_model_args).eval()
    h = z.halo // factor  # input planes
    n = 4 * h
    volume = torch.randn(1, 1, n, 12, 12)
    cut = n // 2
    with torch.no_grad():
        whole = model(volume)
        first = model(volume[:, :, : cut + h])[:, :, : factor * cut]
        second = model(volume[:, :, cut - h :])[:, :, factor * h :]
    torch.testing.assert_close(torch.cat([first, second], dim=2), whole, rtol=0, atol=1e-5)
    # control: a halo of one plane shows the seam this comparison would catch
    with torch.no_grad():
        short = model(volume[:, :, : cut + 1])[:, :, : factor * cut]
    assert (short - whole[:, :, : factor * cut]).abs().max() > 1e-3


@pytest.mark.slow
def test_a_thin_volume_s_isotropic_package_takes_it_whole_and_says_where_seams_come(tmp_path):
    import zipfile

    import yaml

    from ai4life_kit.export import package_run

    volume = blobs((12, 80, 80), seed=16)  # fewer planes than the 19 a z halo needs at factor 4
    run, _ = _train_iso(tmp_path, volume, steps=3, epochs=1)
    out = tmp_path / "thin.bioimageio.zip"
    result = package_run(run, out, authors=["Ada Lovelace"])
    assert result.report is not None and result.report.passed
    with zipfile.ZipFile(out) as zf:
        rdf = yaml.safe_load(zf.read("rdf.yaml"))
        test_in = np.load(zf.open("test_input.npy"))
        readme = zf.read("README.md").decode()
    z_out = next(a for a in rdf["outputs"][0]["axes"] if a.get("id") == "z")
    assert "halo" not in z_out and z_out["scale"] == 0.25
    assert test_in.shape[2] == 12  # the whole volume, real planes, not mirror-padded ones
    assert "too few for a z halo" in readme and "seams" in readme


def test_a_probabilistic_isotropic_run_is_not_packaged_and_says_why(tmp_path):
    from ai4life_kit.errors import ModelLoadError
    from ai4life_kit.export.rundir import load_run

    run, _ = _train_iso(tmp_path, blobs((8, 64, 64), seed=13), steps=2, epochs=1, algorithm__loss="laplace")
    with pytest.raises(ModelLoadError, match="would average two Laplace scales"):
        load_run(run)


@pytest.mark.slow
# bioimageio.core's predict leaves its package files open (ResourceWarnings at garbage collection)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_an_isotropic_package_declares_its_4x_z_and_agrees_with_the_run_directory(tmp_path):
    import zipfile

    import yaml

    from ai4life_kit.export import package_run

    run, _ = _train_iso(tmp_path, blobs((30, 96, 96), seed=13), steps=4, epochs=1)
    out = tmp_path / "iso.bioimageio.zip"
    result = package_run(run, out, authors=["Ada Lovelace"])  # bioimageio.core's test, every weight format
    assert result.report is not None and result.report.passed
    with zipfile.ZipFile(out) as zf:
        rdf = yaml.safe_load(zf.read("rdf.yaml"))
        test_in = np.load(zf.open("test_input.npy"))
        test_out = np.load(zf.open("test_output.npy"))
        readme = zf.read("README.md").decode()
    assert set(rdf["weights"]) == {"pytorch_state_dict", "torchscript", "onnx"}
    assert rdf["weights"]["pytorch_state_dict"]["architecture"]["callable"] == "IsotropicUNet"
    assert rdf["weights"]["pytorch_state_dict"]["architecture"]["kwargs"]["factor"] == 4
    space_in = {a["id"]: a["size"] for a in rdf["inputs"][0]["axes"] if a["type"] == "space"}
    space_out = {a["id"]: (a["scale"], a["halo"]) for a in rdf["outputs"][0]["axes"] if a["type"] == "space"}
    halo = load_model(run, "cpu").inner.halo
    assert space_out == {"z": (0.25, 4 * (-(-halo // 4) + 1)), "y": (1.0, halo), "x": (1.0, halo)}
    assert space_in["y"] == {"min": 2 * halo + 4, "step": 4} and space_in["z"]["step"] == 1
    z, ny, nx = test_in.shape[2:]
    assert test_out.shape == (1, 1, 4 * z, ny, nx) and z >= space_in["z"]["min"]
    assert "Isotropic reconstruction" in readme and "4(Z - 1) + 1 planes" in readme
    # the run directory's prediction is the package's output without the 3 planes past the volume
    kit = load_model(run, "cpu").predict(test_in[0, 0], "ZYX")
    assert kit.shape == (upsampled_length(z, 4), ny, nx)
    np.testing.assert_allclose(kit, test_out[0, 0, : kit.shape[0]], rtol=1e-4, atol=1e-3)
    # the smallest volume, as napari and `bioimageio predict` run it (bioimageio.core mirrors the halo in)
    from bioimageio.core import load_description, predict

    with zipfile.ZipFile(out) as zf:  # from the unpacked folder: a zip source keeps its file open
        zf.extractall(tmp_path / "unpacked")
    thin = np.ascontiguousarray(test_in[:, :, : space_in["z"]["min"]])
    model = load_description(tmp_path / "unpacked" / "rdf.yaml", perform_io_checks=False)
    got = predict(model=model, inputs={"input": thin})
    assert got.members["output"].data.to_numpy().shape == (1, 1, 4 * thin.shape[2], ny, nx)


def test_a_psf_image_degrades_as_the_gaussian_it_samples_and_a_bad_one_is_refused(tmp_path):
    from ai4life_kit.simulate.degrade import gaussian_psf

    clean = blobs((64, 64), seed=14)
    tifffile.imwrite(tmp_path / "psf.tif", gaussian_psf((2.0, 2.0)).astype(np.float32) * 7)  # any scale
    by_sigma = restoration_spec("deconvolution", 1, True, psf_sigma=2.0).task
    by_image = restoration_spec("deconvolution", 1, True, psf=str(tmp_path / "psf.tif")).task
    a = make_restoration_pairs(_training_set(tmp_path, clean), by_sigma, seed=0).images[0]
    b = make_restoration_pairs(_training_set(tmp_path, clean), by_image, seed=0).images[0]
    np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-2)
    tifffile.imwrite(tmp_path / "even.tif", np.ones((4, 4), np.float32))
    with pytest.raises(DataError, match="odd sizes"):
        degradation_of(restoration_spec("deconvolution", 1, True, psf=str(tmp_path / "even.tif")).task)
    with pytest.raises(ConfigError, match="not both"):
        restoration_spec("deconvolution", 1, True, psf=str(tmp_path / "psf.tif"), psf_sigma=1.0)


def test_super_resolution_through_the_cli_halves_the_recorded_pixel_size(tmp_path):
    from ai4life_kit.config.io import save_spec

    raw = small_spec("care").model_dump(mode="json")
    raw["task"] = {"kind": "super_resolution", "factor": 2, "degradation": {"psf_sigma": 1.0, "peak": 30.0}}
    raw["training"] |= {"epochs": 1, "steps_per_epoch": 3, "batch_size": 4}
    save_spec(parse_spec(raw, "sr"), tmp_path / "sr.yaml")
    image = tmp_path / "cells.tif"
    tifffile.imwrite(
        image, blobs((96, 80), seed=15), imagej=True, resolution=(1 / 0.26, 1 / 0.26), metadata={"unit": "um"}
    )
    run = tmp_path / "run"
    result = invoke("train", tmp_path / "sr.yaml", "--data", image, "--semi-synthetic", "--out", run, "-q")
    assert result.exit_code == 0, result.output
    assert "semi-synthetic pair(s) made" in result.output
    result = invoke("predict", run, image, "--out", tmp_path / "sr", "-q")
    assert result.exit_code == 0, result.output
    out = tmp_path / "sr" / "cells.tif"
    assert tifffile.imread(out).shape == (192, 160)
    size = read_pixel_size(out)
    assert (size.x, size.y) == pytest.approx((0.13, 0.13))


def test_isotropic_rows_too_few_for_a_patch_are_refused_naming_the_rows_kept(tmp_path):
    task = restoration_spec("isotropic", 4).task
    ts = _training_set(tmp_path, blobs((3, 64, 64), seed=16), axes="ZYX")
    with pytest.raises(DataError, match=r"Y is 64 pixels, which keeps 61 rows when sampled every 4.*patch size is 64"):
        make_restoration_pairs(ts, task, seed=0, patch=(64, 64))


def test_3d_deconvolution_trains_from_semi_synthetic_pairs_and_plots_its_middle_plane(tmp_path):
    raw = small_spec("care", 3, model__depth=1, model__width=8).model_dump(mode="json")
    raw["task"] = {"kind": "deconvolution", "semi_synthetic": True, "degradation": {"psf_sigma": 1.5, "peak": 50.0}}
    raw["training"] |= {"epochs": 1, "steps_per_epoch": 2, "batch_size": 2, "val_patches": 4}
    raw["data"]["patch_size"] = [8, 16, 16]
    tifffile.imwrite(tmp_path / "vol.tif", blobs((16, 48, 48), seed=17), metadata={"axes": "ZYX"})
    run = train(parse_spec(raw, "dec3d"), [tmp_path / "vol.tif"], None, tmp_path / "run", device="cpu", progress=False)
    assert (run / "training_pairs.png").stat().st_size > 5_000
    out = load_model(run, "cpu").predict(blobs((16, 48, 48), seed=18), "ZYX")
    assert out.shape == (16, 48, 48)
