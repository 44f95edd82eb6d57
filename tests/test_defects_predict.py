"""Defects of predict / package / spec loading (issue tracker items 2, 11, 12, 13, 16).

Run directories are made by hand (a random U-Net, a spec, statistics) so that every test is
fast; packages are built once per module without the bioimageio test (``run_test=False``).
"""

from __future__ import annotations

import io
import json
import math
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml

from ai4life_kit.challenge import runner
from ai4life_kit.config import load_spec, save_spec
from ai4life_kit.data.normalization import PACKAGE_EPS, denormalise, normalise, read_normalization
from ai4life_kit.errors import ConfigError, ModelLoadError, UserInputError
from ai4life_kit.export import build as build_mod
from ai4life_kit.export import load_run, package_run
from ai4life_kit.models.unet import UNet
from ai4life_kit.prediction import Predictor
from ai4life_kit.prediction.package_loader import read_package
from kit_helpers import invoke, run_cli, small_spec

AUTHOR = "Ada Lovelace"
DEPTH = 1


def make_run(root: Path, algorithm: str = "n2v", mean: float = 100.0, std: float = 10.0) -> Path:
    """A run directory by hand: a random width-8 U-Net with trained-looking batch-norm statistics."""
    root.mkdir(parents=True)
    save_spec(small_spec(algorithm, model__depth=DEPTH, model__width=8), root / "spec.yaml")
    args = {"dims": 2, "in_channels": 1, "out_channels": 1, "depth": DEPTH, "width": 8, "n2v2": False}
    torch.manual_seed(0)
    model = UNet(**args).train()
    with torch.no_grad():  # populate the batch-norm running statistics
        for _ in range(2):
            model(torch.randn(2, 1, 16, 16))
    (root / "checkpoints").mkdir()
    torch.save({"model_args": args, "model_state": model.state_dict(), "epoch": 1}, root / "checkpoints" / "best.pt")
    norm = {"mean": [mean], "std": [std], "target_mean": [mean], "target_std": [std]}
    (root / "normalization.json").write_text(json.dumps(norm))
    image = np.random.default_rng(1).normal(mean, std, (48, 56)).astype(np.float32)
    train_file = root.parent / f"{root.name}_train.tif"
    tifffile.imwrite(train_file, image, metadata={"axes": "YX"})
    (root / "training_summary.json").write_text(json.dumps({"files": [str(train_file)]}))
    return root


def noisy_image(path: Path, shape=(40, 56), mean: float = 100.0, std: float = 10.0) -> Path:
    tifffile.imwrite(path, np.random.default_rng(2).normal(mean, std, shape).astype(np.float32))
    return path


def rewrite_rdf(src: Path, dst: Path, edit) -> Path:
    """A copy of a package zip whose rdf.yaml went through ``edit(rdf)``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename == "rdf.yaml":
                rdf = yaml.safe_load(data)
                edit(rdf)
                data = yaml.safe_dump(rdf, sort_keys=False).encode()
            zout.writestr(info, data)
    return dst


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    """``{algorithm: (run_dir, zip)}`` for N2V and structN2V, and small- and tiny-std N2V runs."""
    root = tmp_path_factory.mktemp("defects")
    out = {}
    for key, algorithm, mean, std in [
        ("n2v", "n2v", 100.0, 10.0),
        ("structn2v", "structn2v", 100.0, 10.0),
        ("small_std", "n2v", 1e-3, 1.2e-3),  # just above TINY_STD: fixed_zero_mean_unit_variance, eps matters
        ("tiny_std", "n2v", 1e-3, 1e-4),  # below TINY_STD: scale_linear, no eps (item 10)
    ]:
        run = make_run(root / key, algorithm, mean, std)
        zip_path = root / f"{key}.bioimageio.zip"
        package_run(run, zip_path, authors=[AUTHOR], onnx=False, run_test=False)
        out[key] = (run, zip_path)
    return out


def _one_line_error(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr
    return lines[0]


# ---------------------------------------------------------------------------------------------
# item 2: predict validates normalization.json as package does
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "content",
    [
        json.dumps({"mean": [100.0], "std": [0.0], "target_mean": [100.0], "target_std": [10.0]}),
        json.dumps({"mean": [100.0], "std": [float("nan")], "target_mean": [100.0], "target_std": [10.0]}),
        json.dumps({"mean": [100.0], "std": [10.0], "target_mean": [100.0], "target_std": [-1.0]}),
        json.dumps({"mean": [100.0, 3.0], "std": [10.0, 1.0]}),  # two channels for a 1-channel model
        "{not json at all",
        "[1, 2]",
    ],
    ids=["std-0", "std-nan", "target-std-negative", "too-many-channels", "garbage", "not-an-object"],
)
def test_predict_refuses_unusable_normalization_json(tmp_path, content):
    run = make_run(tmp_path / "run")
    norm = run / "normalization.json"
    norm.write_text(content)
    out = tmp_path / "out"
    result = invoke("predict", run, noisy_image(tmp_path / "img.tif"), "--out", out, "-q")
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert str(norm) in _one_line_error(result)
    assert not out.exists() or not any(out.iterdir())  # no all-NaN image written
    # package refuses the same file with the same message: one reader for both
    with pytest.raises(ModelLoadError) as from_package:
        load_run(run)
    with pytest.raises(ModelLoadError) as from_predict:
        Predictor.from_run_dir(run, device="cpu")
    assert str(from_predict.value) == str(from_package.value)


def test_predict_with_std_0_is_one_line_as_a_user_sees_it(tmp_path):
    """As a real process: exit 2, one line naming the file, no RuntimeWarning lines."""
    run = make_run(tmp_path / "run")
    (run / "normalization.json").write_text(json.dumps({"mean": [100.0], "std": [0.0]}))
    result = run_cli("predict", run, noisy_image(tmp_path / "img.tif"), "--out", tmp_path / "out", "-q")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "normalization.json" in result.stderr and "'std' must be positive" in result.stderr
    assert "RuntimeWarning" not in result.stderr


def test_read_normalization_defaults_targets_to_the_input_statistics(tmp_path):
    path = tmp_path / "normalization.json"
    path.write_text(json.dumps({"mean": [1.0, 2.0], "std": [3.0, 4.0]}))
    norm = read_normalization(path, n_in=2, n_out=2)
    assert (norm.mean, norm.std, norm.target_mean, norm.target_std) == ([1.0, 2.0], [3.0, 4.0], [1.0, 2.0], [3.0, 4.0])
    with pytest.raises(ModelLoadError, match="target statistics must have 1 values"):
        read_normalization(path, n_in=2, n_out=1)


@pytest.mark.parametrize(
    ("where", "value"),
    [
        ("std", 0.0),
        ("std", -2.0),
        ("std", float("nan")),
        ("std", float("inf")),
        ("gain", 0.0),  # ai4life-kit's output gain is the target std
        ("gain", -1.0),
    ],
)
def test_zip_with_unusable_rdf_std_is_rejected(packages, tmp_path, where, value):
    _, good = packages["n2v"]

    def edit(rdf):
        if where == "std":
            rdf["inputs"][0]["preprocessing"][0]["kwargs"]["std"] = [value]
        else:
            rdf["outputs"][0]["postprocessing"][0]["kwargs"]["gain"] = [value]

    bad = rewrite_rdf(good, tmp_path / "bad.bioimageio.zip", edit)
    with pytest.raises(ModelLoadError, match=where) as err:
        read_package(bad)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)
    result = invoke("predict", bad, noisy_image(tmp_path / "img.tif"), "--out", tmp_path / "out", "-q")
    assert result.exit_code == 2
    assert str(bad) in _one_line_error(result)


# ---------------------------------------------------------------------------------------------
# item 11: strict YAML specs
# ---------------------------------------------------------------------------------------------
DUPLICATE = """\
algorithm:
  name: n2v
model:
  depth: 2
  width: 8
  depth: 3
data:
  dims: 2
"""


def test_duplicate_key_in_spec_is_an_error_naming_key_and_lines(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(DUPLICATE)
    with pytest.raises(ConfigError, match=r"'depth' appears twice .*lines 4 and 6"):
        load_spec(spec)
    result = invoke("train", spec, "--data", noisy_image(tmp_path / "img.tif"), "--out", tmp_path / "run")
    assert result.exit_code == 2
    line = _one_line_error(result)
    assert str(spec) in line and "'depth'" in line and "line" in line
    assert not (tmp_path / "run").exists()


def test_same_key_in_different_mappings_and_merge_keys_are_fine(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("algorithm: {name: n2v}\nmodel: {depth: 2}\ndata: {dims: 2, patch_size: [32, 32]}\n")
    assert load_spec(spec).model.depth == 2
    spec.write_text("base: &b {depth: 2}\n")
    with pytest.raises(ConfigError, match="unknown key 'base'"):  # not a duplicate-key error
        load_spec(spec)


def test_spec_path_that_is_a_folder(tmp_path):
    folder = tmp_path / "specs"
    folder.mkdir()
    with pytest.raises(ConfigError, match="is a folder"):
        load_spec(folder)
    result = invoke("train", folder, "--data", noisy_image(tmp_path / "img.tif"), "--out", tmp_path / "run")
    assert result.exit_code == 2
    line = _one_line_error(result)
    assert "is a folder" in line and "does not exist" not in line


# ---------------------------------------------------------------------------------------------
# item 12: package checks the [bioimageio] extra up front
# ---------------------------------------------------------------------------------------------
def _no_work(*args, **kwargs):
    raise AssertionError("package_run read the run directory before checking its dependencies")


@pytest.mark.parametrize(
    ("missing", "flags", "named"),
    [
        ("onnx", [], "onnx"),
        ("onnxruntime", [], "onnxruntime"),
        ("bioimageio.core", ["--no-onnx"], "bioimageio.core"),
        ("bioimageio.spec", ["--no-onnx"], "bioimageio.spec"),
    ],
)
def test_package_without_bioimageio_extra_fails_up_front(tmp_path, monkeypatch, missing, flags, named):
    run = make_run(tmp_path / "run")
    monkeypatch.setitem(sys.modules, missing, None)  # what an absent module looks like to import
    monkeypatch.setattr(build_mod, "load_run", _no_work)
    out = tmp_path / "m.bioimageio.zip"
    result = invoke("package", run, "--out", out, "--author", AUTHOR, *flags)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    line = _one_line_error(result)
    assert named in line and "pip install 'ai4life-kit[bioimageio]'" in line
    assert not out.exists()


def test_package_with_no_onnx_does_not_need_onnx(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    build_mod.check_dependencies(onnx=False, run_test=True)  # no error
    with pytest.raises(UserInputError, match="--no-onnx"):
        build_mod.check_dependencies(onnx=True, run_test=True)


# ---------------------------------------------------------------------------------------------
# item 13: TTA keeps structN2V's noise axis
# ---------------------------------------------------------------------------------------------
class _Recorder(torch.nn.Module):
    """Wraps a network and records the spatial shape of every batch it sees."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(x.shape[2:]))
        return self.inner(x)


def _record(predictor: Predictor) -> _Recorder:
    predictor.model = _Recorder(predictor.model)
    return predictor.model


def _average(predictor: Predictor, image: np.ndarray, rotations: bool) -> np.ndarray:
    """TTA by hand: predict each flipped (and rotated) image, undo it, average."""
    outs = []
    for k in range(4) if rotations else [0]:
        for flips in [(), (1,)] if rotations else [(), (1,), (0,), (0, 1)]:
            view = np.rot90(image, k)
            view = np.flip(view, flips) if flips else view
            y = predictor.predict(np.ascontiguousarray(view), "YX")
            y = np.flip(y, flips) if flips else y
            outs.append(np.rot90(y, -k))
    return np.mean(outs, axis=0)


@pytest.mark.parametrize("source", ["run_dir", "zip"])
def test_tta_uses_flips_only_for_structn2v(packages, source):
    image = np.random.default_rng(3).normal(100, 10, (40, 56)).astype(np.float32)  # not square
    for algorithm, n_transforms in (("structn2v", 4), ("n2v", 8)):
        run, zip_path = packages[algorithm]
        p = Predictor.from_run_dir(run, "cpu") if source == "run_dir" else Predictor.from_bioimageio(zip_path, "cpu")
        assert p.algorithm == algorithm
        transforms = p.tta_transforms()
        assert len(transforms) == n_transforms
        if algorithm == "structn2v":
            assert all(t.rotations == 0 for t in transforms)
            assert {t.flips for t in transforms} == {(), (-1,), (-2,), (-2, -1)}
        else:
            assert {t.rotations for t in transforms} == {0, 1, 2, 3}
        recorder = _record(p)
        tta = p.predict(image, "YX", tta=True)
        tile = recorder.shapes[0]
        assert len(recorder.shapes) == n_transforms  # one tile, one forward pass per transform
        transposed = sum(s == tile[::-1] and s != tile for s in recorder.shapes)
        assert transposed == (0 if algorithm == "structn2v" else 4)  # rotations transpose the tile
        p.model = recorder.inner
        expected = _average(p, image, rotations=algorithm != "structn2v")
        np.testing.assert_allclose(tta, expected, rtol=1e-4, atol=1e-3)


def test_challenge_runner_tta_goes_through_the_same_predictor(packages):
    _, zip_path = packages["structn2v"]
    (model,) = runner.load_models([zip_path], device="cpu")
    assert model.algorithm == "structn2v"
    recorder = _record(model)
    stack = np.random.default_rng(4).normal(100, 10, (2, 40, 56)).astype(np.float32)
    out = runner.denoise([model], stack, "SYX", tta=True, batch_size=2)
    assert len(recorder.shapes) == 4  # both samples' tiles in one batch, 4 flips
    assert all(s == recorder.shapes[0] for s in recorder.shapes)
    np.testing.assert_array_equal(out, model.predict(stack, "SYX", tta=True, batch_size=2))


def test_rdf_records_the_algorithm(packages):
    for algorithm in ("n2v", "structn2v"):
        with zipfile.ZipFile(packages[algorithm][1]) as zf:
            rdf = yaml.safe_load(zf.read("rdf.yaml"))
        assert rdf["config"]["ai4life_kit"]["algorithm"] == algorithm


# ---------------------------------------------------------------------------------------------
# item 16: (x - mean) / (std + eps) everywhere, as bioimageio.core computes it
# ---------------------------------------------------------------------------------------------
def _rdf_processing(rdf: dict, network, x: np.ndarray) -> np.ndarray:
    """The rdf's pre- and post-processing in numpy, as bioimageio.core runs them (float64, eps 1e-6)."""
    (pre_step,) = [s for s in rdf["inputs"][0]["preprocessing"] if s["id"] != "ensure_dtype"]
    (post_step,) = rdf["outputs"][0]["postprocessing"]
    assert pre_step["id"] in ("fixed_zero_mean_unit_variance", "scale_linear") and post_step["id"] == "scale_linear"
    shape = (1, -1) + (1,) * (x.ndim - 2)
    gain = np.asarray(post_step["kwargs"]["gain"], np.float64).reshape(shape)
    offset = np.asarray(post_step["kwargs"]["offset"], np.float64).reshape(shape)
    x64 = x.astype(np.float32).astype(np.float64)
    if pre_step["id"] == "scale_linear":
        in_gain = np.asarray(pre_step["kwargs"]["gain"], np.float64).reshape(shape)
        xn = (x64 * in_gain + np.asarray(pre_step["kwargs"]["offset"], np.float64).reshape(shape)).astype(np.float32)
    else:
        mean = np.asarray(pre_step["kwargs"]["mean"], np.float64).reshape(shape)
        std = np.asarray(pre_step["kwargs"]["std"], np.float64).reshape(shape)
        xn = ((x64 - mean) / (std + 1e-6)).astype(np.float32)
    with torch.no_grad():
        y = network(torch.from_numpy(xn)).numpy()
    return (y.astype(np.float64) * gain + offset).astype(np.float32)


def _package_network(zip_path: Path) -> tuple[torch.nn.Module, dict]:
    """The package's TorchScript (loaded without the kit's loader) and its rdf."""
    with zipfile.ZipFile(zip_path) as zf:
        rdf = yaml.safe_load(zf.read("rdf.yaml"))
        data = zf.read(rdf["weights"]["torchscript"]["source"])
    return torch.jit.load(io.BytesIO(data), map_location="cpu").eval(), rdf


def test_zip_prediction_equals_the_rdf_processing_with_eps(packages):
    """std 1.2e-3: eps = 1e-6 changes normalised values by 8e-4; float32 rounding is ~1e-7 of std here."""
    run, zip_path = packages["small_std"]
    network, rdf = _package_network(zip_path)
    assert rdf["inputs"][0]["preprocessing"][0]["id"] == "fixed_zero_mean_unit_variance"
    p = Predictor.from_bioimageio(zip_path, device="cpu")
    image = np.random.default_rng(5).normal(1e-3, 1.2e-3, (1, 1, 40, 56)).astype(np.float32)
    # one tile: the predictor pads symmetrically to the size multiple, runs the network, crops;
    # the reference does the same with the rdf's processing
    grid = p.plan(image.shape[2:])
    assert len(grid) == 1
    pad = [(0, 0), (0, 0)] + [(0, t - n) for t, n in zip(grid.tile, grid.shape, strict=True)]
    padded = np.pad(image, pad, mode="symmetric")
    crop = (slice(None), slice(None)) + tuple(slice(0, n) for n in grid.shape)
    expected = _rdf_processing(rdf, network, padded)[crop]
    tstd = rdf["outputs"][0]["postprocessing"][0]["kwargs"]["gain"][0]
    for predictor in (p, Predictor.from_run_dir(run, device="cpu")):
        got = predictor.predict(image, "SCYX", precision="fp32")
        np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6 * tstd)
    # without eps the normalised input differs by ~8e-4: the check above can tell
    no_eps = Predictor.from_bioimageio(zip_path, device="cpu")
    no_eps.eps = 0.0
    assert np.abs(no_eps.predict(image, "SCYX") - expected).max() > 1e-5 * tstd


def test_tiny_std_package_declares_scale_linear_and_predicts_without_eps(packages):
    """std 1e-4 (< TINY_STD): eps would change normalised values by 1e-2, so the rdf has none."""
    run, zip_path = packages["tiny_std"]
    network, rdf = _package_network(zip_path)
    (pre_step,) = rdf["inputs"][0]["preprocessing"]
    assert pre_step["id"] == "scale_linear"
    image = np.random.default_rng(5).normal(1e-3, 1e-4, (1, 1, 40, 56)).astype(np.float32)
    p = Predictor.from_bioimageio(zip_path, device="cpu")
    grid = p.plan(image.shape[2:])
    pad = [(0, 0), (0, 0)] + [(0, t - n) for t, n in zip(grid.tile, grid.shape, strict=True)]
    crop = (slice(None), slice(None)) + tuple(slice(0, n) for n in grid.shape)
    expected = _rdf_processing(rdf, network, np.pad(image, pad, mode="symmetric"))[crop]
    tstd = rdf["outputs"][0]["postprocessing"][0]["kwargs"]["gain"][0]
    for predictor in (p, Predictor.from_run_dir(run, device="cpu")):
        assert predictor.eps == 0.0
        np.testing.assert_allclose(predictor.predict(image, "SCYX", precision="fp32"), expected, atol=1e-5 * tstd)


def test_test_output_equals_the_rdf_processing_with_eps(packages):
    _, zip_path = packages["small_std"]
    network, rdf = _package_network(zip_path)
    with zipfile.ZipFile(zip_path) as zf:
        test_in = np.load(io.BytesIO(zf.read(rdf["inputs"][0]["test_tensor"]["source"])))
        test_out = np.load(io.BytesIO(zf.read(rdf["outputs"][0]["test_tensor"]["source"])))
    tstd = rdf["outputs"][0]["postprocessing"][0]["kwargs"]["gain"][0]
    np.testing.assert_allclose(test_out, _rdf_processing(rdf, network, test_in), rtol=0, atol=1e-5 * tstd)


def test_normalise_is_bioimageio_cores_arithmetic():
    rng = np.random.default_rng(6)
    x = rng.normal(0.05, 0.01, (2, 3, 20, 24)).astype(np.float32)
    mean, std = [0.05, 0.04, 0.06], [0.01, 0.003, 0.02]
    shape = (1, 3, 1, 1)
    m64, s64 = np.reshape(mean, shape), np.reshape(std, shape)
    expected = ((x.astype(np.float64) - m64) / (s64 + PACKAGE_EPS)).astype(np.float32)
    np.testing.assert_array_equal(normalise(x, mean, std, 2, eps=PACKAGE_EPS), expected)
    view = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)  # a strided view
    np.testing.assert_array_equal(normalise(view, mean, std, 2, eps=PACKAGE_EPS), expected)
    y = expected.copy()
    back = denormalise(y, mean, std, 2)
    assert back is y  # in place
    np.testing.assert_array_equal(back, (expected.astype(np.float64) * s64 + m64).astype(np.float32))
    assert math.isclose(PACKAGE_EPS, 1e-6)
