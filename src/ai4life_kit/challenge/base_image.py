"""The image a context is built on: a registry's Python, or one bootstrapped from Debian packages.

Generated Dockerfiles start ``FROM ${BASE_IMAGE}`` with ``python:3.11-slim-bookworm`` as the
default, which needs a registry. Where none can be reached, podman builds on
``localhost/pybase:bookworm`` instead: Debian bookworm with its python3 (3.11), made once with
``mmdebstrap | podman import`` and kept in the engine's private store. The mirror lines come from
the machine's own apt sources at run time (so the base image uses the same mirrors, snapshots and
proxies as the machine), never from a hard-coded host.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from ai4life_kit.challenge.engine import ContainerError, Engine, output_tail
from ai4life_kit.fileio import waiting_lock

__all__ = [
    "BASE_PACKAGES",
    "BASE_SUITE",
    "DEFAULT_BASE_IMAGE",
    "LOCAL_BASE_IMAGE",
    "bootstrap_base_image",
    "deb822_stanzas",
    "debian_mirror_lines",
    "ensure_base_image",
    "mmdebstrap_command",
]

DEFAULT_BASE_IMAGE = "python:3.11-slim-bookworm"
"""What the generated Dockerfiles start from (Grand Challenge users build with a registry)."""
LOCAL_BASE_IMAGE = "localhost/pybase:bookworm"
"""The same Python (Debian bookworm's 3.11), bootstrapped locally when no registry is reachable."""
BASE_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "passwd")

Log = Callable[[str], None]
AptSource = tuple[str, list[str], list[str], str | None]
"""(uri, suites, components, signed-by) of one ``deb`` source."""


def deb822_stanzas(text: str) -> Iterator[dict[str, str]]:
    """The stanzas of a deb822 file (``*.sources``): lower-case keys, continuation lines joined."""
    stanza: dict[str, str] = {}
    key = None
    for raw in text.splitlines() + [""]:
        line = raw.rstrip()
        if line.startswith("#"):
            continue
        if not line.strip():
            if stanza:
                yield stanza
            stanza, key = {}, None
        elif line[0] in " \t" and key:
            stanza[key] += " " + line.strip()
        elif ":" in line:
            key, value = line.split(":", 1)
            key = key.strip().lower()
            stanza[key] = value.strip()


def _one_line_source(line: str) -> AptSource | None:
    """A ``deb [options] uri suite components...`` line of a ``*.list`` file, or None."""
    line = line.split("#", 1)[0].strip()
    if not line.startswith("deb "):
        return None
    signed_by = None
    m = re.match(r"deb\s+\[([^\]]*)\]\s+(.*)", line)
    if m:
        opts, rest = m.groups()
        sb = re.search(r"signed-by=(\S+)", opts)
        signed_by = sb.group(1) if sb else None
    else:
        rest = line[4:]
    parts = rest.split()
    return (parts[0], [parts[1]], parts[2:], signed_by) if len(parts) >= 3 else None


def _apt_sources(apt_dir: Path) -> list[AptSource]:
    """Every enabled ``deb`` source of the machine, deb822 files first."""
    entries: list[AptSource] = []
    listd = apt_dir / "sources.list.d"
    for path in sorted(listd.glob("*.sources")) if listd.is_dir() else []:
        for st in deb822_stanzas(path.read_text(encoding="utf-8", errors="replace")):
            if "deb" not in st.get("types", "").split() or st.get("enabled", "yes").lower() == "no":
                continue
            for uri in st.get("uris", "").split():
                suites, components = st.get("suites", "").split(), st.get("components", "").split()
                entries.append((uri, suites, components, st.get("signed-by")))
    one_line = [apt_dir / "sources.list"] + (sorted(listd.glob("*.list")) if listd.is_dir() else [])
    for path in one_line:
        if path.is_file():
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
            entries += [entry for entry in map(_one_line_source, lines) if entry is not None]
    return entries


def debian_mirror_lines(suite: str = BASE_SUITE, apt_dir: Path = Path("/etc/apt")) -> list[str]:
    """One-line ``deb`` mirror specs for Debian ``suite``, from the machine's own apt sources.

    Only Debian sources are used (a URI containing ``debian``), with their suite names mapped to
    ``suite`` (``trixie-updates`` becomes ``bookworm-updates``) and only the ``main`` component, so
    the base image gets the same mirrors (and snapshots, proxies) the machine itself uses.
    """
    lines: list[str] = []
    for uri, suites, components, signed_by in _apt_sources(Path(apt_dir)):
        if "debian" not in uri or "main" not in components:
            continue
        for host_suite in suites:
            _, sep, suffix = host_suite.partition("-")
            if suffix not in ("", "updates", "security"):
                continue
            opts = f"[signed-by={signed_by}] " if signed_by and Path(signed_by).is_file() else ""
            line = f"deb {opts}{uri} {suite}{sep}{suffix} main"
            if line not in lines:
                lines.append(line)
    if not any(f" {suite} main" in line for line in lines):
        raise ContainerError(
            f"no Debian apt source found under {apt_dir} to bootstrap a {suite} base image from; "
            f"pass --base-image (e.g. {DEFAULT_BASE_IMAGE}) on a machine that can reach a registry"
        )
    return lines


def mmdebstrap_command(mmdebstrap: str, mirrors: Sequence[str], suite: str = BASE_SUITE) -> list[str]:
    """The mmdebstrap call that writes the base image's root filesystem as a tar to stdout.

    Docs, man pages and locales are left out (copyright files are kept), which keeps the image
    at about 170 MB.
    """
    return [
        mmdebstrap,
        "--variant=apt",
        "--include=" + ",".join(BASE_PACKAGES),
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/info/*",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-include=/usr/share/doc/*/copyright",
        "--quiet",
        suite,
        "-",
        *mirrors,
    ]


def _bootstrap_tmpdir() -> str | None:
    """``/dev/shm`` when it has room: it halves the mmdebstrap time."""
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return None
    return "/dev/shm" if st.f_bavail * st.f_frsize > 2 * 1024**3 and os.access("/dev/shm", os.W_OK) else None


def bootstrap_base_image(engine: Engine, log: Log, image: str = LOCAL_BASE_IMAGE) -> None:
    """Build ``image`` (Debian bookworm + python3) with mmdebstrap and ``podman import``."""
    mmdebstrap = shutil.which("mmdebstrap")
    if mmdebstrap is None:
        raise ContainerError(
            "mmdebstrap is not installed (run scripts/setup-podman.sh), and no registry base image was "
            f"given; pass --base-image {DEFAULT_BASE_IMAGE} if this machine can reach a registry"
        )
    mirrors = debian_mirror_lines(BASE_SUITE)
    uris = dict.fromkeys(m.split()[-3] for m in mirrors)
    log(f"bootstrapping {image} with mmdebstrap from {', '.join(uris)} (once; cached)")
    cmd = mmdebstrap_command(mmdebstrap, mirrors)
    env = dict(os.environ)
    tmp = _bootstrap_tmpdir()
    if tmp:
        env["TMPDIR"] = tmp
    start = time.perf_counter()
    importer_cmd = engine.command(
        "import", "--message", f"ai4life-kit base: Debian {BASE_SUITE} + python3 (mmdebstrap)", "-", image
    )
    with (
        tempfile.TemporaryFile() as deb_log,
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=deb_log, env=env) as debootstrap,
        subprocess.Popen(
            importer_cmd, stdin=debootstrap.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=engine.environ(),
        ) as importer,
    ):  # fmt: skip
        assert debootstrap.stdout is not None
        debootstrap.stdout.close()  # the importer owns the pipe now
        _, imp_err = importer.communicate()
        debootstrap.wait()
        deb_log.seek(0)
        deb_err = deb_log.read()
    if debootstrap.returncode != 0:
        detail = output_tail(deb_err.decode(errors="replace"))
        raise ContainerError(f"mmdebstrap failed (exit {debootstrap.returncode}): {detail}")
    if importer.returncode != 0:
        detail = output_tail(imp_err.decode(errors="replace"))
        raise ContainerError(f"podman import failed (exit {importer.returncode}): {detail}")
    log(f"base image {image} ready in {time.perf_counter() - start:.0f} s")


def ensure_base_image(engine: Engine, log: Log, base_image: str | None = None) -> str:
    """The base image to build on: ``base_image`` if given, else one that needs no registry.

    docker pulls the Dockerfile's default; podman reuses (or bootstraps once) ``LOCAL_BASE_IMAGE``
    when mmdebstrap is installed, and otherwise pulls the default.
    """
    if base_image:
        return base_image
    if engine.name == "docker" or shutil.which("mmdebstrap") is None:
        return DEFAULT_BASE_IMAGE
    assert engine.cache is not None
    with waiting_lock(engine.cache / "base-image.lock"):
        if not engine.image_exists(LOCAL_BASE_IMAGE):
            bootstrap_base_image(engine, log)
    return LOCAL_BASE_IMAGE
