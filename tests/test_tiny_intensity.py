"""Float data with a tiny intensity scale (std about 1e-9) predicts and packages like any other.

Training normalises with ``(x - mean) / std``; consumers' ``fixed_zero_mean_unit_variance``
adds ``eps = 1e-6`` to a std that small, which squashed every input to about zero (``predict``
returned a near-constant image), and the format rejects ``std < 1e-6``, so ``package`` failed.
Such runs now normalise without eps everywhere, declared in the package as ``scale_linear``.
Values that never reach 1e-4 cannot be packaged at all (bioimageio.spec rejects their test
tensors): ``package`` says so up front.
"""

from __future__ import annotations

import json
import shutil
import zipfile

import numpy as np
import pytest
import tifffile
import yaml

from ai4life_kit.data.normalization import PACKAGE_EPS, TINY_STD, input_eps
from ai4life_kit.prediction import Predictor
from ai4life_kit.simulate import simulate_ground_truth
from ai4life_kit.training import train
from kit_helpers import small_spec

SCALE = 1e-9


def _train_scaled(root, offset: float):
    """A short N2V run on a noisy image in units of 1e-9 (plus ``offset``)."""
    rng = np.random.default_rng(0)
    lam = simulate_ground_truth((96, 96), rng, peak=50.0)
    noisy = rng.poisson(lam) + rng.normal(0, 1, lam.shape)
    image = root / "tiny.tif"
    tifffile.imwrite(image, (noisy * SCALE + offset).astype(np.float32))
    spec = small_spec("n2v", training__epochs=1, training__steps_per_epoch=5)
    train(spec, [image], None, root / "run", progress=False)
    return root, root / "run", image


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return _train_scaled(tmp_path_factory.mktemp("tiny"), offset=0.0)


@pytest.fixture(scope="module")
def tiny_std_run(tmp_path_factory):
    """std about 6e-9 on a background of 1e-3: values bioimage.io can test, a std it could not declare."""
    return _train_scaled(tmp_path_factory.mktemp("tiny-std"), offset=1e-3)


def test_input_eps_is_dropped_only_for_tiny_stds():
    assert input_eps([1.0, 300.0]) == PACKAGE_EPS
    assert input_eps([TINY_STD]) == PACKAGE_EPS
    assert input_eps([5e-9]) == 0.0
    assert input_eps([1.0, 5e-9]) == 0.0  # one tiny channel decides for the tensor


def test_run_dir_prediction_is_the_same_at_any_intensity_scale(tiny_run, tmp_path):
    """Normalisation makes the model blind to the unit: the run rescaled by 1e9 gives the same numbers."""
    _, run, image = tiny_run
    tiny = tifffile.imread(image)
    scaled_run = tmp_path / "scaled"
    shutil.copytree(run, scaled_run)
    norm = json.loads((run / "normalization.json").read_text())
    assert max(norm["std"]) < TINY_STD
    (scaled_run / "normalization.json").write_text(json.dumps({k: [v / SCALE for v in vs] for k, vs in norm.items()}))
    out_tiny = Predictor.load(run, "cpu").predict(tiny, "YX")
    out_scaled = Predictor.load(scaled_run, "cpu").predict(tiny / np.float32(SCALE), "YX")
    # Within float32 rounding of the rescaling, and far from the near-constant image eps gave.
    np.testing.assert_allclose(out_tiny / SCALE, out_scaled, rtol=2e-4, atol=2e-4 * float(out_scaled.std()))
    assert out_tiny.std() > 0.01 * tiny.std()  # with eps: 1e-3 of it, a flat image


def test_values_too_small_for_bioimageio_are_refused_before_export(tiny_run, tmp_path):
    pytest.importorskip("bioimageio.spec")
    from ai4life_kit.errors import UserInputError
    from ai4life_kit.export import package_run

    _, run, _ = tiny_run
    with pytest.raises(UserInputError, match=r"test input .* no value of magnitude 0\.0001 or more .* multiply by 1e6"):
        package_run(run, tmp_path / "tiny.bioimageio.zip", authors=["Ada Lovelace"], onnx=False, run_test=False)
    assert list(tmp_path.iterdir()) == []


def test_tiny_std_run_packages_and_passes_bioimageio_core(tiny_std_run, tmp_path):
    pytest.importorskip("bioimageio.core")
    from ai4life_kit.export import package_run

    _, run, image = tiny_std_run
    zip_path = tmp_path / "tiny.bioimageio.zip"
    result = package_run(run, zip_path, authors=["Ada Lovelace"], onnx=False, run_test=True)
    assert result.report is not None and result.report.passed, result.report.one_line()
    with zipfile.ZipFile(zip_path) as zf:
        rdf = yaml.safe_load(zf.read("rdf.yaml"))
    (step,) = rdf["inputs"][0]["preprocessing"]
    norm = json.loads((run / "normalization.json").read_text())
    assert step["id"] == "scale_linear"
    np.testing.assert_allclose(step["kwargs"]["gain"], [1 / s for s in norm["std"]], rtol=1e-12)
    offsets = [-m / s for m, s in zip(norm["mean"], norm["std"], strict=True)]
    np.testing.assert_allclose(step["kwargs"]["offset"], offsets)
    tiny = tifffile.imread(image)
    from_zip = Predictor.load(zip_path, "cpu").predict(tiny, "YX")
    from_run = Predictor.load(run, "cpu").predict(tiny, "YX")
    np.testing.assert_allclose(from_zip, from_run, rtol=1e-5, atol=1e-6 * float(from_run.std()))
