"""Real images built and run with podman (or docker), the way Grand Challenge runs them.

The chain is the real one: train a few steps on simulated structured-noise data, package the run
as a bioimage.io zip, ``challenge build`` a context from it, build the image, run it with
``--network=none --read-only`` and a read-only ``/input`` as the image's non-root user on inputs
shaped like both tracks (odd sizes, int16 with negative values, a 3D unstructured sample), and
check every output. Skipped when no engine exists; CI installs podman (scripts/setup-podman.sh).

The base image and the dependency layers are cached in ``~/.cache/ai4life-kit/containers`` (or
``$AI4LIFE_KIT_CONTAINER_CACHE``): a first run costs about 3 minutes, later ones well under one.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile

from ai4life_kit.challenge import ctest, runner
from ai4life_kit.challenge.base_image import ensure_base_image
from ai4life_kit.challenge.context import render_context
from ai4life_kit.challenge.contract import OUTPUT_DIR, TRACKS, check_output
from ai4life_kit.challenge.ctest import build_context_image
from ai4life_kit.challenge.deps import find_torch_wheel, pinned_requirements
from ai4life_kit.challenge.engine import build_image, find_engine, run_container
from ai4life_kit.challenge.save import save_context_image
from test_challenge_helpers import write_stack

pytestmark = pytest.mark.container

REPO = Path(__file__).resolve().parents[1]
STRUCT = TRACKS["structured"].input_dir
UNSTRUCT = TRACKS["unstructured"].input_dir
IMAGE_UID = 10001


@pytest.fixture(scope="module")
def engine():
    found = find_engine()
    if found is None:
        pytest.skip("no container engine: no docker daemon and no podman (CI installs it: scripts/setup-podman.sh)")
    return found


@pytest.fixture(scope="module")
def trained_package(tmp_path_factory) -> Path:
    """train -> package: a structN2V model trained for a few steps on simulated row-noise stacks."""
    from ai4life_kit.config import parse_spec
    from ai4life_kit.export import package_run
    from ai4life_kit.simulate import add_noise, simulate_ground_truth
    from ai4life_kit.training import train

    root = tmp_path_factory.mktemp("chain")
    rng = np.random.default_rng(3)
    noisy = np.stack(
        [add_noise(simulate_ground_truth((96, 96), rng, peak=800.0), rng, structured_noise="row") for _ in range(4)]
    )
    tifffile.imwrite(root / "noisy.tif", noisy, metadata={"axes": "IYX"})
    spec = parse_spec(
        {
            "name": "ci-structn2v",
            "algorithm": {"name": "structn2v", "n2v2": True, "struct_mask": {"axis": "x", "span": 5}},
            "model": {"depth": 2, "width": 16},
            "data": {"dims": 2, "axes": "SYX", "patch_size": [32, 32], "val_fraction": 0.25},
            "training": {"epochs": 1, "steps_per_epoch": 10, "batch_size": 8, "val_patches": 8},
        },
        "container test",
    )
    run_dir = train(spec, [root / "noisy.tif"], None, root / "run", device="cpu", progress=False)
    result = package_run(run_dir, root / "ci-structn2v.bioimageio.zip", authors=["CI"], onnx=False, run_test=False)
    return Path(result.path)


@pytest.fixture(scope="module")
def image(engine, trained_package, tmp_path_factory):
    """The submission context, built into an image (cached layers make rebuilds cheap)."""
    ctx = render_context([trained_package], "structured", tmp_path_factory.mktemp("sub") / "ci-submission")
    build_context_image(engine, ctx, print)
    yield ctx
    engine.call("image", "prune", "-f", check=False)  # the previous build's layers, not the cache


def _inputs(root: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    cases = {
        f"{STRUCT}/hagen-like.tif": rng.integers(200, 4000, (3, 540, 540), dtype=np.uint16),
        f"{STRUCT}/odd.tiff": rng.normal(900, 200, (2, 257, 131)).astype(np.float32),
        f"{UNSTRUCT}/w2s-like.tif": rng.integers(-400, 2500, (2, 3, 540, 540), dtype=np.int16),
        f"{UNSTRUCT}/jump-odd.tif": rng.integers(0, 5000, (1, 4, 203, 97), dtype=np.uint16),
        f"{UNSTRUCT}/one-sample.tif": rng.integers(0, 3000, (3, 64, 80), dtype=np.uint16),
    }
    for rel, data in cases.items():
        write_stack(root / rel, data)
    return cases


def _empty_output(path: Path) -> Path:
    path.mkdir(parents=True)
    os.chmod(path, 0o777)  # as on Grand Challenge: only /output exists, the image's user writes in it
    return path


def test_image_meets_the_contract_on_both_tracks(engine, image, trained_package, tmp_path):
    inputs = _inputs(tmp_path / "input")
    out = _empty_output(tmp_path / "output")
    run = run_container(engine, image.image, input_dir=tmp_path / "input", output_dir=out, memory="4g")
    assert run.returncode == 0, run.output
    assert {"--network=none", "--read-only", "--memory=4g"} <= set(run.command)
    assert f"{(tmp_path / 'input').resolve()}:/input:ro" in run.command
    assert "all 5 case(s) written" in run.output
    written = sorted(p.name for p in (out / OUTPUT_DIR).iterdir())
    assert written == sorted(Path(rel).stem + ".tif" for rel in inputs)
    assert [p for p in out.rglob("*") if p.is_file() and p.parent != out / OUTPUT_DIR] == []

    # the same zip run on this machine gives the same numbers: the image runs that very model
    host_out = tmp_path / "host"
    models = runner.load_models([trained_package])
    assert runner.run_cases(models, tmp_path / "input", host_out, log=lambda m: None).exit_code == 0
    for rel, data in inputs.items():
        path = out / OUTPUT_DIR / (Path(rel).stem + ".tif")
        assert check_output(path, data.shape) == [], rel
        assert path.stat().st_uid == IMAGE_UID  # written by the non-root user
        result = tifffile.imread(path)
        expected = tifffile.imread(host_out / OUTPUT_DIR / path.name)
        np.testing.assert_allclose(result, expected, rtol=1e-4, atol=1e-3 * (float(np.ptp(expected)) + 1.0))


def test_image_writes_good_cases_and_fails_loudly_on_bad_ones(engine, image, tmp_path):
    write_stack(tmp_path / "input" / STRUCT / "good.tif", np.full((2, 96, 80), 700, np.uint16))
    write_stack(tmp_path / "input" / STRUCT / "four-d.tif", np.zeros((2, 1, 32, 32), np.uint16))
    (tmp_path / "input" / STRUCT / "corrupt.tif").write_bytes(b"II*\x00" + b"\x01" * 64)
    out = _empty_output(tmp_path / "output")
    run = run_container(engine, image.image, input_dir=tmp_path / "input", output_dir=out)
    assert run.returncode == 1, run.output
    assert "corrupt.tif FAILED" in run.output and "four-d.tif FAILED" in run.output
    assert "2 of 3 case(s) failed" in run.output
    assert check_output(out / OUTPUT_DIR / "good.tif", (2, 96, 80)) == []
    assert sorted(p.name for p in (out / OUTPUT_DIR).iterdir()) == ["good.tif"]


def test_image_without_any_input_exits_nonzero_and_says_where_it_looked(engine, image, tmp_path):
    (tmp_path / "input" / "images").mkdir(parents=True)
    out = _empty_output(tmp_path / "output")
    run = run_container(engine, image.image, input_dir=tmp_path / "input", output_dir=out)
    assert run.returncode == 2, run.output
    assert "no .tif/.tiff input found in /input/images/image-stack-structured-noise" in run.output


def test_challenge_test_and_save_commands(engine, image, tmp_path):
    report = ctest.run_context_test(image.path, log=print)
    assert report.ok, report.to_dict()
    assert report.mode == engine.name and report.image_size_bytes > 100e6
    assert [c.name for c in report.cases] == [
        "structured/stack-540.tif",
        "structured/stack-odd.tiff",
    ] and all(c.seconds and c.seconds > 0 for c in report.cases)
    saved = save_context_image(image.path, tmp_path / "ci-submission.tar.gz", load_check=True, log=print)
    assert saved.archive.is_file() and saved.loaded and saved.layers >= 5
    assert saved.image_id == engine.image_info(image.image)[0]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:
        pass


def _serve(folder: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    """A loopback index; a fixed port when free, so the build argument (and the layer cache) stay the same."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 38917), handler)
    except OSError:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/simple"


def test_top_level_dockerfile_builds_the_kit_image(engine, trained_package, tmp_path):
    """The kit's own image (train/predict/package). torch comes from a local CPU wheel served on a
    loopback index: the default (PyPI's CUDA build) is gigabytes, fine on a GPU machine, not in CI."""
    torch_pin = next(r for r in pinned_requirements(["torch"]) if r.startswith("torch=="))
    wheel = find_torch_wheel(torch_pin)
    if wheel is None or engine.name != "podman":
        pytest.skip("needs a local torch CPU wheel (pip find-links) and podman's host-network builds")
    (tmp_path / "index" / "simple" / "torch").mkdir(parents=True)
    try:
        os.link(wheel, tmp_path / "index" / wheel.name)
    except OSError:
        shutil.copy(wheel, tmp_path / "index" / wheel.name)
    quoted = wheel.name.replace("+", "%2B")
    (tmp_path / "index" / "simple" / "torch" / "index.html").write_text(f'<a href="/{quoted}">{wheel.name}</a>\n')
    server, url = _serve(tmp_path / "index")
    try:
        base = ensure_base_image(engine, print)
        seconds = build_image(
            engine, REPO, "ai4life-kit:ci", print, base_image=base, build_args={"TORCH_INDEX_URL": url},
            log_file=tmp_path / "build.log",
        )  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()
    print(f"kit image built in {seconds:.0f} s, {engine.image_info('ai4life-kit:ci')[1] / 1e6:.0f} MB")
    models = tmp_path / "models"  # readable by the image's user (pytest's folders are 0700)
    models.mkdir(mode=0o755)
    shutil.copy(trained_package, models / trained_package.name)
    os.chmod(models / trained_package.name, 0o644)
    ran = engine.call(
        "run", "--rm", "--network=none", "--read-only", "--tmpfs=/tmp:rw,mode=1777", "-v", f"{models}:/models:ro",
        engine.ref("ai4life-kit:ci"), "challenge", "run", "--self-test", "-m", f"/models/{trained_package.name}",
    )  # fmt: skip
    assert "self-test passed" in ran.stdout
    code = (
        "import json, torch, bioimageio.core, ai4life_kit as kit; "
        "print(json.dumps([torch.__version__, kit.__version__]))"
    )
    probe = engine.call(
        "run", "--rm", "--network=none", "--entrypoint", "python", engine.ref("ai4life-kit:ci"), "-c", code
    )  # fmt: skip
    versions = json.loads(probe.stdout.strip().splitlines()[-1])
    assert versions[0].endswith("+cpu") and versions[1] == "0.1.0"
    specs = engine.call("run", "--rm", "--network=none", "--entrypoint", "ls", engine.ref("ai4life-kit:ci"),
                        "/opt/ai4life-kit/model_specs").stdout.split()  # fmt: skip
    assert {"mdc24-hagen-actin.yaml", "mdc24-jump.yaml", "mdc24-support.yaml", "mdc24-w2s.yaml"} <= set(specs)


def _trained_2025_package(root: Path, challenge: str) -> Path:
    """simulate -> train -> package, as a participant of ``challenge`` would (a few steps only)."""
    from ai4life_kit.config import load_spec
    from ai4life_kit.export import package_run
    from ai4life_kit.training import train

    if challenge == "cidc25":  # space-time N2V2 on a simulated two-photon video
        from ai4life_kit.simulate.calcium import simulate_calcium_dataset

        sim = simulate_calcium_dataset(root / "sim", n=1, shape=(32, 64, 64), seed=5)
        spec, data, target = load_spec(REPO / "model_specs" / "cidc25-n2v2-st.yaml"), sim["noisy"], None
        spec.data.patch_size = [16, 32, 32]
    else:  # MDC25: supervised CARE on noisy / clean pairs
        from ai4life_kit.simulate import simulate_dataset

        sim = simulate_dataset(root / "sim", shape=(96, 96), n=2, seed=6)
        spec, data, target = load_spec(REPO / "model_specs" / "care-2d.yaml"), sim["noisy"], sim["gt"]
        spec.data.patch_size = [32, 32]
    spec.model.width = 8
    spec.training.epochs, spec.training.steps_per_epoch = 1, 4
    spec.training.batch_size, spec.training.val_patches = 2, 4
    run = train(spec, data, target, root / "run", device="cpu", progress=False)
    out = root / f"ci-{challenge}.bioimageio.zip"
    return Path(package_run(run, out, authors=["CI"], onnx=False, run_test=False).path)


@pytest.mark.parametrize("challenge", ["cidc25", "mdc25"])
def test_a_2025_challenge_image_runs_its_contract(engine, tmp_path, challenge):
    """The 2025 challenges' images: inputs found through inputs.json, outputs in that challenge's folder."""
    from ai4life_kit.challenge.contract import CHALLENGES

    package = _trained_2025_package(tmp_path, challenge)
    ctx = render_context([package], None, tmp_path / f"ci-{challenge}", challenge=challenge)
    report = ctest.run_context_test(ctx.path, log=print)
    assert report.ok, report.to_dict()
    assert report.mode == engine.name
    track = next(iter(CHALLENGES[challenge].tracks.values()))
    outputs = sorted((ctx.path / "test" / "output" / track.output_dir).glob("*.tif"))
    assert [p.name for p in outputs] == sorted(
        c["path"].split("/")[-1].rsplit(".", 1)[0] + ".tif" for c in ctx.info["test_cases"]
    )
    for case, out in zip(sorted(ctx.info["test_cases"], key=lambda c: c["path"]), outputs, strict=True):
        assert list(tifffile.imread(out).shape) == case["shape"]  # a video keeps its T, Y, X
    engine.call("image", "rm", "-f", ctx.image, check=False)
