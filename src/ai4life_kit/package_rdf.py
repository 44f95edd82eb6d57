"""Open a bioimage.io model zip and read its rdf: the one reader of package zips, torch-free.

Used by the light package loader (:mod:`ai4life_kit.prediction.package_loader`, what the
challenge container runs) and by ``validate`` (:func:`ai4life_kit.export.validate.inspect_zip`,
before bioimageio is imported), so that both reject a missing file, a corrupt zip, a zip without
an rdf or an rdf that is not a model with the same one-line :class:`ModelLoadError`.
"""

from __future__ import annotations

import hashlib
import zipfile
import zlib
from pathlib import Path
from typing import Any

from ai4life_kit.errors import ModelLoadError

__all__ = ["RDF_NAMES", "check_members", "open_model_zip", "read_member", "read_rdf"]

RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
# What zipfile raises on a truncated or damaged archive: CRC mismatches, bad headers, short reads.
_CORRUPT = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, zlib.error)


def open_model_zip(path: Path) -> zipfile.ZipFile:
    """``path`` as an open zip, or a :class:`ModelLoadError` saying why it is none."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"model package {path} does not exist")
    if path.is_dir():
        raise ModelLoadError(f"{path} is a directory, not a bioimage.io model zip")
    if not path.is_file():
        raise ModelLoadError(f"model package {path} is not a file")
    if not zipfile.is_zipfile(path):
        raise ModelLoadError(f"{path} is not a zip file (a bioimage.io model package is a .zip)")
    try:
        return zipfile.ZipFile(path)
    except _CORRUPT as exc:
        raise ModelLoadError(f"{path} is a corrupt zip file: {type(exc).__name__}: {exc}") from None


def check_members(zf: zipfile.ZipFile, path: Path) -> None:
    """Read every member once and check its CRC (a damaged download fails here, not mid-prediction)."""
    try:
        bad = zf.testzip()
    except _CORRUPT as exc:
        raise ModelLoadError(f"{path} is a corrupt zip file: {type(exc).__name__}: {exc}") from None
    if bad is not None:
        raise ModelLoadError(f"{path} is corrupt: the checksum of {bad!r} inside it does not match")


def read_member(zf: zipfile.ZipFile, path: Path, name: str, sha256: str | None = None) -> bytes:
    """The bytes of ``name`` (a path the rdf gives, ``./`` allowed), checked against its sha256 if given."""
    name = name.removeprefix("./")
    try:
        data = zf.read(name)
    except KeyError:
        raise ModelLoadError(f"{path} is incomplete: its rdf names {name!r} but the zip has no such file") from None
    except _CORRUPT as exc:
        raise ModelLoadError(f"{path} is a corrupt zip file: cannot read {name!r} ({exc})") from None
    if sha256 and hashlib.sha256(data).hexdigest() != sha256.lower():
        raise ModelLoadError(f"{path} is corrupt: {name!r} does not match the sha256 in its rdf")
    return data


def read_rdf(zf: zipfile.ZipFile, path: Path) -> dict[str, Any]:
    """The parsed rdf at the zip's top level (``rdf.yaml``, ``bioimageio.yaml`` or ``*.bioimageio.yaml``) of a model.

    Any format version: the caller decides which it can run.
    """
    import yaml

    names = zf.namelist()
    rdf_name = next((n for n in RDF_NAMES if n in names), None)
    if rdf_name is None:
        rdf_name = next((n for n in names if n.endswith(".bioimageio.yaml") and "/" not in n), None)
    if rdf_name is None:
        raise ModelLoadError(
            f"{path} is not a bioimage.io package: it has no rdf.yaml or bioimageio.yaml at its top level"
        )
    try:
        rdf = yaml.safe_load(read_member(zf, path, rdf_name).decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path}: {rdf_name} is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(rdf, dict):
        raise ModelLoadError(f"{path}: {rdf_name} does not describe a resource (expected a mapping)")
    if rdf.get("type") != "model":
        raise ModelLoadError(f"{path} describes a {rdf.get('type')!r}, not a model")
    return rdf
