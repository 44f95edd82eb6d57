"""Defects of predict / package / spec loading (issue tracker items 2, 11, 12, 13, 16).

Run directories are made by hand (a random U-Net, a spec, statistics) so that every test is
fast; packages are built once per module without the bioimageio test (``run_test=False``).
"""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml

from ai4life_kit.config import load_spec, save_spec
from ai4life_kit.data.normalization import read_normalization
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
    """``{algorithm: (run_dir, zip)}`` for N2V and structN2V, and a small-std N2V (eps matters)."""
    root = tmp_path_factory.mktemp("defects")
    out = {}
    for key, algorithm, mean, std in [
        ("n2v", "n2v", 100.0, 10.0),
        ("structn2v", "structn2v", 100.0, 10.0),
        ("small_std", "n2v", 1e-3, 1e-4),
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
