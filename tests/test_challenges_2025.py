"""The 2025 challenges next to MDC24: one table, inputs.json, CIDC25's videos (frame by frame or space-time)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from ai4life_kit.challenge.contract import CHALLENGES, INPUTS_JSON, TRACKS, check_output, find_cases, get_challenge
from ai4life_kit.challenge.runner import load_models, run_cases
from ai4life_kit.errors import DataError, ModelLoadError, UserInputError
from ai4life_kit.prediction import Predictor
from test_challenge_helpers import make_package, write_stack

CALCIUM = CHALLENGES["cidc25"].tracks["calcium"]
UNSTRUCT = TRACKS["unstructured"]


def test_one_table_names_every_challenges_folders_and_layouts():
    assert set(CHALLENGES) == {"mdc24", "mdc25", "cidc25"}
    assert set(CHALLENGES["mdc24"].tracks) == {"structured", "unstructured"} and TRACKS is CHALLENGES["mdc24"].tracks
    assert CHALLENGES["mdc25"].tracks == {"unstructured": UNSTRUCT}  # MDC24's unstructured folders
    assert UNSTRUCT.output_dir == "images/image-stack-denoised"
    assert CALCIUM.input_dir == "images/stacked-neuron-images-with-noise"
    assert CALCIUM.output_dir == "images/stacked-neuron-images-with-reduced-noise"
    assert CALCIUM.axes_by_ndim == {3: "TYX"} and CALCIUM.temporal
    assert CHALLENGES["cidc25"].model_dims == (2, 3) and CHALLENGES["mdc25"].model_dims == (2,)
    with pytest.raises(UserInputError, match="unknown challenge 'mdc23'; use one of mdc24, mdc25, cidc25"):
        get_challenge("mdc23")


def _inputs_json(root: Path, entries: list[dict]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / INPUTS_JSON).write_text(json.dumps(entries))


def _entry(name: str, slug: str, rel: str) -> dict:
    return {"image": {"name": name}, "interface": {"slug": slug, "kind": "Image", "relative_path": rel}}


def test_inputs_json_finds_the_socket_and_ignores_other_interfaces(tmp_path):
    root = tmp_path / "input"
    write_stack(root / CALCIUM.input_dir / "00001.tif", np.zeros((4, 8, 8), np.int16))
    write_stack(root / CALCIUM.input_dir / "not-listed.tif", np.zeros((4, 8, 8), np.int16))
    _inputs_json(
        root,
        [
            _entry("00001.tif", CALCIUM.interface, CALCIUM.input_dir),
            {"interface": {"slug": "some-metadata", "kind": "Anything"}, "value": 3},
        ],
    )
    cases = find_cases(root, "cidc25")
    assert [(c.path.name, c.track.name) for c in cases] == [("00001.tif", "calcium")]  # listed files only
    with pytest.raises(DataError, match="lists no input of mdc25"):
        find_cases(root, "mdc25")
    _inputs_json(root, [_entry("missing.tif", CALCIUM.interface, CALCIUM.input_dir)])
    with pytest.raises(DataError, match=r"lists .*missing\.tif, which does not exist"):
        find_cases(root, "cidc25")
    (root / INPUTS_JSON).write_text("{not json")
    with pytest.raises(DataError, match="not readable JSON"):
        find_cases(root, "cidc25")


def test_without_inputs_json_the_known_folders_are_scanned(tmp_path):
    root = tmp_path / "input"
    write_stack(root / CALCIUM.input_dir / "v.tif", np.zeros((4, 8, 8), np.int16))
    write_stack(root / TRACKS["structured"].input_dir / "s.tif", np.zeros((2, 8, 8), np.uint16))
    assert [c.path.name for c in find_cases(root, "cidc25")] == ["v.tif"]
    assert [c.path.name for c in find_cases(root, "mdc24")] == ["s.tif"]
    with pytest.raises(DataError, match=r"no \.tif/\.tiff input found in .*image-stack-unstructured-noise \(mdc25\)"):
        find_cases(root, "mdc25")  # MDC25 has no structured track


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    root = tmp_path_factory.mktemp("pkgs")
    return {
        2: make_package(root / "frames.zip", mean=300.0, std=80.0),
        3: make_package(root / "spacetime.zip", mean=300.0, std=80.0, dims=3),
    }


def _video(root: Path, name: str, shape: tuple[int, ...]) -> tuple[Path, np.ndarray]:
    from ai4life_kit.simulate.calcium import simulate_calcium

    video = simulate_calcium(shape, seed=len(name)).noisy if len(shape) == 3 else np.zeros(shape, np.int16)
    return write_stack(root / CALCIUM.input_dir / name, video), video


@pytest.mark.parametrize("dims", [2, 3])
def test_cidc25_videos_are_denoised_frame_by_frame_or_over_space_and_time(tmp_path, packages, dims):
    root, out = tmp_path / "input", tmp_path / "output"
    _, video = _video(root, "v1.tif", (24, 40, 36))
    models = load_models([packages[dims]], "cpu", "cidc25")
    report = run_cases(models, root, out, challenge="cidc25", log=lambda m: None)
    assert report.exit_code == 0, [r.error for r in report.results]
    written = out / CALCIUM.output_dir / "v1.tif"
    assert check_output(written, video.shape) == []  # float32, the video's shape, resolution unit set
    predictor = Predictor.from_bioimageio(packages[dims], "cpu")
    # a 2D model sees frames as samples, a 3D one reads time as its third axis
    expected = predictor.predict(video.astype(np.float32), "SYX" if dims == 2 else "ZYX")
    np.testing.assert_allclose(tifffile.imread(written), expected, rtol=1e-5, atol=1e-3)


def test_cidc25_bad_inputs_fail_their_case_with_one_line(tmp_path, packages):
    root, out = tmp_path / "input", tmp_path / "output"
    _video(root, "short.tif", (2, 40, 36))  # fewer frames than the 3D model's temporal window (4)
    _video(root, "four-d.tif", (2, 3, 16, 16))
    models = load_models([packages[3]], "cpu", "cidc25")
    report = run_cases(models, root, out, challenge="cidc25", log=lambda m: None, log_error=lambda m: None)
    assert report.exit_code == 1
    errors = {r.case.path.name: r.error for r in report.results}
    assert "2 frame(s); the space-time model needs at least 4" in errors["short.tif"]
    assert "the calcium track expects (T, Y, X) stacks (3D)" in errors["four-d.tif"]
    assert all("\n" not in e for e in errors.values())


def test_model_dimensions_must_fit_the_challenge(packages, tmp_path):
    from kit_helpers import invoke

    with pytest.raises(ModelLoadError, match="is 3D; mdc25's stacks need a 2D model"):
        load_models([packages[3]], "cpu", "mdc25")
    result = invoke(
        "challenge", "build", packages[3], "--challenge", "mdc24", "--track", "structured", "--out", tmp_path / "c"
    )
    assert result.exit_code == 2 and "is 3D; mdc24's stacks need a 2D model" in result.stderr
    assert not (tmp_path / "c").exists()
    wrong = invoke(
        "challenge", "build", packages[2], "--challenge", "cidc25", "--track", "structured", "--out", tmp_path / "d"
    )
    assert wrong.exit_code == 2 and "unknown track 'structured' for cidc25" in wrong.stderr
    many = invoke("challenge", "build", packages[2], "--challenge", "mdc24", "--out", tmp_path / "e")
    assert many.exit_code == 2 and "choose one with --track" in many.stderr


@pytest.mark.parametrize(("challenge", "dims"), [("cidc25", 3), ("mdc25", 2)])
def test_a_2025_context_has_its_folders_inputs_json_and_entry_point(tmp_path, packages, challenge, dims):
    from ai4life_kit.challenge.context import render_context

    ctx = render_context([packages[dims]], None, tmp_path / f"sub-{challenge}", challenge=challenge, log=lambda m: None)
    track = next(iter(CHALLENGES[challenge].tracks.values()))
    assert ctx.challenge.name == challenge and ctx.track == track.name
    listed = json.loads((ctx.test_input / INPUTS_JSON).read_text())
    assert {e["interface"]["slug"] for e in listed} == {track.interface}
    assert [c.path.name for c in find_cases(ctx.test_input, challenge)] == [e["image"]["name"] for e in listed]
    dockerfile = (ctx.path / "Dockerfile").read_text()
    assert f'"--challenge", "{challenge}"' in dockerfile and "--self-test --model" in dockerfile
    readme = (ctx.path / "README.md").read_text()
    assert f"/output/{track.output_dir}/" in readme and track.interface in readme
    if challenge == "cidc25":
        videos = [tifffile.imread(c.path) for c in find_cases(ctx.test_input, challenge)]
        assert [v.dtype for v in videos] == [np.int16, np.int16] and [v.ndim for v in videos] == [3, 3]


def test_evaluate_stsnr_scores_videos_as_cidc25_does(tmp_path):
    from ai4life_kit.metrics_temporal import evaluate_video
    from ai4life_kit.simulate.calcium import simulate_calcium
    from kit_helpers import invoke

    sim = simulate_calcium((20, 32, 32), seed=4)
    write_stack(tmp_path / "gt" / "v.tif", sim.clean)
    write_stack(tmp_path / "pred" / "v.tif", sim.noisy.astype(np.float32))
    args = ["evaluate", tmp_path / "pred", "--gt", tmp_path / "gt", "--axes", "TYX", "--metric", "stsnr"]
    result = invoke(*args, "--alpha", "0.3", "--json", tmp_path / "s.json")
    assert result.exit_code == 0, result.stdout + result.stderr
    scores = json.loads((tmp_path / "s.json").read_text())
    expected = evaluate_video(sim.clean, sim.noisy.astype(np.float32), alpha=0.3)
    assert scores["metric"] == "stsnr" and scores["alpha"] == 0.3
    for key in ("stsnr", "spatial_snr", "temporal_snr", "psnr_p3_p97"):
        assert scores["mean"][key] == pytest.approx(expected[key], rel=1e-9)
    assert scores["mean"]["stsnr"] == pytest.approx(0.3 * expected["spatial_snr"] + 0.7 * expected["temporal_snr"])
    wrong = invoke("evaluate", tmp_path / "pred", "--gt", tmp_path / "gt", "--alpha", "0.3")
    assert wrong.exit_code == 2 and "add --metric stsnr" in wrong.stderr
    write_stack(tmp_path / "gt2" / "v.tif", np.ones((2, 20, 32, 32), np.float32))
    write_stack(tmp_path / "pred2" / "v.tif", np.ones((2, 20, 32, 32), np.float32))
    four = invoke("evaluate", tmp_path / "pred2", "--gt", tmp_path / "gt2", "--axes", "CTYX", "--metric", "stsnr")
    assert four.exit_code == 2 and "Traceback" not in four.stderr and "(T, Y, X)" in four.stderr


def test_predict_says_how_a_video_goes_through_a_space_time_model(tmp_path, packages):
    from kit_helpers import invoke

    path, video = _video(tmp_path / "in", "v.tif", (8, 40, 36))
    tifffile.imwrite(path, video, metadata={"axes": "TYX"})
    result = invoke("predict", packages[3], path, "--out", tmp_path / "den", "-q")
    assert result.exit_code == 2 and "read T as Z: --axes ZYX" in result.stderr
    again = invoke("predict", packages[3], path, "--out", tmp_path / "den", "--axes", "ZYX", "-q")
    assert again.exit_code == 0, again.stderr
    assert tifffile.imread(tmp_path / "den" / "v.tif").shape == video.shape
