"""Short real trainings -> package -> both bioimageio stacks, weight formats, blockwise seams, predict.

N2V2 2D, CARE 3D and a two-channel N2V model, each trained for a few steps on simulated data.
"""

from __future__ import annotations

import numpy as np
import pytest

from ai4life_kit.data.tiff_io import read_image, write_image
from ai4life_kit.export import package_run
from ai4life_kit.prediction import Predictor
from ai4life_kit.simulate import simulate_dataset
from ai4life_kit.training import train
from kit_helpers import invoke, small_spec

pytestmark = pytest.mark.slow

GITHUB_USER = "ada-lovelace-test"
CASES = ["n2v2-2d", "care-3d", "n2v-2ch"]


def _train_case(case: str, root):
    if case == "n2v2-2d":
        sim = simulate_dataset(root / "sim", shape=(128, 128), n=2, seed=11)
        spec = small_spec("n2v2", 2, model__width=8, training__epochs=2, training__steps_per_epoch=10)
        return train(spec, [str(p) for p in sim["noisy"]], None, root / "run", device="cpu", progress=False)
    if case == "care-3d":
        sim = simulate_dataset(root / "sim", shape=(24, 64, 64), n=2, seed=12)
        # depth 1 keeps bioimageio's 3D test quick (min size 26 instead of 68 per axis)
        spec = small_spec(
            "care",
            3,
            model__depth=1,
            model__width=8,
            training__epochs=2,
            training__steps_per_epoch=6,
            training__batch_size=2,
        )
        return train(
            spec,
            [str(p) for p in sim["noisy"]],
            [str(p) for p in sim["gt"]],
            root / "run",
            device="cpu",
            progress=False,
        )
    if case == "n2v-2ch":
        sims = [simulate_dataset(root / f"sim{i}", shape=(96, 96), n=2, seed=20 + i) for i in range(2)]
        files = []
        for j in range(2):  # image j: channel 0 from the first simulation, channel 1 from the second
            chans = [read_image(s["noisy"][j]).data for s in sims]
            path = root / "data" / f"two_channel_{j}.tif"
            write_image(path, np.stack(chans), "CYX")
            files.append(str(path))
        spec = small_spec("n2v", 2, model__width=8, training__epochs=2, training__steps_per_epoch=10)
        return train(spec, files, None, root / "run", device="cpu", progress=False)
    raise ValueError(case)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Train and package each case once (lazily, per module)."""
    cache: dict = {}

    def get(case: str):
        if case not in cache:
            root = tmp_path_factory.mktemp(case)
            run = _train_case(case, root)
            out = root / f"{case}.bioimageio.zip"
            result = package_run(run, out, name=f"e2e {case} model", authors=["Ada Lovelace"], github_user=GITHUB_USER)
            cache[case] = (run, out, result)
        return cache[case]

    return get


def _image_for(case: str, run, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """A raw image (axes as returned) larger than the test tensor, from the run's own statistics."""
    predictor = Predictor.from_run_dir(run, device="cpu")
    shape = {"n2v2-2d": (1, 1, 300, 260), "care-3d": (1, 1, 40, 90, 84), "n2v-2ch": (1, 2, 220, 200)}[case]
    image = rng.normal(0, 1, size=shape).astype(np.float32)
    # smooth structure + noise in the training intensity range
    from scipy.ndimage import gaussian_filter

    image = gaussian_filter(image, sigma=[0, 0] + [3] * (len(shape) - 2)) * 20 + image
    image = image * predictor.std.reshape((1, -1) + (1,) * (len(shape) - 2)) + predictor.mean.reshape(
        (1, -1) + (1,) * (len(shape) - 2)
    )
    return image.astype(np.float32), "SCZYX" if case == "care-3d" else "SCYX"


def _bioimageio_predict(out, weight_format: str, image: np.ndarray, blocksize: int | None = None) -> np.ndarray:
    from bioimageio.core import create_prediction_pipeline, predict
    from bioimageio.spec import load_description
    from loguru import logger

    from ai4life_kit.export._testrun import collect_leaked_files, register_github_users

    register_github_users([GITHUB_USER])
    logger.disable("bioimageio")
    with collect_leaked_files():
        descr = load_description(out)
        pp = create_prediction_pipeline(descr, weight_format=weight_format, devices=["cpu"])
        sample = predict(model=pp, inputs=image, blocksize_parameter=blocksize)
        result = np.asarray(sample.members["output"].data, dtype=np.float32)
        del descr, pp, sample
    return result


@pytest.mark.parametrize("case", CASES)
def test_package_passes_current_bioimageio_test(built, case):
    _, _, result = built(case)
    assert result.report.passed, result.report.format()
    assert len(result.report.failed_checks) == 0
    assert result.notes == []  # no synthetic test data, no format warnings


@pytest.mark.parametrize("case", CASES)
def test_every_weight_format_reproduces_the_run_dir_prediction(built, case):
    run, out, result = built(case)
    image, axes = _image_for(case, run, np.random.default_rng(1))
    predictor = Predictor.from_run_dir(run, device="cpu")
    predictor.border = "mirror"
    expected = predictor.predict(image, axes)
    scale = float(np.abs(expected).max())
    for fmt in result.weight_formats:
        got = _bioimageio_predict(out, fmt, image)
        assert got.shape == image.shape
        # the whole image, borders included: both mirror the image by the halo at its border
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * scale, err_msg=fmt)
    # the kit's default border differs from it only within the halo of the image's border
    predictor.border = "network"
    inner = (slice(None), slice(None)) + (slice(predictor.halo, -predictor.halo),) * (image.ndim - 2)
    np.testing.assert_allclose(predictor.predict(image, axes)[inner], expected[inner], rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("case", CASES)
def test_blockwise_prediction_shows_no_seams(built, case):
    run, out, _ = built(case)
    image, _ = _image_for(case, run, np.random.default_rng(2))
    fmt = "onnx"  # fastest on the CPU; the other formats are compared above
    whole = _bioimageio_predict(out, fmt, image)
    # blocks of 100 (2D) and 34 (3D) pixels per axis: several blocks along every axis
    blocks = _bioimageio_predict(out, fmt, image, blocksize=8 if image.ndim == 4 else 4)
    halo = Predictor.from_run_dir(run, device="cpu").halo
    inner = (slice(None), slice(None)) + (slice(halo, -halo),) * (image.ndim - 2)
    diff = np.abs(blocks - whole)[inner]
    scale = float(np.abs(whole).max())
    assert diff.max() <= 1e-4 * scale, f"seams: max difference {diff.max():.3g} (image max {scale:.3g})"


@pytest.mark.parametrize("case", CASES)
def test_predict_on_zip_equals_predict_on_run_dir(built, case, tmp_path):
    run, out, _ = built(case)
    image, axes = _image_for(case, run, np.random.default_rng(3))
    np.testing.assert_allclose(
        Predictor.from_bioimageio(out, device="cpu").predict(image, axes),
        Predictor.from_run_dir(run, device="cpu").predict(image, axes),
        rtol=1e-5,
        atol=1e-5 * float(np.abs(image).max()),
    )
    # and through the command line, on a file
    src = tmp_path / "in" / "img.tif"
    write_image(src, image, axes)
    for model, name in ((run, "from_run"), (out, "from_zip")):
        result = invoke("predict", model, src, "--out", tmp_path / name, "--device", "cpu", "--quiet")
        assert result.exit_code == 0, result.stderr
    a = read_image(tmp_path / "from_run" / "img.tif", axes).data
    b = read_image(tmp_path / "from_zip" / "img.tif", axes).data
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * float(np.abs(a).max()))


def test_seam_check_detects_a_halo_below_the_receptive_field(built, tmp_path):
    """Negative control: the same package with a 4-pixel halo does show seams."""
    import zipfile

    import yaml

    run, out, _ = built("n2v2-2d")
    with zipfile.ZipFile(out) as zf:
        files = {n: zf.read(n) for n in zf.namelist()}
    rdf = yaml.safe_load(files["rdf.yaml"])
    for axis in rdf["outputs"][0]["axes"][2:]:
        axis["halo"] = 4
    files["rdf.yaml"] = yaml.safe_dump(rdf, sort_keys=False).encode()
    small_halo = tmp_path / "small-halo.bioimageio.zip"
    with zipfile.ZipFile(small_halo, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    image, _ = _image_for("n2v2-2d", run, np.random.default_rng(2))
    whole = _bioimageio_predict(small_halo, "onnx", image)
    blocks = _bioimageio_predict(small_halo, "onnx", image, blocksize=8)
    halo = Predictor.from_run_dir(run, device="cpu").halo
    diff = np.abs(blocks - whole)[:, :, halo:-halo, halo:-halo]
    assert diff.max() > 1e-3 * float(np.abs(whole).max())
