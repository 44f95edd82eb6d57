"""``ai4life-kit package`` and ``ai4life-kit validate`` as a user runs them (exit codes, messages)."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import yaml

from ai4life_kit.simulate import simulate_dataset
from ai4life_kit.training import train
from kit_helpers import invoke, small_spec


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run directory from a very short real N2V2 training (2D, tiny U-Net)."""
    root = tmp_path_factory.mktemp("cli")
    sim = simulate_dataset(root / "sim", shape=(96, 96), n=2, seed=1)
    spec = small_spec(
        "n2v2", 2, model__width=8, training__epochs=1, training__steps_per_epoch=5, training__batch_size=8
    )
    run = train(spec, [str(p) for p in sim["noisy"]], None, root / "run", device="cpu", progress=False)
    return root, run


@pytest.fixture(scope="module")
def package(trained):
    root, run = trained
    out = root / "cli-model.bioimageio.zip"
    result = invoke(
        "package",
        run,
        "--out",
        out,
        "--name",
        "CLI N2V2 model",
        "--author",
        "Ada Lovelace",
        "--author",
        "Charles Babbage",
        "--github-user",
        "ada-lovelace-test",
    )
    return out, result


def test_package_command_writes_a_tested_zip(package):
    out, result = package
    assert result.exit_code == 0, result.output + result.stderr
    assert out.is_file()
    assert "Packaged" in result.stdout and "bioimageio test passed" in result.stdout
    with zipfile.ZipFile(out) as zf:
        rdf = yaml.safe_load(zf.read("rdf.yaml"))
    assert [a["name"] for a in rdf["authors"]] == ["Ada Lovelace", "Charles Babbage"]


def test_validate_command_prints_a_readable_summary(package):
    out, _ = package
    result = invoke("validate", out, "--verbose")
    assert result.exit_code == 0, result.output + result.stderr
    assert result.stdout.startswith("PASSED: CLI N2V2 model")
    assert "Reproduce test outputs from test inputs (torchscript)" in result.stdout
    assert "bioimageio.core 0.11" in result.stdout


def test_validate_shows_the_failing_check_and_its_numbers(package, tmp_path):
    """A package whose test output does not match what the weights produce."""
    out, _ = package
    with zipfile.ZipFile(out) as zf:
        files = {n: zf.read(n) for n in zf.namelist()}
    expected = np.load(io.BytesIO(files["test_output.npy"]))
    buf = io.BytesIO()
    np.save(buf, expected + 50.0)
    files["test_output.npy"] = buf.getvalue()
    rdf = yaml.safe_load(files["rdf.yaml"])
    rdf["outputs"][0]["test_tensor"]["sha256"] = hashlib.sha256(files["test_output.npy"]).hexdigest()
    files["rdf.yaml"] = yaml.safe_dump(rdf, sort_keys=False).encode()
    broken = tmp_path / "broken.bioimageio.zip"
    with zipfile.ZipFile(broken, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    result = invoke("validate", broken)
    assert result.exit_code == 1
    assert result.stdout.startswith("FAILED")
    assert "x Reproduce test outputs from test inputs (pytorch_state_dict)" in result.stdout
    assert "elements disagree with expected values" in result.stdout
    assert "Max absolute difference" in result.stdout  # the numbers, not just "failed"
    assert "check 'Reproduce test outputs" in result.stderr


def test_existing_output_without_overwrite(package, trained):
    out, _ = package
    _, run = trained
    before = out.read_bytes()
    result = invoke("package", run, "--out", out, "--author", "Ada Lovelace")
    assert result.exit_code == 2
    assert "already exists" in result.stderr and "--overwrite" in result.stderr
    assert out.read_bytes() == before


def test_overwrite_replaces_the_package(trained, tmp_path):
    _, run = trained
    out = tmp_path / "m.bioimageio.zip"
    out.write_bytes(b"old")
    result = invoke("package", run, "--out", out, "--author", "Ada Lovelace", "--no-onnx", "--overwrite")
    assert result.exit_code == 0, result.stderr
    assert "weights: pytorch_state_dict, torchscript)" in result.stdout
    assert "--github-user" in result.stderr  # the note about upload readiness
    assert zipfile.is_zipfile(out)


def test_run_dir_without_checkpoint(tmp_path, trained):
    _, run = trained
    broken = tmp_path / "unfinished"
    broken.mkdir()
    for name in ("spec.yaml", "normalization.json"):
        (broken / name).write_bytes((run / name).read_bytes())
    result = invoke("package", broken, "--out", tmp_path / "m.bioimageio.zip", "--author", "Ada Lovelace")
    assert result.exit_code == 2
    assert "best.pt does not exist" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_validate_rejects_files_that_are_not_model_zips(tmp_path):
    not_zip = tmp_path / "notes.zip"
    not_zip.write_text("not a zip")
    no_model = tmp_path / "data.zip"
    with zipfile.ZipFile(no_model, "w") as zf:
        zf.writestr("image.tif", b"...")
    corrupt = tmp_path / "corrupt.zip"
    with zipfile.ZipFile(corrupt, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("rdf.yaml", "type: model\n" * 200)
    data = bytearray(corrupt.read_bytes())
    data[60:80] = b"\xff" * 20
    corrupt.write_bytes(bytes(data))
    for path, message in [
        (tmp_path / "missing.zip", "does not exist"),
        (not_zip, "not a zip file"),
        (no_model, "no rdf.yaml"),
        (corrupt, "corrupt"),
    ]:
        result = invoke("validate", path)
        assert result.exit_code == 2, (path, result.stdout, result.stderr)
        assert message in result.stderr
        assert result.stderr.startswith("Error: ")


def test_package_and_validate_need_no_heavy_imports_for_help():
    code = (
        "import sys; import ai4life_kit.cli.package; "
        "heavy = [m for m in ('torch', 'bioimageio', 'numpy') if m in sys.modules]; assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
