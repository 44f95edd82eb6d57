"""Run one consumer's checks inside that consumer's own Python runtime (a separate venv).

This file is executed **by path** with another interpreter (torch 2.0.1, 2.5.1, 2.7.1...), where
ai4life-kit is not installed::

    RUNTIME/bin/python _consumer_probe.py JOB.json

It imports only the standard library, numpy, and what the job asks for (torch, onnxruntime,
bioimageio.core), and prints one JSON object after a marker line on stdout. The job (written by
:mod:`ai4life_kit.export.consumers`) says which checks to run:

- ``bioimageio``: ``bioimageio.core.test_model`` once per weight format, as the BioEngine,
  ilastik and the bioimage.io collection run it.
- ``engine``: deepImageJ's own compatibility check: the sample input, pre-processed as the rdf
  says, through the TorchScript (libtorch) or ONNX (onnxruntime) weights, post-processed, compared
  with the test output at |d| <= 1.5e-4 + 1e-4 * |expected| with zero mismatched pixels; then the
  same at other valid sizes against outputs computed in the packaging environment.
- ``blockwise``: ilastik's tiling: bioimageio.core predicts an image block by block (blocks of at
  least 512 px in 2D, 64 in 3D, with the output halo) and the result must match the prediction of
  the whole image.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import numpy as np

MARK = "@@AI4LIFE_KIT_CONSUMER@@"
# deepImageJ's check (JDLL): absolute 1.5e-4 plus relative 1e-4, no mismatched pixel allowed.
DIJ_ATOL = 1.5e-4
DIJ_RTOL = 1e-4


def _versions(modules: list[str]) -> dict[str, str]:
    out = {"python": sys.version.split()[0], "numpy": np.__version__}
    for name in modules:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        out[name] = str(getattr(mod, "__version__", "?")).split("+")[0]
    return out


def _compare(got: np.ndarray, expected: np.ndarray) -> dict[str, Any]:
    """deepImageJ's tolerance: how many pixels exceed it, and the largest difference."""
    if got.shape != expected.shape:
        return {"passed": False, "error": f"output shape {list(got.shape)} != expected {list(expected.shape)}"}
    got = got.astype(np.float64)
    expected = expected.astype(np.float64)
    diff = np.abs(got - expected)
    limit = DIJ_ATOL + DIJ_RTOL * np.abs(expected)
    bad = int(np.count_nonzero(~(diff <= limit)))  # NaN counts as a mismatch
    return {
        "passed": bad == 0,
        "max_abs_diff": float(np.nanmax(diff)) if diff.size else 0.0,
        "mismatched": bad,
        "elements": int(diff.size),
    }


def _channel_param(values: Any, ndim: int, channel_axis: int) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float32)
    if arr.ndim == 0:
        return arr
    shape = [1] * ndim
    shape[channel_axis] = arr.size
    return arr.reshape(shape)


def _apply(steps: list[dict[str, Any]], x: np.ndarray, axes: list[str]) -> np.ndarray:
    """The rdf's processing steps that deepImageJ implements, in float32 as its Java code computes them."""
    x = x.astype(np.float32)
    for step in steps:
        op = step.get("id") or step.get("name")
        kw = step.get("kwargs", {}) or {}
        ch = axes.index(kw["axis"]) if kw.get("axis") in axes else axes.index("channel")
        if op == "fixed_zero_mean_unit_variance":
            mean = _channel_param(kw["mean"], x.ndim, ch)
            std = _channel_param(kw["std"], x.ndim, ch)
            x = ((x - mean) / (std + np.float32(kw.get("eps", 1e-6)))).astype(np.float32)
        elif op == "scale_linear":
            gain = _channel_param(kw.get("gain", 1.0), x.ndim, ch)
            offset = _channel_param(kw.get("offset", 0.0), x.ndim, ch)
            x = (x * gain + offset).astype(np.float32)
        elif op == "ensure_dtype":
            x = x.astype(kw.get("dtype", "float32"))
        else:
            raise ValueError(f"processing step {op!r} is not one this probe implements")
    return x


class _Engine:
    """One weight file loaded by the runtime that deepImageJ would use for it."""

    def __init__(self, weight_format: str, path: str) -> None:
        self.weight_format = weight_format
        if weight_format == "torchscript":
            import torch

            torch.set_num_threads(max(1, torch.get_num_threads()))
            self.model = torch.jit.load(path, map_location="cpu").eval()
        elif weight_format == "onnx":
            import onnxruntime as ort

            self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            self.input_name = self.session.get_inputs()[0].name
        else:  # pragma: no cover - the job only names the two
            raise ValueError(weight_format)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.weight_format == "torchscript":
            import torch

            with torch.no_grad():
                return self.model(torch.from_numpy(np.ascontiguousarray(x))).numpy()
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x)})[0]


def run_engine(job: dict[str, Any]) -> list[dict[str, Any]]:
    """deepImageJ's check for each engine-run weight format, at the test size and other sizes."""
    results = []
    in_axes, out_axes = job["input_axes"], job["output_axes"]
    for wf, path in job["weights"].items():
        entry: dict[str, Any] = {"check": "engine", "weight_format": wf, "cases": []}
        t0 = time.perf_counter()
        try:
            engine = _Engine(wf, path)
        except Exception as exc:
            entry.update(passed=False, error=f"{type(exc).__name__}: {_first_line(exc)}")
            results.append(entry)
            continue
        ok = True
        for case in job["cases"]:
            x = np.load(case["input"])
            expected = np.load(case["expected"])
            try:
                y = engine(_apply(job["preprocessing"], x, in_axes))
                y = _apply(job["postprocessing"], y, out_axes)
                cmp = _compare(y, expected)
            except Exception as exc:
                cmp = {"passed": False, "error": f"{type(exc).__name__}: {_first_line(exc)}"}
            cmp.update(name=case["name"], shape=list(x.shape))
            ok = ok and cmp["passed"]
            entry["cases"].append(cmp)
        entry.update(passed=ok, seconds=time.perf_counter() - t0)
        results.append(entry)
    return results


def _load_testrun(path: str):
    spec = importlib.util.spec_from_file_location("_ai4life_kit_testrun", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def run_bioimageio(job: dict[str, Any]) -> list[dict[str, Any]]:
    """``bioimageio.core.test_model`` per weight format, summarised as the kit's ``_testrun`` does."""
    testrun = _load_testrun(job["testrun_module"])
    results = []
    for wf in job["weight_formats"]:
        t0 = time.perf_counter()
        try:
            summary = testrun.run_test_on_zip(job["zip"], job.get("github_users", []), wf)
            passed = summary.get("status") == "passed"
            entry = {"check": "bioimageio", "weight_format": wf, "passed": passed, "summary": summary}
        except Exception as exc:
            entry = {"check": "bioimageio", "weight_format": wf, "passed": False, "error": _first_line(exc)}
        entry["seconds"] = time.perf_counter() - t0
        results.append(entry)
    return results


def run_blockwise(job: dict[str, Any]) -> list[dict[str, Any]]:
    """Block-by-block prediction (ilastik's smallest tiles) against whole-image prediction."""
    from bioimageio.core import create_prediction_pipeline, load_description
    from bioimageio.core.digest_spec import create_sample_for_model

    results = []
    for wf in job["weight_formats"]:
        t0 = time.perf_counter()
        entry: dict[str, Any] = {"check": "blockwise", "weight_format": wf}
        try:
            model = load_description(job["zip"], perform_io_checks=False)
            x = np.load(job["image"])
            halo = job["halo"]
            with create_prediction_pipeline(model, weight_format=wf) as pp:
                blocked = pp.predict_sample_with_fixed_blocking(
                    create_sample_for_model(model, inputs={"input": x}, sample_id="blocks"),
                    input_block_shape={"input": job["block_shape"]},
                )
                tiled = blocked.members["output"].data.to_numpy()
                # The whole image under the same border rule as the blocks (bioimageio.core pads
                # the image edges by reflection), so that any difference is a seam between blocks.
                pad = [(0, 0), (0, 0)] + [(h, h) for h in halo]
                padded = np.pad(x, pad, mode="reflect")
                whole = (
                    pp.predict_sample_without_blocking(
                        create_sample_for_model(model, inputs={"input": padded}, sample_id="whole")
                    )
                    .members["output"]
                    .data.to_numpy()
                )
                crop = job.get("crop", halo)  # output pixels (the input's halo times f for super-resolution)
                whole = whole[(slice(None), slice(None), *(slice(h, -h) for h in crop))]
            entry.update(_compare(tiled, whole))
            entry.update(image_shape=list(x.shape), block_shape=job["block_shape"])
        except Exception as exc:
            entry.update(passed=False, error=f"{type(exc).__name__}: {_first_line(exc)}")
            entry["traceback"] = traceback.format_exc()[-2000:]
        entry["seconds"] = time.perf_counter() - t0
        results.append(entry)
    return results


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def main(argv: list[str]) -> int:
    job = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
    out: dict[str, Any] = {"results": []}
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for check in job["checks"]:
            try:
                if check == "engine":
                    out["results"] += run_engine(job["engine"])
                elif check == "bioimageio":
                    out["results"] += run_bioimageio(job["bioimageio"])
                elif check == "blockwise":
                    out["results"] += run_blockwise(job["blockwise"])
            except Exception as exc:  # report, never crash without a result
                out["results"].append({"check": check, "passed": False, "error": f"{type(exc).__name__}: {exc}"})
        out["versions"] = _versions(["torch", "onnxruntime", "bioimageio.core", "bioimageio.spec", "pydantic"])
    sys.stdout.write("\n" + MARK + json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
