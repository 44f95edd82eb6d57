"""What each consumer refuses, read off the rdf alone (no runtime needed), and one matrix cell.

The rules come from the consumers' own code (JDLL/deepImageJ, ilastik/tiktorch, QuPath): see the
project's ``shared/reference/consumers.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ai4life_kit.export.consumer_jobs import PackageView

__all__ = ["Cell", "engine_version", "rules"]

# deepImageJ's own implementations (JDLL); anything else and it refuses the model.
_DIJ_PROCESSING = {
    "binarize",
    "clip",
    "ensure_dtype",
    "fixed_zero_mean_unit_variance",
    "scale_linear",
    "scale_range",
    "sigmoid",
    "zero_mean_unit_variance",
}


@dataclass
class Cell:
    """One consumer x weight format (or ``rules``) result."""

    status: str
    """``passed``, ``failed`` or ``n/a`` (the consumer does not run this, or cannot)."""
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.status == "failed"


def rules(consumer: str, pkg: PackageView) -> Cell:
    problems: list[str] = []
    n_in, n_out = len(pkg.rdf.get("inputs", [])), len(pkg.rdf.get("outputs", []))
    weights = pkg.weights
    if consumer == "deepimagej":
        if n_in != 1:
            problems.append(f"{n_in} inputs (deepImageJ takes exactly one)")
        for t in pkg.rdf["inputs"] + pkg.rdf["outputs"]:
            for a in t["axes"]:
                if a.get("type") == "channel" and not a.get("channel_names"):
                    problems.append(f"tensor {t['id']!r}: channel axis without channel_names")
            key = "preprocessing" if t in pkg.rdf["inputs"] else "postprocessing"
            for step in t.get(key) or []:
                if step.get("id") not in _DIJ_PROCESSING:
                    problems.append(f"{key} {step.get('id')!r} is not implemented by deepImageJ")
        dij = (pkg.rdf.get("config") or {}).get("deepimagej")
        if isinstance(dij, dict) and dij.get("allow_tiling") is not True:
            problems.append("config.deepimagej.allow_tiling is not true (tiling off)")
        if not isinstance(pkg.rdf.get("documentation"), str):
            problems.append("documentation is not a plain string (deepImageJ's parser casts it to one)")
        if not ({"torchscript", "onnx"} & set(weights)):
            problems.append("no TorchScript or ONNX weights (deepImageJ runs state dicts only in a separate Python)")
        for t in pkg.rdf["inputs"]:
            if "sample_tensor" not in t:
                problems.append(f"input {t['id']!r} has no sample_tensor")
    elif consumer == "ilastik":
        if n_in != 1 or n_out != 1:
            problems.append(f"{n_in} inputs / {n_out} outputs (ilastik needs exactly one of each)")
        if "channel" not in pkg.axis_ids(pkg.output):
            problems.append("the output has no axis with id 'channel'")
        if not ({"torchscript", "pytorch_state_dict"} & set(weights)):
            problems.append("neither TorchScript nor state-dict weights (ilastik never runs ONNX)")
    elif consumer == "qupath":
        if "z" in pkg.spatial:
            return Cell("n/a", "QuPath runs 2D models only")
        if n_in != 1 or n_out != 1:
            problems.append(f"{n_in} inputs / {n_out} outputs (QuPath needs exactly one of each)")
        if "torchscript" not in weights:
            problems.append("no TorchScript weights (QuPath runs no other PyTorch format)")
    if problems:
        return Cell("failed", "; ".join(problems))
    return Cell("passed", "one input, one output, supported axes and processing")


def engine_version(pkg: PackageView) -> str:
    """The libtorch JDLL picks: the installed engine closest to ``pytorch_version`` in the same major."""
    ts = pkg.weights.get("torchscript") or {}
    version = str(ts.get("pytorch_version") or "1.13.1")
    return "2.0.0" if version.split(".")[0] == "2" else "1.13.1"
