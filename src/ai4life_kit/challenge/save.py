"""``challenge save``: export a context's image as ``<name>.tar.gz`` for Grand Challenge, and verify it.

The archive is ``docker save`` / ``podman save`` output (docker-archive layout) compressed with
``gzip -1``, written under a temporary name and renamed. Verification reads it back in one stream:
``manifest.json`` names one image with its tag, the config's sha256 is the image id the engine
reports, and every layer's sha256 matches the config's ``rootfs.diff_ids`` in order. With
``load_check`` the archive is also loaded (``gunzip -c | podman load``) into a throw-away store.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ai4life_kit.challenge.context import load_context
from ai4life_kit.challenge.ctest import build_context_image
from ai4life_kit.challenge.engine import ContainerError, Engine, find_engine, podman_engine
from ai4life_kit.fileio import atomic_path, check_writable

__all__ = ["SaveReport", "save_context_image", "verify_archive"]

Log = Callable[[str], None]
_SMALL = 1 << 20  # manifests and configs are kept in memory; layers are only hashed


@dataclass
class SaveReport:
    archive: Path
    image: str
    image_id: str
    size_bytes: int
    uncompressed_bytes: int
    layers: int
    seconds: float
    loaded: bool


def verify_archive(path: Path, image_id: str | None = None) -> dict[str, Any]:
    """Check a (gzipped) docker-archive; return what it holds. Raise :class:`ContainerError` if broken."""
    path = Path(path)
    hashes: dict[str, str] = {}
    small: dict[str, bytes] = {}
    total = 0
    try:
        with tarfile.open(path, "r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                fh = tar.extractfile(member)
                assert fh is not None
                digest = hashlib.sha256()
                kept = bytearray()
                for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                    digest.update(chunk)
                    if member.size <= _SMALL:
                        kept += chunk
                total += member.size
                name = member.name.removeprefix("./")
                hashes[name] = digest.hexdigest()
                if member.size <= _SMALL:
                    small[name] = bytes(kept)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ContainerError(f"{path} is not a readable image archive ({type(exc).__name__}: {exc})") from None
    if "manifest.json" not in small:
        raise ContainerError(f"{path} has no manifest.json: not a docker-archive")
    manifest = json.loads(small["manifest.json"])
    if not isinstance(manifest, list) or len(manifest) != 1:
        raise ContainerError(f"{path}: manifest.json should describe exactly one image, not {len(manifest)}")
    entry = manifest[0]
    config_name = entry.get("Config", "")
    if config_name not in small:
        raise ContainerError(f"{path}: the image config {config_name!r} named in manifest.json is missing")
    config_id = hashes[config_name]
    if Path(config_name).name.removesuffix(".json") != config_id:
        raise ContainerError(f"{path}: the config {config_name} does not match its own sha256 ({config_id})")
    if image_id and config_id != image_id:
        raise ContainerError(f"{path} holds image {config_id[:12]}, not the built image {image_id[:12]}")
    config = json.loads(small[config_name])
    diff_ids = [d.removeprefix("sha256:") for d in config.get("rootfs", {}).get("diff_ids", [])]
    layers = entry.get("Layers", [])
    missing = [layer for layer in layers if layer not in hashes]
    if missing:
        raise ContainerError(f"{path}: layer(s) {', '.join(missing)} named in manifest.json are missing")
    actual = [hashes[layer] for layer in layers]
    if actual != diff_ids:
        raise ContainerError(f"{path}: the layers do not match the image config's diff_ids (corrupt or truncated)")
    return {"image_id": config_id, "tags": entry.get("RepoTags") or [], "layers": len(layers), "bytes": total}


def _export(engine: Engine, image: str, dest: Path) -> None:
    """``<engine> save image | gzip -1 > dest``."""
    fmt = ["--quiet", "--format", "docker-archive"] if engine.name == "podman" else []
    save_cmd = engine.command("save", *fmt, engine.ref(image))
    gzip_exe = shutil.which("gzip")
    with (
        open(dest, "wb") as out,
        tempfile.TemporaryFile() as err,
        subprocess.Popen(save_cmd, stdout=subprocess.PIPE, stderr=err, env=engine.environ()) as saver,
    ):
        assert saver.stdout is not None
        if gzip_exe:
            zip_rc = subprocess.run([gzip_exe, "-1", "-c"], stdin=saver.stdout, stdout=out, check=False).returncode
        else:
            with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=1, mtime=0) as gz:
                shutil.copyfileobj(saver.stdout, gz, 1 << 20)
            zip_rc = 0
        saver.stdout.close()
        saver.wait()
        err.seek(0)
        message = err.read().decode(errors="replace").strip()[-800:]
    if saver.returncode != 0:
        raise ContainerError(f"{engine.name} save {image} failed (exit {saver.returncode}): {message}")
    if zip_rc != 0:
        raise ContainerError(f"gzip failed (exit {zip_rc}) while writing {dest}")


def _load_check(engine: Engine, archive: Path, image_id: str) -> None:
    """Load the archive into a throw-away podman store (or the docker daemon) and compare the id.

    podman 4.3 cannot load a gzipped archive itself, so it is decompressed into ``load``'s stdin.
    """
    with contextlib.ExitStack() as stack:
        if engine.name == "podman":
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="load-check-", dir=engine.cache)))
            loader = podman_engine(engine.exe, scratch)
            stack.callback(shutil.rmtree, loader.runroot, ignore_errors=True)
            stack.callback(lambda: loader.call("system", "reset", "-f", check=False))
        else:
            loader = engine
        err = stack.enter_context(tempfile.TemporaryFile())
        load_cmd = loader.command("load")
        proc = stack.enter_context(
            subprocess.Popen(load_cmd, stdin=subprocess.PIPE, stdout=err, stderr=err, env=loader.environ())
        )
        assert proc.stdin is not None
        try:
            with gzip.open(archive, "rb") as src:
                shutil.copyfileobj(src, proc.stdin, 1 << 20)
        except BrokenPipeError:
            pass
        finally:
            proc.stdin.close()
        proc.wait()
        if proc.returncode != 0:
            err.seek(0)
            raise ContainerError(f"loading {archive} failed: {err.read().decode(errors='replace').strip()[-800:]}")
        ids = loader.call("images", "--no-trunc", "--format", "{{.ID}}").stdout.split()
        if not any(i.removeprefix("sha256:") == image_id for i in ids):
            raise ContainerError(f"{archive} loaded, but image {image_id[:12]} is not among {ids}")


def save_context_image(
    path: Path,
    out: Path | None = None,
    *,
    engine: str = "auto",
    overwrite: bool = False,
    load_check: bool = False,
    base_image: str | None = None,
    log: Log = print,
) -> SaveReport:
    """Export the image of the build context at ``path`` (building it first if needed)."""
    ctx = load_context(path)
    eng = find_engine(engine)
    if eng is None:
        raise ContainerError(
            "saving an image needs docker or podman, and neither was found (run scripts/setup-podman.sh)"
        )
    archive = Path(out) if out else ctx.archive
    check_writable(archive, overwrite)
    if not eng.image_exists(ctx.image):
        log(f"{ctx.image} is not built yet: building it (run `challenge test` to also check it)")
        build_context_image(eng, ctx, log, base_image)
    image_id, _ = eng.image_info(ctx.image)
    start = time.perf_counter()
    log(f"saving {ctx.image} ({image_id[:12]}) to {archive}")
    with atomic_path(archive, overwrite) as tmp:
        _export(eng, ctx.image, tmp)
        info = verify_archive(tmp, image_id)
        os.chmod(tmp, 0o644)
    if load_check:
        log("loading the archive into a scratch store to check it")
        _load_check(eng, archive, image_id)
    report = SaveReport(
        archive=archive,
        image=ctx.image,
        image_id=image_id,
        size_bytes=archive.stat().st_size,
        uncompressed_bytes=info["bytes"],
        layers=info["layers"],
        seconds=time.perf_counter() - start,
        loaded=load_check,
    )
    return report
