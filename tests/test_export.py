"""bioimage.io packaging on hand-made run directories (tiny random U-Nets): fast and exact.

Real short trainings are packaged in ``test_export_e2e.py``.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml

from ai4life_kit.config import parse_spec, save_spec
from ai4life_kit.errors import Ai4LifeKitError, DataError, ModelLoadError, OutputExistsError, UserInputError
from ai4life_kit.export import build as build_mod
from ai4life_kit.export import check_format, inspect_zip, load_run, package_run, run_package_test
from ai4life_kit.export.build import failed_package_path
from ai4life_kit.export.package_zip import patch_rdf_for_old_consumers as _patch_rdf_for_old_consumers
from ai4life_kit.export.rundir import halo_for_depth
from ai4life_kit.export.testdata import make_test_input, min_size, valid_size
from ai4life_kit.models.unet import UNet, receptive_field_radius
from ai4life_kit.prediction import Predictor
from ai4life_kit.prediction.package_loader import read_package

AUTHOR = "Ada Lovelace"
GITHUB_USER = "ada-lovelace-test"  # unknown to bioimageio.spec: must never be looked up online


def make_run(
    root: Path,
    algorithm: str = "n2v2",
    dims: int = 2,
    channels: int = 1,
    depth: int = 1,
    width: int = 4,
    shape: tuple[int, ...] = (72, 80),
    write_image: bool = True,
) -> Path:
    """A run directory by hand: random U-Net (with non-trivial batch-norm statistics), spec, stats."""
    root.mkdir(parents=True)
    patch = [2**depth * 4] * dims
    spec = parse_spec(
        {
            "name": f"hand-made {algorithm}",
            "algorithm": {"name": algorithm},
            "model": {"depth": depth, "width": width},
            "data": {"dims": dims, "patch_size": patch, "n_channels": channels},
        }
    )
    save_spec(spec, root / "spec.yaml")
    rng = np.random.default_rng(1)
    full_shape = ((channels,) if channels > 1 else ()) + tuple(shape)
    image = (rng.poisson(40, size=full_shape) + 100).astype(np.uint16)
    image_path = root.parent / f"{root.name}_train.tif"
    if write_image:
        axes = ("C" if channels > 1 else "") + ("ZYX" if dims == 3 else "YX")
        tifffile.imwrite(image_path, image, metadata={"axes": axes})
    args = {
        "dims": dims,
        "in_channels": channels,
        "out_channels": channels,
        "depth": depth,
        "width": width,
        "n2v2": algorithm == "n2v2",
    }
    torch.manual_seed(0)
    model = UNet(**args).train()
    with torch.no_grad():  # populate batch-norm running statistics
        for _ in range(2):
            model(torch.randn((2, channels) + (2**depth * 4,) * dims))
    (root / "checkpoints").mkdir()
    torch.save(
        {"model_args": args, "model_state": model.state_dict(), "epoch": 3, "val_loss": 0.5},
        root / "checkpoints" / "best.pt",
    )
    axes_sum = tuple(range(1, image.ndim)) if channels > 1 else None
    mean = np.atleast_1d(image.mean(axis=axes_sum)).astype(float).tolist() if channels > 1 else [float(image.mean())]
    std = np.atleast_1d(image.std(axis=axes_sum)).astype(float).tolist() if channels > 1 else [float(image.std())]
    tmean = [m + 3.0 for m in mean]  # distinct target statistics (as CARE would have)
    tstd = [s * 2.0 for s in std]
    (root / "normalization.json").write_text(
        json.dumps({"mean": mean, "std": std, "target_mean": tmean, "target_std": tstd})
    )
    (root / "training_summary.json").write_text(
        json.dumps({"files": [str(image_path)], "val_loss": 0.5, "val_psnr": 31.5, "best_epoch": 3, "steps": 30})
    )
    return root


def rdf_of(path: Path) -> dict:
    with zipfile.ZipFile(path) as zf:
        return yaml.safe_load(zf.read("rdf.yaml"))


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    """One tested package of a 2D N2V2 model, built with the network lookup made impossible."""
    root = tmp_path_factory.mktemp("pkg")
    run = make_run(root / "run", "n2v2", shape=(72, 80))
    out = root / "model.bioimageio.zip"

    def no_network(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    with pytest.MonkeyPatch.context() as mp:
        import httpx

        mp.setattr(httpx, "get", no_network)
        result = package_run(run, out, name="Tiny N2V2 test", authors=[AUTHOR], github_user=GITHUB_USER)
    return run, out, result


# ---------------------------------------------------------------------------------------------
# sizes, halo, test tensors
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_halo_covers_receptive_field_and_min_exceeds_twice_halo(depth):
    halo, step = halo_for_depth(depth), 2**depth
    assert halo >= receptive_field_radius(depth)
    assert halo % step == 0
    smallest = min_size(halo, step)
    assert smallest > 2 * halo and smallest % step == 0


def test_valid_size_is_min_plus_n_steps():
    halo, step = 12, 2
    for available in (5, 26, 27, 40, 41, 300):
        size = valid_size(available, min_size(halo, step), step, cap=64)
        assert (size - min_size(halo, step)) % step == 0
        assert size == 26 or size <= min(available, 64)


def test_test_input_is_a_centre_crop_of_the_training_image(tmp_path):
    run = load_run(make_run(tmp_path / "run", shape=(72, 81)))
    test = make_test_input(run)
    image = tifffile.imread(tmp_path / "run_train.tif").astype(np.float32)
    assert test.array.shape == (1, 1, 72, 80)  # 26 + n*2, at most the image
    assert not test.synthetic and not test.padded
    np.testing.assert_array_equal(test.array[0, 0], image[:, 0:80])
    assert "run_train.tif" in test.source


def test_small_training_image_is_mirror_padded_to_the_minimum(tmp_path):
    run = load_run(make_run(tmp_path / "run", dims=3, shape=(10, 30, 30)))
    test = make_test_input(run)
    assert test.array.shape == (1, 1, 26, 30, 30)
    assert test.padded


def test_missing_training_data_falls_back_to_synthetic_input_only_when_asked(tmp_path):
    run = load_run(make_run(tmp_path / "run", write_image=False))
    with pytest.raises(DataError, match="--synthetic-test-data"):
        make_test_input(run)
    test = make_test_input(run, synthetic=True)
    assert test.synthetic
    assert test.array.shape == (1, 1, 26, 26)
    assert abs(float(test.array.mean()) - run.mean[0]) < 3 * run.std[0]


def test_explicit_unusable_test_image_is_an_error(tmp_path):
    run = load_run(make_run(tmp_path / "run"))
    bad = tmp_path / "rgb.tif"
    tifffile.imwrite(bad, np.zeros((3, 40, 40), np.uint16), metadata={"axes": "CYX"})
    with pytest.raises(UserInputError, match="3 channels"):
        make_test_input(run, bad)


# ---------------------------------------------------------------------------------------------
# the package
# ---------------------------------------------------------------------------------------------
def test_package_passes_bioimageio_test(packaged):
    _, out, result = packaged
    assert out.is_file()
    assert result.report.passed, result.report.format()
    assert result.report.stack["bioimageio.core"].startswith("0.11")
    names = {c.name for c in result.report.checks}
    for fmt in ("torchscript", "pytorch_state_dict", "onnx"):
        assert f"Reproduce test outputs from test inputs ({fmt})" in names
    assert result.weight_formats == ["pytorch_state_dict", "torchscript", "onnx"]
    assert result.size_bytes == out.stat().st_size


def test_format_validation_has_no_errors_and_no_warnings(packaged):
    _, out, result = packaged
    report = check_format(out, [GITHUB_USER])
    assert report.passed, report.format()
    assert [c.errors for c in report.checks if c.errors] == []
    assert report.warnings == []
    assert result.notes == []


def test_rdf_is_written_for_old_consumers(packaged):
    run_dir, out, _ = packaged
    rdf = rdf_of(out)
    assert rdf["format_version"] == "0.5.4"
    assert rdf["documentation"] == "README.md"
    assert rdf["covers"] == ["cover.png"]
    assert "id" not in rdf
    assert rdf["authors"][0] == {"name": AUTHOR, "github_user": GITHUB_USER}
    assert rdf["maintainers"][0]["github_user"] == GITHUB_USER
    assert rdf["license"] == "MIT"
    assert {"denoising", "2d", "pytorch", "unet", "fluorescence-light-microscopy", "n2v2"} <= set(rdf["tags"])
    assert {c.get("url") for c in rdf["cite"]} >= {"https://arxiv.org/abs/2211.08512"}
    assert rdf["config"]["deepimagej"]["allow_tiling"] is True
    assert rdf["attachments"][0]["source"] == "training_spec.yaml"
    with zipfile.ZipFile(out) as zf:
        assert zf.read("training_spec.yaml") == (run_dir / "spec.yaml").read_bytes()
        assert not [n for n in zf.namelist() if n.endswith(".data")]


def test_tensor_descriptions(packaged):
    _, out, _ = packaged
    rdf = rdf_of(out)
    (inp,), (outp,) = rdf["inputs"], rdf["outputs"]
    assert [a.get("id", a["type"]) for a in inp["axes"]] == ["batch", "channel", "y", "x"]
    assert [a.get("id", a["type"]) for a in outp["axes"]] == ["batch", "channel", "y", "x"]
    depth = 1
    halo = halo_for_depth(depth)
    for a in inp["axes"][2:]:
        assert a["size"] == {"min": min_size(halo, 2**depth), "step": 2**depth}
        assert a["size"]["min"] > 2 * halo
    for a in outp["axes"][2:]:
        assert a["halo"] >= receptive_field_radius(depth)
        assert a["size"] == {"tensor_id": "input", "axis_id": a["id"]}
    norm = json.loads((packaged[0] / "normalization.json").read_text())
    assert inp["preprocessing"] == [
        {"id": "fixed_zero_mean_unit_variance", "kwargs": {"mean": norm["mean"], "std": norm["std"], "axis": "channel"}}
    ]
    assert outp["postprocessing"] == [
        {
            "id": "scale_linear",
            "kwargs": {"axis": "channel", "gain": norm["target_std"], "offset": norm["target_mean"]},
        }
    ]
    weights = rdf["weights"]
    assert weights["onnx"]["opset_version"] == 17
    assert weights["pytorch_state_dict"]["architecture"]["callable"] == "UNet"


def test_architecture_file_is_models_unet_verbatim_and_state_dict_is_pure(packaged):
    _, out, _ = packaged
    import ai4life_kit.models.unet as unet

    rdf = rdf_of(out)
    with zipfile.ZipFile(out) as zf:
        assert (
            zf.read(rdf["weights"]["pytorch_state_dict"]["architecture"]["source"]) == Path(unet.__file__).read_bytes()
        )
        state = torch.load(io.BytesIO(zf.read("weights.pt")), weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    UNet(**rdf["weights"]["pytorch_state_dict"]["architecture"]["kwargs"]).load_state_dict(state, strict=True)


def test_sample_tensors_hold_the_test_tensors_and_cover_is_2_to_1(packaged):
    _, out, _ = packaged
    from PIL import Image

    with zipfile.ZipFile(out) as zf:
        for kind in ("input", "output"):
            test = np.load(io.BytesIO(zf.read(f"test_{kind}.npy")))
            sample = tifffile.imread(io.BytesIO(zf.read(f"sample_{kind}.tif")))
            assert test.dtype == np.float32
            np.testing.assert_array_equal(sample, test.reshape(sample.shape))
        cover = Image.open(io.BytesIO(zf.read("cover.png")))
        assert cover.size[0] == 2 * cover.size[1]
        readme = zf.read("README.md").decode()
    assert "## Validation" in readme
    assert "31.5" in readme  # val_psnr from training_summary.json
    assert "2211.08512" in readme


def test_every_weight_format_matches_the_eager_network_at_other_sizes(packaged):
    """Dynamic axes: batch 2 and a size that is not the test size (ONNX via onnxruntime)."""
    import onnxruntime as ort

    run_dir, out, _ = packaged
    run = load_run(run_dir)
    model = run.build_model()
    x = torch.randn(2, 1, 30, 34)
    with torch.no_grad():
        expected = model(x).numpy()
    with zipfile.ZipFile(out) as zf:
        scripted = torch.jit.load(io.BytesIO(zf.read("weights_torchscript.pt")))
        session = ort.InferenceSession(zf.read("weights.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        np.testing.assert_allclose(scripted(x).numpy(), expected, rtol=1e-5, atol=1e-5)
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("weights", ["auto", "torchscript", "pytorch_state_dict"])
def test_predictor_from_zip_equals_predictor_from_run_dir(packaged, weights):
    run_dir, out, _ = packaged
    image = np.random.default_rng(5).normal(150, 7, size=(2, 90, 70)).astype(np.float32)
    expected = Predictor.from_run_dir(run_dir, device="cpu").predict(image, "SYX")
    got = Predictor.from_bioimageio(out, device="cpu", weights=weights).predict(image, "SYX")
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
    assert read_package(out, weights).weights_format == ("pytorch_state_dict" if weights == "auto" else weights)


def test_predictor_from_bioimageio_hook(packaged):
    _, out, _ = packaged
    predictor = Predictor.from_bioimageio(out, device="cpu")
    assert predictor.spatial_ndim == 2 and predictor.n_channels == 1 and predictor.multiple == 2
    assert predictor.halo == halo_for_depth(1)


def test_package_loader_imports_no_bioimageio():
    import subprocess
    import sys

    code = (
        "import sys; import ai4life_kit.prediction.package_loader as m; "
        "bad = [k for k in sys.modules if k.startswith(('bioimageio', 'xarray', 'ai4life_kit.export'))]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_rdf_patch_only_touches_what_old_consumers_reject():
    rdf = {
        "format_version": "0.5.12",
        "documentation": {"source": "README.md", "sha256": "0" * 64},
        "covers": [{"source": "cover.png", "sha256": "1" * 64}],
        "inputs": [
            {
                "data": {"type": "float32"},
                "preprocessing": [
                    {"id": "ensure_dtype", "kwargs": {"dtype": "float32"}},
                    {"id": "fixed_zero_mean_unit_variance", "kwargs": {"mean": [1.0], "std": [2.0], "axis": "channel"}},
                    {"id": "ensure_dtype", "kwargs": {"dtype": "float32"}},
                ],
            }
        ],
        "outputs": [
            {"data": {"type": "float32"}, "postprocessing": [{"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}]}
        ],
    }
    patched = _patch_rdf_for_old_consumers(rdf)
    assert patched["format_version"] == "0.5.4"
    assert patched["documentation"] == "README.md" and patched["covers"] == ["cover.png"]
    assert [p["id"] for p in patched["inputs"][0]["preprocessing"]] == ["fixed_zero_mean_unit_variance"]
    assert "postprocessing" not in patched["outputs"][0]
    assert rdf["format_version"] == "0.5.12"  # the input is not modified


# ---------------------------------------------------------------------------------------------
# multi-channel and 3D descriptions (no bioimageio test: the e2e tests run it on real trainings)
# ---------------------------------------------------------------------------------------------
def test_two_channel_3d_package_without_onnx(tmp_path):
    run = make_run(tmp_path / "run", "care", dims=3, channels=2, shape=(28, 30, 32))
    out = tmp_path / "m.bioimageio.zip"
    result = package_run(run, out, name="Two channel 3D", authors=[AUTHOR], onnx=False, run_test=False)
    assert result.weight_formats == ["pytorch_state_dict", "torchscript"]
    rdf = rdf_of(out)
    inp = rdf["inputs"][0]
    assert [a.get("id", a["type"]) for a in inp["axes"]] == ["batch", "channel", "z", "y", "x"]
    assert inp["axes"][1]["channel_names"] == ["channel0", "channel1"]
    assert len(inp["preprocessing"][0]["kwargs"]["mean"]) == 2
    assert "onnx" not in rdf["weights"]
    assert "10.1038/s41592-018-0216-7" in {c.get("doi") for c in rdf["cite"]}
    with zipfile.ZipFile(out) as zf:
        test_in = np.load(io.BytesIO(zf.read("test_input.npy")))
    assert test_in.shape == (1, 2, 28, 30, 32)
    pkg = read_package(out)
    assert pkg.spatial_ndim == 3 and pkg.n_channels == 2
    image = np.random.default_rng(0).normal(140, 6, size=(20, 2, 40, 36)).astype(np.float32)
    np.testing.assert_allclose(
        Predictor.from_bioimageio(out, device="cpu").predict(image, "ZCYX"),
        Predictor.from_run_dir(run, device="cpu").predict(image, "ZCYX"),
        rtol=1e-5,
        atol=1e-4,
    )


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------
def test_run_dir_without_finished_checkpoint(tmp_path):
    run = make_run(tmp_path / "run")
    (run / "checkpoints" / "best.pt").unlink()
    with pytest.raises(ModelLoadError, match=r"best\.pt does not exist"):
        package_run(run, tmp_path / "m.bioimageio.zip", authors=[AUTHOR])
    assert not (tmp_path / "m.bioimageio.zip").exists()


def test_missing_run_dir_and_missing_normalization(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        package_run(tmp_path / "nope", tmp_path / "m.zip", authors=[AUTHOR])
    run = make_run(tmp_path / "run")
    (run / "normalization.json").unlink()
    with pytest.raises(ModelLoadError, match=r"normalization\.json"):
        package_run(run, tmp_path / "m.zip", authors=[AUTHOR])


def test_existing_output_needs_overwrite(tmp_path):
    run = make_run(tmp_path / "run")
    out = tmp_path / "m.bioimageio.zip"
    out.write_bytes(b"precious")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        package_run(run, out, authors=[AUTHOR])
    assert out.read_bytes() == b"precious"
    package_run(run, out, name="Overwritten model", authors=[AUTHOR], overwrite=True, onnx=False, run_test=False)
    assert zipfile.is_zipfile(out)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"authors": []}, "--author"),
        ({"authors": [AUTHOR], "license": "not-a-license"}, "SPDX"),
        ({"authors": [AUTHOR], "name": "abc"}, "--name 'abc'"),
        ({"authors": [AUTHOR], "github_user": "two words"}, "--github-user"),
    ],
)
def test_bad_metadata(tmp_path, kwargs, match):
    run = make_run(tmp_path / "run")
    with pytest.raises(UserInputError, match=match):
        package_run(run, tmp_path / "m.bioimageio.zip", run_test=False, **kwargs)


def test_output_must_be_a_zip(tmp_path):
    run = make_run(tmp_path / "run")
    with pytest.raises(UserInputError, match=r"must end with \.zip"):
        package_run(run, tmp_path / "model.yaml", authors=[AUTHOR])


def test_failing_package_test_names_the_check_and_its_numbers(tmp_path, monkeypatch):
    run = make_run(tmp_path / "run")
    real = build_mod.compute_test_output
    monkeypatch.setattr(build_mod, "compute_test_output", lambda *a: real(*a) + 5.0)
    out = tmp_path / "m.bioimageio.zip"
    with pytest.raises(Ai4LifeKitError) as info:
        package_run(run, out, name="Broken model", authors=[AUTHOR], onnx=False)
    assert not isinstance(info.value, UserInputError)  # exit code 1, not 2
    msg = str(info.value)
    assert "Reproduce test outputs from test inputs" in msg
    assert "elements disagree" in msg
    assert not out.exists()
    kept = failed_package_path(out)
    assert kept.name == "m.failed.bioimageio.zip" and kept.is_file()
    report = run_package_test(kept)
    assert not report.passed
    assert report.status != "passed"
    assert any("Reproduce test outputs" in c.name for c in report.failed_checks)


def _zip_with(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def test_inspect_and_loader_reject_what_is_not_a_model(tmp_path, packaged):
    not_zip = tmp_path / "a.zip"
    not_zip.write_text("hello")
    no_rdf = _zip_with(tmp_path / "b.zip", {"notes.txt": b"hi"})
    dataset = _zip_with(tmp_path / "c.zip", {"rdf.yaml": b"type: dataset\nformat_version: 0.3.0\nname: d\n"})
    old = _zip_with(tmp_path / "d.zip", {"rdf.yaml": b"type: model\nformat_version: 0.4.10\nname: d\n"})
    cases = [
        (tmp_path / "missing.zip", "does not exist"),
        (not_zip, "not a zip file"),
        (no_rdf, "no rdf.yaml"),
        (dataset, "not a model"),
    ]
    for path, match in cases:
        with pytest.raises(ModelLoadError, match=match):
            inspect_zip(path)
        with pytest.raises(ModelLoadError, match=match):
            read_package(path)
    with pytest.raises(ModelLoadError, match=r"format 0\.4\.10"):
        read_package(old)


def test_corrupt_zip(tmp_path, packaged):
    _, out, _ = packaged
    data = bytearray(out.read_bytes())
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(bytes(data[: len(data) // 2]))
    # flip bytes inside the (stored/deflated) weights so that the CRC check fails
    with zipfile.ZipFile(out) as zf:
        info = zf.getinfo("weights.pt")
    flipped = bytearray(data)
    start = info.header_offset + 30 + len(info.filename) + 200
    for i in range(start, start + 64):
        flipped[i] ^= 0xFF
    crc = tmp_path / "crc.zip"
    crc.write_bytes(bytes(flipped))
    for path in (truncated, crc):
        with pytest.raises(ModelLoadError, match=r"corrupt|not a zip"):
            inspect_zip(path)
        with pytest.raises(ModelLoadError, match=r"corrupt|not a zip"):
            read_package(path, "pytorch_state_dict")


def test_loader_checks_sha256(tmp_path, packaged):
    _, out, _ = packaged
    with zipfile.ZipFile(out) as zf:
        files = {n: zf.read(n) for n in zf.namelist()}
    state = torch.load(io.BytesIO(files["weights.pt"]), weights_only=True)
    state = {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}
    buf = io.BytesIO()
    torch.save(state, buf)
    files["weights.pt"] = buf.getvalue()
    tampered = _zip_with(tmp_path / "t.zip", files)
    with pytest.raises(ModelLoadError, match="sha256"):
        read_package(tampered, "pytorch_state_dict")
    rdf = yaml.safe_load(files["rdf.yaml"])
    rdf["weights"]["pytorch_state_dict"]["sha256"] = hashlib.sha256(files["weights.pt"]).hexdigest()
    files["rdf.yaml"] = yaml.safe_dump(rdf).encode()
    fixed = _zip_with(tmp_path / "f.zip", files)
    assert read_package(fixed, "pytorch_state_dict").weights_format == "pytorch_state_dict"
