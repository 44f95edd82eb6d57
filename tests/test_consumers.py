"""Packages in the runtimes their consumers really run: deepImageJ's engines, the BioEngine, ilastik, QuPath.

The fast tests check the pieces (the U-Net scripts to operators torch 2.0 knows, the rules, the
sample-tensor reader, the runtime cache). The ``consumers`` tests install each consumer's runtime
from PyPI on first use (several GB each, cached in ``~/.cache/ai4life-kit/runtimes``) and run real
packages there: a 2D N2V2 trained from a folder, a 3D residual CARE, a 3-channel N2V and a 2D
probabilistic CARE (one output tensor with channels ``mean`` and ``scale``).
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch.nn import functional as F

from ai4life_kit.config import parse_spec
from ai4life_kit.errors import Ai4LifeKitError
from ai4life_kit.export import consumer_jobs
from ai4life_kit.export import consumers as c
from ai4life_kit.export import runtimes as rt
from ai4life_kit.export.consumer_rules import engine_version, rules
from ai4life_kit.models.unet import UNet, Upsample2x
from kit_helpers import invoke, small_spec

# Operators that TorchScript files must not contain to load in libtorch 2.0 (added after 2.0, or
# only reachable through F.interpolate's other branches).
_TOO_NEW = ("_upsample_lanczos", "_aa", "upsample_nearest_exact")


def _all_ops(module: torch.nn.Module) -> set[str]:
    """Every operator the saved TorchScript file calls: its serialised code, which the loader compiles."""
    import io

    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buffer)
    with zipfile.ZipFile(buffer) as zf:
        code = "".join(zf.read(n).decode() for n in zf.namelist() if n.endswith(".py"))
    return {f"aten::{op}" for op in re.findall(r"(?:torch|ops\.aten)\.(\w+)\(", code)}


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("n2v2", [False, True])
def test_scripted_unet_uses_only_operators_old_engines_have(dims, n2v2):
    ops = _all_ops(UNet(dims=dims, depth=2, width=4, n2v2=n2v2).eval())
    assert f"aten::upsample_{'bilinear2d' if dims == 2 else 'trilinear3d'}" in ops
    assert not [op for op in ops if any(bad in op for bad in _TOO_NEW)], sorted(ops)
    assert not [op for op in ops if "interpolate" in op or "upsample_bicubic" in op]
    # control: the U-Net as it was (nn.Upsample) scripts every branch of F.interpolate
    old = UNet(dims=dims, depth=2, width=4, n2v2=n2v2).eval()
    old.upsample = torch.nn.Upsample(scale_factor=2.0, mode="bilinear" if dims == 2 else "trilinear")
    assert [op for op in _all_ops(old) if any(bad in op for bad in _TOO_NEW)]


@pytest.mark.parametrize("dims", [2, 3])
def test_upsample2x_is_exactly_interpolate(dims):
    x = torch.randn((2, 3) + (5, 7, 6)[-dims:])
    mode = "bilinear" if dims == 2 else "trilinear"
    expected = F.interpolate(x, scale_factor=2.0, mode=mode, align_corners=False)
    got = Upsample2x(dims)(x)
    assert got.shape == expected.shape
    assert torch.equal(got, expected)
    assert torch.equal(torch.jit.script(Upsample2x(dims))(x), expected)


def _pkg(rdf: dict, root: Path | None = None) -> consumer_jobs.PackageView:
    return consumer_jobs.PackageView(zip=Path("m.zip"), root=root or Path("."), rdf=rdf)


def _rdf(dims: int = 2, n_inputs: int = 1, pre: str = "fixed_zero_mean_unit_variance") -> dict:
    space = [{"type": "space", "id": a, "size": {"min": 68, "step": 4}} for a in ("z", "y", "x")[-dims:]]
    axes = [{"type": "batch"}, {"type": "channel", "channel_names": ["c0"]}, *space]
    tensor = {"id": "input", "axes": axes, "preprocessing": [{"id": pre, "kwargs": {}}], "sample_tensor": "s.tif"}
    out_axes = [{"type": "batch"}, {"type": "channel", "id": "channel", "channel_names": ["c0"]}, *space]
    return {
        "inputs": [dict(tensor, id=f"input{i}") for i in range(n_inputs)],
        "outputs": [{"id": "output", "axes": out_axes, "postprocessing": []}],
        "documentation": "README.md",
        "weights": {"torchscript": {"source": "w.pt"}, "onnx": {"source": "w.onnx"}},
        "config": {"deepimagej": {"allow_tiling": True}},
    }


def test_rules_accept_a_plain_package_and_name_what_each_consumer_refuses():
    for consumer in ("deepimagej", "ilastik", "qupath"):
        assert rules(consumer, _pkg(_rdf())).status == "passed"
    bad = rules("deepimagej", _pkg(_rdf(n_inputs=2, pre="softmax")))
    assert bad.status == "failed" and "2 inputs" in bad.detail and "'softmax'" in bad.detail
    assert "exactly one of each" in rules("ilastik", _pkg(_rdf(n_inputs=2))).detail
    no_tiling = _rdf()
    no_tiling["config"]["deepimagej"]["allow_tiling"] = False
    assert "allow_tiling" in rules("deepimagej", _pkg(no_tiling)).detail
    assert rules("qupath", _pkg(_rdf(dims=3))).status == "n/a"
    onnx_only = _rdf()
    del onnx_only["weights"]["torchscript"]
    assert "no TorchScript" in rules("qupath", _pkg(onnx_only)).detail


def test_deepimagej_engine_version_follows_the_major_version():
    rdf = _rdf()
    rdf["weights"]["torchscript"]["pytorch_version"] = "2.13.0"
    assert engine_version(_pkg(rdf)) == "2.0.0"
    rdf["weights"]["torchscript"]["pytorch_version"] = "1.10.0"
    assert engine_version(_pkg(rdf)) == "1.13.1"


@pytest.mark.parametrize(
    ("shape", "tiff_axes", "imagej", "dims"),
    [
        ((3, 40, 50), "CYX", True, 2),
        ((1, 40, 50), "CYX", True, 2),
        ((6, 40, 50), "ZYX", True, 3),
        ((2, 6, 40, 50), "CZYX", False, 3),
    ],
)
def test_sample_tensor_is_read_in_the_rdf_axis_order(tmp_path, shape, tiff_axes, imagej, dims):
    import tifffile

    data = np.random.default_rng(0).random(shape, dtype=np.float32)
    tifffile.imwrite(tmp_path / "s.tif", data, imagej=imagej, metadata={"axes": tiff_axes})
    rdf = _rdf(dims=dims)
    got = consumer_jobs.read_sample_tensor(_pkg(rdf, tmp_path), rdf["inputs"][0])
    n_c = shape[0] if tiff_axes.startswith("C") else 1
    assert got.shape == (1, n_c, *shape[-dims:])
    np.testing.assert_array_equal(got.reshape(-1), data.reshape(-1))


def test_deepimagej_tolerance_counts_every_pixel_past_it():
    expected = np.full((1, 1, 4, 4), 1000.0, np.float32)
    got = expected.copy()
    got[0, 0, 0, 0] += 0.2  # past 1.5e-4 + 1e-4 * 1000 = 0.10015
    got[0, 0, 1, 1] += 0.1  # within it
    probe = consumer_jobs.load_probe()
    result = probe._compare(got, expected)
    assert result["mismatched"] == 1 and not result["passed"]
    assert result["max_abs_diff"] == pytest.approx(0.2, rel=1e-3)
    got[0, 0, 2, 2] = np.nan
    assert probe._compare(got, expected)["mismatched"] == 2


def test_runtime_is_reused_only_with_a_matching_stamp(tmp_path, monkeypatch):
    runtime = c.RUNTIMES["deepimagej"]
    venv = runtime.path(tmp_path)
    calls: list[list[str]] = []

    def fake_run(cmd, **kwargs):
        calls.append([str(x) for x in cmd])
        if "venv" in cmd:  # python -m venv DIR
            (Path(cmd[-1]) / "bin").mkdir(parents=True)
            (Path(cmd[-1]) / "bin" / "python").touch()

        class Done:
            returncode = 0
            stderr = ""

        return Done()

    monkeypatch.setattr(rt.subprocess, "run", fake_run)
    python = c.ensure_runtime("deepimagej", tmp_path)
    assert python == venv / "bin" / "python"
    assert calls[-1][-len(runtime.requirements) :] == list(runtime.requirements)  # pip got the exact pins
    assert json.loads((venv / rt.STAMP).read_text())["requirements"] == list(runtime.requirements)
    calls.clear()
    assert c.ensure_runtime("deepimagej", tmp_path) == python and calls == []  # reused, nothing run
    (venv / rt.STAMP).write_text(json.dumps({"requirements": ["torch==9.9"]}))
    (venv / "leftover").touch()
    c.ensure_runtime("deepimagej", tmp_path)
    assert calls and not (venv / "leftover").exists()  # an outdated runtime is rebuilt from scratch


def test_a_failed_install_leaves_no_half_runtime(tmp_path, monkeypatch):
    def fake_run(cmd, **kwargs):
        if "venv" in cmd:
            Path(cmd[-1]).mkdir(parents=True)

        class Failed:
            returncode = 1 if "pip" in cmd else 0
            stderr = "ERROR: No matching distribution found for torch==2.0.1"

        return Failed()

    monkeypatch.setattr(rt.subprocess, "run", fake_run)
    with pytest.raises(Ai4LifeKitError, match=r"could not install the deepimagej runtime.*No matching distribution"):
        c.ensure_runtime("deepimagej", tmp_path)
    assert not c.RUNTIMES["deepimagej"].path(tmp_path).exists()


def test_validate_rejects_unknown_consumers_and_non_packages(tmp_path):
    missing = invoke("validate", tmp_path / "nope.bioimageio.zip", "--consumers")
    assert missing.exit_code == 2 and "does not exist" in missing.stderr
    (tmp_path / "m.zip").write_bytes(b"not a zip")
    assert invoke("validate", tmp_path / "m.zip", "--consumer", "ilastik").exit_code == 2


# -- real packages in the real runtimes ------------------------------------------------------------


def _runtime_or_skip(name: str) -> None:
    """Install a consumer runtime (once); in CI a failure fails the test, elsewhere it skips it."""
    try:
        c.ensure_runtime(name)
    except Ai4LifeKitError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"the {name} runtime cannot be installed here: {exc}")


@pytest.fixture(scope="module")
def installed_runtimes():
    for name in c.RUNTIMES:
        _runtime_or_skip(name)


def _train(root: Path, case: str) -> Path:
    from ai4life_kit.simulate import simulate_dataset

    spec = Path(__file__).resolve().parents[1] / "model_specs"
    if case == "n2v2-2d-folder":
        sim = simulate_dataset(root / "sim", shape=(160, 160), n=2, seed=31)
        args = [spec / "n2v2-2d.yaml", "--data", sim["noisy"][0].parent, "--patch-size", "32,32"]
        # 24 steps, not fewer: the seam control below needs a network whose output depends on its
        # context (after 6 steps, seams from a too-small halo were within tolerance: 0 to 40 of
        # 270400 pixels off; after 24, about 10,000).
        args += ["--epochs", "1", "--steps-per-epoch", "24", "--batch-size", "4"]
    elif case == "care-3d":
        from ai4life_kit.config.io import save_spec

        sim = simulate_dataset(root / "sim", shape=(24, 72, 72), n=2, seed=32)
        # the residual CARE recipe, narrower and shallower: ilastik's 3D blocks stay quick on 2 cores
        save_spec(small_spec("care", 3, model__depth=1, model__width=8), root / "care-3d-small.yaml")
        args = [root / "care-3d-small.yaml", "--data", sim["noisy"][0].parent, "--target", sim["gt"][0].parent]
        args += ["--epochs", "1", "--steps-per-epoch", "4", "--batch-size", "2"]
    elif case == "pcare-2d":
        from ai4life_kit.config.io import save_spec

        sim = simulate_dataset(root / "sim", shape=(160, 160), n=2, seed=34)
        save_spec(small_spec("care", 2, algorithm__loss="laplace"), root / "pcare-2d-small.yaml")
        args = [root / "pcare-2d-small.yaml", "--data", sim["noisy"][0].parent, "--target", sim["gt"][0].parent]
        args += ["--epochs", "1", "--steps-per-epoch", "6", "--batch-size", "4"]
    elif case == "sr2x-2d":  # super-resolution: an output twice the input's size in y and x
        from ai4life_kit.config.io import save_spec

        sim = simulate_dataset(root / "sim", shape=(128, 128), n=2, seed=35)
        raw = small_spec("care", 2).model_dump(mode="json")
        raw["task"] = {"kind": "super_resolution", "factor": 2, "semi_synthetic": True, "degradation": {"peak": 30.0}}
        save_spec(parse_spec(raw, "sr2x"), root / "sr2x-small.yaml")
        args = [root / "sr2x-small.yaml", "--data", sim["gt"][0].parent]
        args += ["--epochs", "1", "--steps-per-epoch", "6", "--batch-size", "4"]
    elif case == "iso-3d":  # isotropic reconstruction: a 2D network on the XZ and YZ slices, 4x the z planes
        from ai4life_kit.config.io import save_spec

        sim = simulate_dataset(root / "sim", shape=(24, 72, 72), n=1, seed=36)
        raw = small_spec("care", 2, model__depth=1, model__width=8).model_dump(mode="json")
        raw["task"] = {"kind": "isotropic", "factor": 4}
        save_spec(parse_spec(raw, "iso"), root / "iso-small.yaml")
        args = [root / "iso-small.yaml", "--data", sim["noisy"][0], "--patch-size", "32,32"]
        args += ["--epochs", "1", "--steps-per-epoch", "6", "--batch-size", "4"]
    else:  # three channels
        import tifffile

        sim = simulate_dataset(root / "sim", shape=(128, 128), n=6, seed=33)
        (root / "rgb").mkdir()
        for i in range(2):
            stack = np.stack([tifffile.imread(p) for p in sim["noisy"][3 * i : 3 * i + 3]])
            tifffile.imwrite(root / "rgb" / f"img{i}.tif", stack, imagej=True, metadata={"axes": "CYX"})
        args = [spec / "n2v-2d.yaml", "--data", root / "rgb", "--patch-size", "32,32"]
        args += ["--epochs", "1", "--steps-per-epoch", "6", "--batch-size", "4"]
    result = invoke("train", *args, "--out", root / "run", "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.stderr
    return root / "run"


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    """Train and package each case once per module (without the package test: the matrix runs it)."""
    from ai4life_kit.export import package_run

    cache: dict[str, Path] = {}

    def get(case: str) -> Path:
        if case not in cache:
            root = tmp_path_factory.mktemp(case)
            run = _train(root, case)
            out = root / f"{case}.bioimageio.zip"
            package_run(run, out, authors=["Ada Lovelace"], github_user="ada-lovelace-test", run_test=False)
            cache[case] = out
        return cache[case]

    return get


def _assert_all_passed(report: c.ConsumerReport) -> None:
    assert report.passed, "\n".join(report.failures())


@pytest.mark.consumers
@pytest.mark.parametrize("case", ["n2v2-2d-folder", "care-3d", "n2v-3ch", "pcare-2d", "sr2x-2d", "iso-3d"])
def test_package_passes_in_every_consumer_runtime(installed_runtimes, packages, case):
    if case == "pcare-2d":  # the two named output channels of a probabilistic package
        with zipfile.ZipFile(packages(case)) as zf:
            rdf = yaml.safe_load(zf.read("rdf.yaml"))
        assert next(a for a in rdf["outputs"][0]["axes"] if a["type"] == "channel")["channel_names"] == [
            "mean",
            "scale",
        ]
    report = c.run_consumers(packages(case))
    _assert_all_passed(report)
    assert report.versions["bioengine"]["torch"] == "2.5.1"
    assert report.versions["bioengine"]["bioimageio.core"] == "0.10.4"
    assert report.versions["ilastik"]["torch"] == "2.7.1"
    assert report.versions["ilastik"]["bioimageio.core"] == "0.10.2"
    assert report.versions["deepimagej"]["torch"] == "2.0.1"
    assert report.versions["deepimagej"]["onnxruntime"] == "1.15.0"
    assert report.versions["deepimagej-1.13"]["torch"] == "1.13.1"
    for consumer, formats in (("current", c.WEIGHT_FORMATS), ("bioengine", c.WEIGHT_FORMATS)):
        assert all(report.cells[consumer][wf].status == "passed" for wf in formats), consumer
    dij = report.cells["deepimagej"]
    assert dij["torchscript"].status == dij["onnx"].status == "passed"
    # deepImageJ's check at its tolerance, at the test size and two other valid sizes
    assert dij["torchscript"].detail.count(" 0 of ") == 3, dij["torchscript"].detail
    ilastik = report.cells["ilastik"]
    assert ilastik["torchscript"].status == ilastik["pytorch_state_dict"].status == "passed"
    assert "blocks" in ilastik["torchscript"].detail and ", 0 of " in ilastik["torchscript"].detail
    assert ilastik["onnx"].status == "n/a"
    qupath = report.cells["qupath"]
    if case in ("care-3d", "iso-3d"):
        assert qupath == {"rules": c.Cell("n/a", "QuPath runs 2D models only")}
    else:
        assert qupath["torchscript"].status == "passed"


def _rewrite_zip(src: Path, dst: Path, replace: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            zout.writestr(name, replace.get(name, zin.read(name)))
    return dst


@pytest.mark.consumers
def test_torchscript_of_nn_upsample_fails_in_deepimagej_engine(installed_runtimes, packages, tmp_path):
    """Negative control: the old U-Net (``nn.Upsample``, scripted with all of F.interpolate) does not load."""
    import io

    from ai4life_kit.export.rundir import load_run

    out = packages("n2v2-2d-folder")
    model = load_run(out.parent / "run").build_model()
    model.upsample = torch.nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=False)
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(model), buffer)
    old = _rewrite_zip(out, tmp_path / "old.bioimageio.zip", {"weights_torchscript.pt": buffer.getvalue()})
    report = c.run_consumers(old, ["deepimagej"])
    cell = report.cells["deepimagej"]["torchscript"]
    assert cell.status == "failed" and "does not load in torch 2.0.1" in cell.detail, cell.detail
    assert "Unknown builtin op" in cell.detail
    assert report.cells["deepimagej"]["onnx"].status == "passed"


@pytest.mark.consumers
def test_strict_tolerance_and_seams_are_caught(installed_runtimes, packages, tmp_path):
    """Negative controls: a test output off by 3e-4 relative fails deepImageJ (not bioimageio.core's
    1e-3), and an output halo below the receptive field shows seams in ilastik's blocks."""
    import yaml

    out = packages("n2v2-2d-folder")
    with zipfile.ZipFile(out) as zf:
        rdf = yaml.safe_load(zf.read("rdf.yaml"))
        test_out = np.load(io_bytes(zf.read("test_output.npy")))
    nudged = test_out.copy()
    nudged[0, 0, :3, 0] *= 1 + 3e-4
    buf = io_bytes()
    np.save(buf, nudged)
    off = _rewrite_zip(out, tmp_path / "off.bioimageio.zip", {"test_output.npy": buf.getvalue()})
    report = c.run_consumers(off, ["deepimagej"])
    cell = report.cells["deepimagej"]["torchscript"]
    assert cell.status == "failed" and re.search(r"test output \(\d+, \d+\): [^;]*, 3 of \d+ off", cell.detail), (
        cell.detail
    )

    for axis in rdf["outputs"][0]["axes"][2:]:
        axis["halo"] = 4
    small_halo = _rewrite_zip(out, tmp_path / "halo.bioimageio.zip", {"rdf.yaml": yaml.safe_dump(rdf).encode()})
    report = c.run_consumers(small_halo, ["ilastik"])
    cell = report.cells["ilastik"]["torchscript"]
    assert cell.status == "failed" and "blocks" in cell.detail and ", 0 of " not in cell.detail, cell.detail


def io_bytes(data: bytes = b""):
    import io

    return io.BytesIO(data)


@pytest.mark.consumers
def test_validate_consumers_prints_the_table_and_writes_json(installed_runtimes, packages, tmp_path):
    out = packages("n2v-3ch")
    result = invoke(
        "validate", out, "--consumer", "deepimagej", "--consumer", "qupath", "--json", tmp_path / "table.json"
    )
    assert result.exit_code == 0, result.stderr
    assert "deepImageJ (Fiji)" in result.stdout and "QuPath" in result.stdout and "torch 2.0.1" in result.stdout
    data = json.loads((tmp_path / "table.json").read_text())
    assert data["passed"] is True and set(data["cells"]) == {"deepimagej", "qupath"}
    assert data["cells"]["deepimagej"]["torchscript"]["status"] == "passed"
