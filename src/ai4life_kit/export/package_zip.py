"""Serialise a model description and write the package zip, in a form every consumer reads.

The description is built with ``bioimageio.spec.model.v0_5`` (never as hand-written YAML);
the serialised rdf is then written as ``format_version: 0.5.4`` with plain-string
``documentation`` and ``covers``, which the current bioimageio stack and the older one that
ilastik ships (bioimageio.spec 0.5.9.1, bioimageio.core 0.10.2) both accept; spec >= 0.5.11
would write ``{source, sha256}`` mappings that the older stack and deepImageJ reject.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

from ai4life_kit.errors import Ai4LifeKitError
from ai4life_kit.export._testrun import collect_leaked_files
from ai4life_kit.fileio import umask_file_mode

__all__ = ["COMPAT_FORMAT_VERSION", "RDF_NAME", "patch_rdf_for_old_consumers", "write_zip"]

RDF_NAME = "rdf.yaml"
COMPAT_FORMAT_VERSION = "0.5.4"


def patch_rdf_for_old_consumers(rdf: dict[str, Any]) -> dict[str, Any]:
    """Write 0.5.4 with plain-string documentation and covers (see the module docstring)."""
    rdf = dict(rdf)
    rdf["format_version"] = COMPAT_FORMAT_VERSION
    doc = rdf.get("documentation")
    if isinstance(doc, dict):
        rdf["documentation"] = doc["source"]
    covers = rdf.get("covers")
    if isinstance(covers, list):
        rdf["covers"] = [c["source"] if isinstance(c, dict) else c for c in covers]
    # bioimageio.spec inserts `ensure_dtype` around every processing list and re-inserts it on
    # load; written out they turn our one pre-processing step into three, which consumers that
    # accept a single step (BiaPy) reject. Drop the ones that only restate the tensor's dtype.
    for key, proc_key in (("inputs", "preprocessing"), ("outputs", "postprocessing")):
        tensors = []
        for tensor in rdf.get(key, []):
            tensor = dict(tensor)
            dtype = (tensor.get("data") or {}).get("type", "float32") if isinstance(tensor.get("data"), dict) else None
            steps = tensor.get(proc_key)
            if dtype is not None and isinstance(steps, list):
                tensor[proc_key] = [
                    p
                    for p in steps
                    if not (p.get("id") == "ensure_dtype" and p.get("kwargs", {}).get("dtype") == dtype)
                ]
                if not tensor[proc_key]:
                    del tensor[proc_key]
            tensors.append(tensor)
        if tensors:
            rdf[key] = tensors
    return rdf


def write_zip(descr, zip_path: Path) -> None:
    """Serialise ``descr`` with bioimageio.spec and write the package zip (rdf patched).

    The zip is written with :mod:`zipfile` from local paths (bioimageio.spec's ``write_zip``
    leaves a file handle open per packaged file).
    """
    from zipfile import ZIP_DEFLATED, ZipFile, ZipInfo

    from bioimageio.spec._internal.io_utils import write_yaml
    from bioimageio.spec._package import get_package_content

    rdf: dict[str, Any] | None = None
    files: dict[str, Path] = {}
    with collect_leaked_files():
        content = get_package_content(descr, bioimageio_yaml_file_name=RDF_NAME)
        for fname, value in content.items():
            if isinstance(value, dict):
                rdf = patch_rdf_for_old_consumers(value)
            else:  # every file of ours is local
                files[fname] = Path(value.source.absolute())
        del content
    if rdf is None:  # pragma: no cover - bioimageio.spec always returns the rdf
        raise Ai4LifeKitError("bioimageio.spec returned no rdf for the package")
    text = io.StringIO()
    write_yaml(rdf, text)
    with ZipFile(zip_path, "w", compression=ZIP_DEFLATED, compresslevel=6) as zf:
        # writestr would store the rdf as 0600: unzipped, only its owner could read it
        info = ZipInfo(RDF_NAME, date_time=time.localtime()[:6])
        info.compress_type = ZIP_DEFLATED
        info.external_attr = umask_file_mode() << 16
        zf.writestr(info, text.getvalue())
        for fname, path in files.items():
            zf.write(path, arcname=fname)
