"""The challenge entry point without a container: contract, channels, failures, exit codes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from ai4life_kit.challenge import runner
from ai4life_kit.challenge.contract import OUTPUT_DIR, TRACKS, axes_for, check_output, find_cases
from ai4life_kit.cli.app import app
from ai4life_kit.errors import DataError, OutputExistsError, UserInputError
from test_challenge_helpers import FakeModel, make_package, write_stack

STRUCT = TRACKS["structured"].input_dir
UNSTRUCT = TRACKS["unstructured"].input_dir
cli = CliRunner()


def _rng() -> np.random.Generator:
    return np.random.default_rng(7)


def _both_tracks(root: Path) -> dict[str, np.ndarray]:
    rng = _rng()
    inputs = {
        f"{STRUCT}/a.tif": rng.integers(0, 4000, (3, 40, 50), dtype=np.uint16),
        f"{STRUCT}/b.tiff": rng.normal(500, 50, (2, 33, 47)).astype(np.float32),
        f"{UNSTRUCT}/c.tif": rng.integers(-300, 3000, (2, 3, 40, 41), dtype=np.int16),
        f"{UNSTRUCT}/d.tif": rng.integers(0, 60000, (1, 3, 20, 30), dtype=np.uint16),
    }
    for rel, data in inputs.items():
        write_stack(root / rel, data)
    return inputs


def _run_cli(model: Path, input_root: Path, output_root: Path):
    args = ["challenge", "run", "-m", str(model), "--input-root", str(input_root), "--output-root", str(output_root)]
    return cli.invoke(app, args)


def _out(root: Path, rel: str) -> Path:
    return root / OUTPUT_DIR / (Path(rel).stem + ".tif")


def test_both_tracks_several_files_keep_shape_scale_and_contract(tmp_path):
    inputs = _both_tracks(tmp_path / "in")
    model = FakeModel(n_channels=1, offset=1.0)
    report = runner.run_cases([model], tmp_path / "in", tmp_path / "out", log=lambda m: None)
    assert report.exit_code == 0 and len(report.results) == 4
    for rel, data in inputs.items():
        out = _out(tmp_path / "out", rel)
        assert check_output(out, data.shape) == []
        written = tifffile.imread(out)
        assert written.dtype == np.float32 and written.shape == data.shape
        # input intensity units: exactly what the model returned, no rescaling, negatives kept
        np.testing.assert_allclose(written, data.astype(np.float32) * 0.5 + 1.0, rtol=1e-6)
    assert tifffile.imread(_out(tmp_path / "out", f"{UNSTRUCT}/c.tif")).min() < 0
    # channel-wise: the 1-channel model saw 2D planes of each channel, never the C axis
    assert {axes for _, axes, _ in model.calls} == {"SYX"}
    assert sorted(p.name for p in (tmp_path / "out" / OUTPUT_DIR).iterdir()) == ["a.tif", "b.tif", "c.tif", "d.tif"]


def test_outputs_have_a_resolution_unit_grand_challenge_accepts(tmp_path):
    write_stack(tmp_path / "in" / STRUCT / "x.tif", np.ones((2, 16, 16), np.uint16))
    runner.run_cases([FakeModel()], tmp_path / "in", tmp_path / "out", log=lambda m: None)
    with tifffile.TiffFile(tmp_path / "out" / OUTPUT_DIR / "x.tif") as tif:
        assert tif.pages[0].tags["ResolutionUnit"].value in (2, 3)


def test_empty_input_folder_is_a_clear_error_with_exit_code_2(tmp_path):
    (tmp_path / "in" / STRUCT).mkdir(parents=True)
    (tmp_path / "in" / STRUCT / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"no \.tif/\.tiff input found in .*structured-noise and .*unstructured-noise"):
        runner.run_cases([FakeModel()], tmp_path / "in", tmp_path / "out")
    pkg = make_package(tmp_path / "m.zip")
    res = _run_cli(pkg, tmp_path / "in", tmp_path / "o")
    assert res.exit_code == 2
    assert "no .tif/.tiff input found" in res.stderr and "notes.txt" in res.stderr


def test_missing_input_root_is_an_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        runner.run_cases([FakeModel()], tmp_path / "nope", tmp_path / "out")


def test_corrupt_tiff_among_good_ones_writes_the_good_ones_and_fails(tmp_path):
    inputs = _both_tracks(tmp_path / "in")
    (tmp_path / "in" / STRUCT / "broken.tif").write_bytes(b"II*\x00garbage" * 10)
    lines: list[str] = []
    report = runner.run_cases([FakeModel()], tmp_path / "in", tmp_path / "out", log=lines.append)
    assert report.exit_code == 1
    assert [r.case.path.name for r in report.failed] == ["broken.tif"]
    assert "not a readable TIFF" in report.failed[0].error
    for rel, data in inputs.items():
        assert check_output(_out(tmp_path / "out", rel), data.shape) == []
    assert not (tmp_path / "out" / OUTPUT_DIR / "broken.tif").exists()
    assert any("1 of 5 case(s) failed: broken.tif" in line for line in lines)
    summary = json.loads(lines[-1].removeprefix(runner.SUMMARY_PREFIX))
    assert summary["failed"] == 1 and summary["written"] == 4


def test_corrupt_tiff_via_cli_exits_1_and_names_the_case(tmp_path):
    write_stack(tmp_path / "in" / STRUCT / "good.tif", np.ones((2, 70, 70), np.uint16) * 100)
    (tmp_path / "in" / STRUCT / "bad.tif").write_bytes(b"nope")
    pkg = make_package(tmp_path / "m.zip")
    res = _run_cli(pkg, tmp_path / "in", tmp_path / "o")
    assert res.exit_code == 1
    assert "bad.tif FAILED" in res.stderr and "1 of 2 case(s) failed: bad.tif" in res.stderr
    assert check_output(tmp_path / "o" / OUTPUT_DIR / "good.tif", (2, 70, 70)) == []


@pytest.mark.parametrize(
    ("folder", "shape", "expected"),
    [
        (STRUCT, (2, 1, 16, 16), r"structured track expects \(S, Y, X\) stacks \(3D or 2D\)"),
        (UNSTRUCT, (2, 2, 2, 16, 16), r"unstructured track expects \(S, C, Y, X\) stacks \(4D or 3D or 2D\)"),
    ],
)
def test_unexpected_dimensionality_fails_that_case_only(tmp_path, folder, shape, expected):
    write_stack(tmp_path / "in" / folder / "odd.tif", np.zeros(shape, np.uint16))
    write_stack(tmp_path / "in" / STRUCT / "fine.tif", np.zeros((1, 16, 16), np.uint16))
    report = runner.run_cases([FakeModel()], tmp_path / "in", tmp_path / "out", log=lambda m: None)
    assert report.exit_code == 1
    (failed,) = report.failed
    assert failed.case.path.name == "odd.tif"
    assert f"shape {shape}" in failed.error
    assert re.search(expected, failed.error)
    assert (tmp_path / "out" / OUTPUT_DIR / "fine.tif").is_file()


def test_axes_by_track_and_dimensionality():
    assert axes_for(TRACKS["structured"], (3, 8, 8)) == "SYX"
    assert axes_for(TRACKS["structured"], (8, 8)) == "YX"
    assert axes_for(TRACKS["unstructured"], (2, 3, 8, 8)) == "SCYX"
    assert axes_for(TRACKS["unstructured"], (3, 8, 8)) == "CYX"
    with pytest.raises(DataError, match=r"\(8,\) \(1D\)"):
        axes_for(TRACKS["unstructured"], (8,))


def test_multichannel_model_gets_all_channels_at_once(tmp_path):
    write_stack(tmp_path / "in" / UNSTRUCT / "x.tif", np.ones((2, 4, 24, 24), np.uint16))
    model = FakeModel(n_channels=4)
    report = runner.run_cases([model], tmp_path / "in", tmp_path / "out", log=lambda m: None)
    assert report.exit_code == 0
    assert [(shape, axes) for shape, axes, _ in model.calls] == [((2, 4, 24, 24), "SCYX")]


def test_per_channel_models_each_get_their_channel(tmp_path):
    data = np.stack([np.full((2, 24, 24), 10 * (c + 1), np.uint16) for c in range(3)], axis=1)
    write_stack(tmp_path / "in" / UNSTRUCT / "x.tif", data)
    models = [FakeModel(offset=float(c)) for c in range(3)]
    report = runner.run_cases(models, tmp_path / "in", tmp_path / "out", log=lambda m: None)
    assert report.exit_code == 0
    out = tifffile.imread(tmp_path / "out" / OUTPUT_DIR / "x.tif")
    for c in range(3):
        np.testing.assert_allclose(out[:, c], 0.5 * 10 * (c + 1) + c)
        assert models[c].calls[0][:2] == ((2, 24, 24), "SYX")


def test_channel_mismatch_fails_the_case_with_the_counts(tmp_path):
    write_stack(tmp_path / "in" / UNSTRUCT / "x.tif", np.ones((1, 3, 24, 24), np.uint16))
    report = runner.run_cases([FakeModel(n_channels=4)], tmp_path / "in", tmp_path / "out", log=lambda m: None)
    assert "has 3 channel(s) but the model expects 4" in report.failed[0].error
    report = runner.run_cases([FakeModel(), FakeModel()], tmp_path / "in", tmp_path / "out2", log=lambda m: None)
    assert "has 3 channel(s) but 2 per-channel models were given" in report.failed[0].error


def test_samples_are_denoised_in_chunks_with_identical_results():
    data = _rng().normal(0, 1, (7, 2, 16, 16)).astype(np.float32)
    whole = runner.denoise([FakeModel()], data, "SCYX")
    model = FakeModel()
    chunked = runner.denoise([model], data, "SCYX", max_chunk_pixels=3 * 16 * 16 * 2)
    np.testing.assert_array_equal(whole, chunked)
    assert [shape for shape, _, _ in model.calls] == [(3, 16, 16)] * 2 * 2 + [(1, 16, 16)] * 2


def test_options_reach_the_model():
    model = FakeModel()
    runner.denoise([model], np.zeros((1, 8, 8), np.float32), "SYX", tta=True, batch_size=2)
    assert model.calls[0][2] == {"tta": True, "batch_size": 2}


def test_model_failure_and_nan_output_fail_only_their_case(tmp_path):
    write_stack(tmp_path / "in" / STRUCT / "a.tif", np.ones((1, 16, 16), np.uint16))
    write_stack(tmp_path / "in" / STRUCT / "b.tif", np.ones((1, 20, 20), np.uint16))
    errors: list[str] = []
    report = runner.run_cases(
        [FakeModel(fail_on_shape=(20, 20))],
        tmp_path / "in",
        tmp_path / "out",
        log=lambda m: None,
        log_error=errors.append,
    )
    assert [r.case.path.name for r in report.failed] == ["b.tif"]
    assert report.failed[0].error == "RuntimeError: simulated model failure"
    assert any("Traceback" in e for e in errors)  # unexpected errors keep their traceback in the log

    class NaNModel(FakeModel):
        def predict(self, array, axes, **options):
            return np.full(array.shape, np.nan, np.float32)

    report = runner.run_cases([NaNModel()], tmp_path / "in", tmp_path / "o2", log=lambda m: None)
    assert all("NaN/Inf" in r.error for r in report.failed) and report.exit_code == 1


def test_existing_outputs_need_overwrite(tmp_path):
    write_stack(tmp_path / "in" / STRUCT / "a.tif", np.ones((1, 16, 16), np.uint16))
    runner.run_cases([FakeModel()], tmp_path / "in", tmp_path / "out", log=lambda m: None)
    with pytest.raises(OutputExistsError, match=r"a\.tif already exists"):
        runner.run_cases([FakeModel()], tmp_path / "in", tmp_path / "out", log=lambda m: None)
    report = runner.run_cases([FakeModel(offset=5.0)], tmp_path / "in", tmp_path / "out", overwrite=True, log=print)
    assert report.exit_code == 0
    assert tifffile.imread(tmp_path / "out" / OUTPUT_DIR / "a.tif").max() == pytest.approx(5.5)


def test_colliding_output_names_are_refused(tmp_path):
    write_stack(tmp_path / "in" / STRUCT / "a.tif", np.ones((1, 8, 8), np.uint16))
    write_stack(tmp_path / "in" / UNSTRUCT / "a.tiff", np.ones((1, 1, 8, 8), np.uint16))
    with pytest.raises(DataError, match=r"would both be written as a\.tif"):
        find_cases(tmp_path / "in")


def test_output_root_that_cannot_hold_folders_is_a_user_error(tmp_path):
    write_stack(tmp_path / "in" / STRUCT / "a.tif", np.ones((1, 8, 8), np.uint16))
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserInputError, match="cannot create the output folder"):
        runner.run_cases([FakeModel()], tmp_path / "in", tmp_path / "file", log=lambda m: None)


def test_check_output_reports_every_contract_breach(tmp_path):
    bad = tmp_path / "bad.tif"
    tifffile.imwrite(bad, np.full((3, 8, 8), np.nan, np.float64))  # tifffile default: unit NONE
    problems = check_output(bad, (1, 3, 8, 8))
    assert any("shape (3, 8, 8) != input shape (1, 3, 8, 8)" in p for p in problems)
    assert any("dtype float64" in p for p in problems)
    assert any("resolution unit 1" in p for p in problems)
    assert any("NaN/Inf" in p for p in problems)
    assert check_output(tmp_path / "missing.tif", (1,)) == ["missing.tif: missing"]


# -- with a real (small, random) package and the real Predictor ------------------------------------


def test_odd_540_and_int16_with_a_real_package_match_the_predictor(tmp_path):
    from ai4life_kit.prediction import Predictor

    rng = _rng()
    struct = rng.integers(0, 3000, (2, 540, 540), dtype=np.uint16)
    unstruct = rng.integers(-500, 2500, (1, 2, 131, 77), dtype=np.int16)
    write_stack(tmp_path / "in" / STRUCT / "s.tif", struct)
    write_stack(tmp_path / "in" / UNSTRUCT / "u.tif", unstruct)
    pkg = make_package(tmp_path / "m.zip")
    models = runner.load_models(runner.resolve_model_paths([pkg]))
    report = runner.run_cases(models, tmp_path / "in", tmp_path / "out", log=lambda m: None)
    assert report.exit_code == 0
    predictor = Predictor.from_bioimageio(pkg, device="cpu")
    out_s = tifffile.imread(tmp_path / "out" / OUTPUT_DIR / "s.tif")
    assert check_output(tmp_path / "out" / OUTPUT_DIR / "s.tif", struct.shape) == []
    np.testing.assert_allclose(out_s, predictor.predict(struct.astype(np.float32), "SYX"), rtol=1e-5, atol=1e-3)
    out_u = tifffile.imread(tmp_path / "out" / OUTPUT_DIR / "u.tif")
    assert out_u.shape == unstruct.shape and out_u.dtype == np.float32
    for c in range(2):
        expected = predictor.predict(unstruct[:, c].astype(np.float32), "SYX")
        np.testing.assert_allclose(out_u[:, c], expected, rtol=1e-5, atol=1e-3)


def test_model_paths_folders_and_missing_models(tmp_path):
    (tmp_path / "models").mkdir()
    make_package(tmp_path / "models" / "c1-b.zip")
    make_package(tmp_path / "models" / "c0-a.zip")
    assert [p.name for p in runner.resolve_model_paths([tmp_path / "models"])] == ["c0-a.zip", "c1-b.zip"]
    with pytest.raises(UserInputError, match=r"nope\.zip does not exist"):
        runner.resolve_model_paths([tmp_path / "nope.zip"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match=r"holds no \.zip"):
        runner.resolve_model_paths([tmp_path / "empty"])
    multi = make_package(tmp_path / "multi.zip", n_channels=2)
    with pytest.raises(UserInputError, match=r"each must have 1 channel; not: multi.zip \(2\)"):
        runner.load_models([tmp_path / "models" / "c0-a.zip", multi])


def test_run_without_model_outside_an_image_says_to_pass_model(tmp_path):
    if runner.DEFAULT_MODEL_DIR.exists():
        pytest.skip("running inside a submission image")
    res = cli.invoke(app, ["challenge", "run", "--input-root", str(tmp_path)])
    assert res.exit_code == 2
    assert "/opt/app/model does not exist (outside a submission image, pass --model ZIP)" in res.stderr


def test_corrupt_model_zip_is_a_user_error(tmp_path):
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK\x03\x04 not really")
    res = cli.invoke(app, ["challenge", "run", "-m", str(bad), "--input-root", str(tmp_path)])
    assert res.exit_code == 2 and "bad.zip" in res.stderr


def test_self_test_checks_the_model_without_inputs(tmp_path):
    pkg = make_package(tmp_path / "m.zip", n_channels=2)
    res = cli.invoke(app, ["challenge", "run", "--self-test", "-m", str(pkg)])
    assert res.exit_code == 0, res.output
    assert "self-test passed: (2, 2, 75, 61) -> (2, 2, 75, 61) float32" in res.stdout


def test_entry_point_runs_with_only_the_image_dependencies(tmp_path):
    """What the image leaves out (scipy, matplotlib, bioimageio, ...) must not be imported by `run`."""
    write_stack(tmp_path / "in" / STRUCT / "a.tif", _rng().integers(0, 999, (1, 64, 64), dtype=np.uint16))
    pkg = make_package(tmp_path / "m.zip")
    script = textwrap.dedent(
        """
        import sys
        BLOCKED = ("scipy", "matplotlib", "bioimageio", "onnx", "onnxruntime", "skimage", "pandas", "xarray")

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"{name} is not in the submission image")

        sys.meta_path.insert(0, Block())
        sys.argv = ["ai4life-kit", *sys.argv[1:]]
        from ai4life_kit.cli.app import main
        main()
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, "challenge", "run", "-m", str(pkg), "--input-root", str(tmp_path / "in"),
         "--output-root", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert check_output(tmp_path / "out" / OUTPUT_DIR / "a.tif", (1, 64, 64)) == []
