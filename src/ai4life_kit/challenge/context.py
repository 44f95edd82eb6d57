"""Render a self-explaining build context for a challenge submission from bioimage.io zip(s).

```
OUT/
  Dockerfile          FROM ${BASE_IMAGE} (python:3.11-slim-bookworm), venv, pinned deps, kit, model
  .dockerignore       only Dockerfile, requirements.txt, wheels/, kit/ and model/ reach the build
  README.md           what the container does; build, test, save and upload steps
  requirements.txt    inference dependencies pinned to this machine's versions (torch: CPU build)
  kit/ai4life_kit-VERSION-py3-none-any.whl   this very ai4life-kit source, installed --no-deps
  model/NAME.zip      the packaged model(s), unchanged
  wheels/             the torch CPU wheel, hard-linked when found locally (else pip downloads it)
  test/input/images/image-stack-<track>-noise/*.tif   small synthetic stacks in the real layout
  submission.json     name, image tag, track, models and their sha256, test cases
```
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any

import numpy as np

from ai4life_kit.challenge.contract import TRACKS, Track
from ai4life_kit.errors import ModelLoadError, UserInputError
from ai4life_kit.fileio import prepare_output_dir

__all__ = [
    "CONTEXT_FILE",
    "INFERENCE_PACKAGES",
    "Context",
    "build_kit_wheel",
    "find_torch_wheel",
    "load_context",
    "pinned_requirements",
    "render_context",
    "write_test_inputs",
]

CONTEXT_FILE = "submission.json"
CONTEXT_FORMAT = 1
IMAGE_UID = 10001
PYTHON_TAG = "cp311"
"""The image's Python (python:3.11-slim and Debian bookworm's python3)."""
INFERENCE_PACKAGES = ("torch", "numpy", "tifffile", "PyYAML", "typer", "rich")
"""What the entry point imports; everything else of ai4life-kit's dependencies stays out."""
_SKIP_PREFIXES = ("nvidia-", "triton", "cuda-")  # GPU-only dependencies of CUDA torch builds
# The image's environment, for requirement markers.
_TARGET_MARKERS = {
    "python_version": "3.11",
    "python_full_version": "3.11.2",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "os_name": "posix",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "platform_release": "",
    "platform_version": "",
    "implementation_version": "3.11.2",
    "extra": "",
}
_NAME_RE = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")

Log = Callable[[str], None]


@dataclass(frozen=True)
class Context:
    """A rendered build context, as described by its ``submission.json``."""

    path: Path
    name: str
    image: str
    track: str
    models: tuple[str, ...]
    """Paths relative to the context."""
    info: dict[str, Any]

    @property
    def test_input(self) -> Path:
        return self.path / "test" / "input"

    @property
    def archive(self) -> Path:
        """Default ``challenge save`` output: ``<name>.tar.gz`` next to the context folder."""
        return self.path.parent / f"{self.name}.tar.gz"


def load_context(path: Path) -> Context:
    """Read a build context written by :func:`render_context`."""
    path = Path(path)
    meta = path / CONTEXT_FILE
    if not meta.is_file():
        raise UserInputError(f"{path} is not a challenge build context (no {CONTEXT_FILE}; run `challenge build`)")
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
        ctx = Context(path, info["name"], info["image"], info["track"], tuple(info["models"]), info)
    except (ValueError, KeyError, TypeError) as exc:
        raise UserInputError(f"{meta} is not a valid context description ({type(exc).__name__}: {exc})") from None
    missing = [m for m in ("Dockerfile", *ctx.models) if not (path / m).is_file()]
    if missing:
        raise UserInputError(f"build context {path} lacks {', '.join(missing)}; rebuild it with `challenge build`")
    return ctx


# -- pieces ---------------------------------------------------------------------------------------


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_class() -> Any:
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pip always vendors it
        from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]
    return Requirement


def torch_requirement(version: str) -> str:
    """``torch==X.Y.Z+cpu`` for the installed torch's release: only the CPU build, never CUDA."""
    return f"torch=={version.split('+')[0]}+cpu"


def pinned_requirements(packages: Sequence[str] = INFERENCE_PACKAGES) -> list[str]:
    """``name==version`` for ``packages`` and everything they need in the image, from this machine.

    Requirement markers are evaluated for the image (Linux x86_64, CPython 3.11); CUDA-only
    dependencies are left out and torch is pinned to its CPU build.
    """
    requirement_cls = _requirement_class()
    pins: dict[str, str] = {}
    queue = list(packages)
    while queue:
        name = queue.pop(0)
        key = _canonical(name)
        if key in pins or key.startswith(_SKIP_PREFIXES):
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            pins[key] = name  # unpinned: not installed here, so pip resolves it in the image
            continue
        proper = dist.metadata["Name"] or name
        pins[key] = torch_requirement(dist.version) if key == "torch" else f"{proper}=={dist.version}"
        for text in dist.requires or []:
            req = requirement_cls(text)
            if req.marker is None or req.marker.evaluate(_TARGET_MARKERS):
                queue.append(req.name)
    return [pins[k] for k in sorted(pins)]


def _pip_find_links() -> list[str]:
    """pip's ``find-links`` folders: ``$PIP_FIND_LINKS`` and the site/user ``pip.conf`` files."""
    import configparser

    folders = os.environ.get("PIP_FIND_LINKS", "").split()
    home = Path.home()
    for conf in (Path("/etc/pip.conf"), home / ".config" / "pip" / "pip.conf", home / ".pip" / "pip.conf"):
        parser = configparser.ConfigParser()
        try:
            parser.read(conf, encoding="utf-8")
        except (OSError, configparser.Error):
            continue
        folders += parser.get("global", "find-links", fallback="").split()
    return folders


def find_torch_wheel(requirement: str) -> Path | None:
    """A local CPU torch wheel matching ``torch==X+cpu`` for cp311 / x86_64, if this machine has one.

    Looks in ``$AI4LIFE_KIT_WHEELS``, pip's ``find-links`` folders and ``/opt/wheels``.
    """
    version = requirement.split("==", 1)[1]
    folders = os.environ.get("AI4LIFE_KIT_WHEELS", "").replace(os.pathsep, " ").split()
    folders += [*_pip_find_links(), "/opt/wheels"]
    for folder in folders:
        folder = folder.removeprefix("file://")
        if not Path(folder).is_dir():
            continue
        hits = sorted(Path(folder).glob(f"torch-{version}-{PYTHON_TAG}-{PYTHON_TAG}-*linux*_x86_64.whl"))
        if hits:
            return hits[-1]
    return None


def _link_or_copy(src: Path, dst: Path) -> str:
    try:
        os.link(src, dst)
        return "hard-linked"
    except OSError:
        shutil.copyfile(src, dst)
        return "copied"


def build_kit_wheel(dest_dir: Path) -> Path:
    """A pure-Python wheel of the installed ai4life-kit source (deterministic bytes, no build tools).

    Only the package is included (no tests, no caches); dependencies are not declared because the
    image installs them from ``requirements.txt`` and the kit with ``--no-deps``.
    """
    import ai4life_kit

    pkg = Path(ai4life_kit.__file__).resolve().parent
    version = ai4life_kit.__version__
    dist_info = f"ai4life_kit-{version}.dist-info"
    wheel = Path(dest_dir) / f"ai4life_kit-{version}-py3-none-any.whl"
    files = sorted(
        p for p in pkg.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
    )
    metadata = (
        "Metadata-Version: 2.1\nName: ai4life-kit\n"
        f"Version: {version}\nSummary: ai4life-kit (built into a challenge submission image)\n"
        "Requires-Python: >=3.10\n"
    )
    meta_files = {
        "METADATA": metadata,
        "WHEEL": "Wheel-Version: 1.0\nGenerator: ai4life-kit\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        "entry_points.txt": "[console_scripts]\nai4life-kit = ai4life_kit.cli.app:main\n",
        "top_level.txt": "ai4life_kit\n",
    }
    records: list[str] = []
    with zipfile.ZipFile(wheel, "w") as zf:

        def add(arcname: str, data: bytes) -> None:
            info = zipfile.ZipInfo(arcname, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            records.append(f"{arcname},sha256={digest},{len(data)}")

        for f in files:
            add("ai4life_kit/" + f.relative_to(pkg).as_posix(), f.read_bytes())
        for fname, text in meta_files.items():
            add(f"{dist_info}/{fname}", text.encode())
        records.append(f"{dist_info}/RECORD,,")
        add_record = zipfile.ZipInfo(f"{dist_info}/RECORD", date_time=(1980, 1, 1, 0, 0, 0))
        add_record.external_attr = 0o644 << 16
        zf.writestr(add_record, "\n".join(records) + "\n")
    return wheel


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_test_inputs(folder: Path, track: Track, n_channels: int, seed: int = 0) -> list[dict[str, Any]]:
    """Small synthetic stacks in ``track``'s layout: a 540 x 540 one and an odd-sized one.

    Structured: ``(3, 540, 540)`` uint16 with row-correlated noise and ``(2, 257, 131)`` float32
    (``.tiff``). Unstructured: ``(2, C, 540, 540)`` int16 with negative values and
    ``(1, C, 203, 97)`` uint16. 540 is not a multiple of 16, as in the JUMP data.
    """
    import tifffile

    from ai4life_kit.simulate import add_noise, simulate_ground_truth

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)

    def stack(shape: tuple[int, ...], structured: bool) -> np.ndarray:
        noise = "row" if structured else "none"
        planes = [
            add_noise(simulate_ground_truth(shape[-2:], rng, peak=1500.0), rng, structured_noise=noise)
            for _ in range(int(np.prod(shape[:-2])))
        ]
        return np.stack(planes).reshape(shape)

    if track.name == "structured":
        cases = [
            ("stack-540.tif", stack((3, 540, 540), True)),
            ("stack-odd.tiff", stack((2, 257, 131), True).astype(np.float32)),
        ]
    else:
        int16 = (stack((2, n_channels, 540, 540), False).astype(np.int32) - 400).astype(np.int16)
        cases = [
            ("stack-540-int16.tif", int16),
            ("stack-odd.tif", stack((1, n_channels, 203, 97), False)),
        ]
    described = []
    for name, data in cases:
        path = folder / name
        tifffile.imwrite(path, data, resolution=(1.0, 1.0), resolutionunit="CENTIMETER")
        described.append({"path": path.name, "shape": list(data.shape), "dtype": str(data.dtype)})
    return described


def _template(name: str) -> str:
    return resources.files("ai4life_kit.challenge").joinpath("templates", name).read_text(encoding="utf-8")


def _render(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    left = re.findall(r"\{\{\w+\}\}", text)
    if left:
        raise RuntimeError(f"template placeholders without a value: {sorted(set(left))}")
    return text


def image_name(out: Path, name: str | None) -> str:
    """The image and archive name: ``name`` or the output folder's name, checked for docker."""
    if name is None:
        name = re.sub(r"[^a-z0-9._-]+", "-", Path(out).resolve().name.lower()).strip("-._")
    if not _NAME_RE.match(name) or len(name) > 100:
        raise UserInputError(
            f"image name {name!r} is not valid: use lowercase letters, digits and single . _ - between them (--name)"
        )
    return name


# -- the context ----------------------------------------------------------------------------------


def render_context(
    models: Sequence[Path],
    track: str,
    out: Path,
    *,
    name: str | None = None,
    overwrite: bool = False,
    tta: bool = False,
    torch_wheel: Path | None = None,
    n_channels: Sequence[int] | None = None,
    log: Log = print,
) -> Context:
    """Write a build context for ``models`` (bioimage.io zips) on ``track`` into ``out``.

    ``n_channels`` (one per model) skips loading the models to learn their channel counts; by
    default every model is loaded with :func:`~ai4life_kit.challenge.runner.load_models`, which
    also proves it can be read without bioimageio.core, as in the image.
    """
    from ai4life_kit.challenge.runner import channel_plan, load_models

    if track not in TRACKS:
        raise UserInputError(f"unknown track {track!r}; use one of {', '.join(TRACKS)}")
    trk = TRACKS[track]
    paths = [Path(m) for m in models]
    if not paths:
        raise UserInputError("give at least one model (.zip)")
    for p in paths:
        if not p.is_file():
            raise ModelLoadError(f"model {p} does not exist")
        if not zipfile.is_zipfile(p):
            raise ModelLoadError(f"model {p} is not a zip file (expected a bioimage.io package)")
    name = image_name(out, name)
    channels = list(n_channels) if n_channels is not None else [m.n_channels for m in load_models(paths)]
    if trk.name == "structured":
        # (S, Y, X) stacks have one channel: one 1-channel model.
        channel_plan([_Channels(c) for c in channels], 1, "a structured-track stack (S, Y, X)")
        data_channels = 1
    else:
        data_channels = len(channels) if len(channels) > 1 else (channels[0] if channels[0] > 1 else 3)
        channel_plan([_Channels(c) for c in channels], data_channels, "the test stack")

    requirements = pinned_requirements()
    torch_pin = next(r for r in requirements if r.startswith("torch=="))
    wheel = Path(torch_wheel) if torch_wheel else find_torch_wheel(torch_pin)
    if torch_wheel is not None:
        wanted = f"torch-{torch_pin.split('==')[1]}-{PYTHON_TAG}-"
        if not wheel.is_file() or not wheel.name.startswith(wanted):
            raise UserInputError(f"torch wheel {torch_wheel} is not a {wanted}*.whl file (the image pins {torch_pin})")

    out = prepare_output_dir(Path(out), overwrite, is_ours=lambda p: (p / CONTEXT_FILE).is_file())
    log(f"writing build context {out}")
    # Written next to `out` and renamed into place: a failure never leaves half a context behind.
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _write_context(staging, out, name, trk, paths, channels, data_channels, requirements, wheel, tta, log)
        out.rmdir()
        os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return load_context(out)


def _write_context(
    dest: Path,
    out: Path,
    name: str,
    trk: Track,
    paths: list[Path],
    channels: list[int],
    data_channels: int,
    requirements: list[str],
    wheel: Path | None,
    tta: bool,
    log: Log,
) -> None:
    """Every file of the context into ``dest`` (``out`` is where it will live, for the texts)."""
    import ai4life_kit

    os.chmod(dest, 0o755)
    torch_pin = next(r for r in requirements if r.startswith("torch=="))
    # model(s), in channel order
    (dest / "model").mkdir()
    model_files = []
    for i, p in enumerate(paths):
        fname = p.name if len(paths) == 1 else f"c{i}-{p.name}"
        shutil.copyfile(p, dest / "model" / fname)
        os.chmod(dest / "model" / fname, 0o644)
        model_files.append(f"model/{fname}")
    sha = {f: _sha256(dest / f) for f in model_files}
    # the kit, the requirements, the torch wheel
    (dest / "kit").mkdir()
    kit_wheel = build_kit_wheel(dest / "kit")
    (dest / "wheels").mkdir()
    (dest / "wheels" / "README.txt").write_text(
        "Wheels pip may install from (--find-links), e.g. the torch CPU wheel; may be empty.\n", encoding="utf-8"
    )
    if wheel is not None:
        how = _link_or_copy(wheel, dest / "wheels" / wheel.name)
        log(f"  torch wheel {wheel.name} {how} into wheels/")
    else:
        log(f"  no local torch CPU wheel found: the build downloads {torch_pin} from the PyTorch CPU index")
    # Nothing context-specific here: contexts with the same pins share the image's pip layer.
    header = (
        f"# Inference dependencies of an ai4life-kit {ai4life_kit.__version__} challenge image, pinned to the\n"
        "# versions it was tested with. torch is the CPU build (from wheels/ or the PyTorch CPU index).\n"
    )
    (dest / "requirements.txt").write_text(header + "\n".join(requirements) + "\n", encoding="utf-8")
    cases = write_test_inputs(dest / "test" / "input" / trk.input_dir, trk, data_channels)
    # Dockerfile, README, .dockerignore
    container_models = [f"/opt/app/{f}" for f in model_files]
    entry = ["ai4life-kit", "challenge", "run"]
    for m in container_models:
        entry += ["--model", m]
    entry += ["--input-root", "/input", "--output-root", "/output"] + (["--tta"] if tta else [])
    values = {
        "name": name,
        "track": trk.name,
        "kit_version": ai4life_kit.__version__,
        "model_list": ", ".join(p.name for p in paths),
        "model_list_md": ", ".join(f"`{p.name}`" for p in paths),
        "model_files_md": ", ".join(f"`{f}`" for f in model_files),
        "model_sha256": ",".join(sha[f] for f in model_files),
        "model_args": " ".join(f"--model {m}" for m in container_models) + (" --tta" if tta else ""),
        "entrypoint": ", ".join(json.dumps(a) for a in entry),
        "entrypoint_shell": " ".join(entry),
        "kit_wheel": kit_wheel.name,
        "torch_pin": torch_pin,
        "uid": str(IMAGE_UID),
        "interface": trk.interface,
        "input_dir": trk.input_dir,
        "context_arg": str(out),
        "build_command": " ".join(
            ["ai4life-kit challenge build", *(str(p) for p in paths), f"--track {trk.name}", f"--out {out}"]
            + (["--tta"] if tta else [])
        ),
        "channel_rule": _channel_rule(trk, channels),
    }
    (dest / "Dockerfile").write_text(_render(_template("Dockerfile.in"), values), encoding="utf-8")
    (dest / "README.md").write_text(_render(_template("README.md.in"), values), encoding="utf-8")
    (dest / ".dockerignore").write_text(_template("dockerignore.in"), encoding="utf-8")
    info = {
        "format": CONTEXT_FORMAT,
        "name": name,
        "image": f"{name}:latest",
        "track": trk.name,
        "models": model_files,
        "model_sha256": sha,
        "model_channels": channels,
        "tta": tta,
        "kit_version": ai4life_kit.__version__,
        "torch": torch_pin,
        "torch_wheel": wheel.name if wheel else None,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "test_cases": [{**c, "path": f"test/input/{trk.input_dir}/{c['path']}"} for c in cases],
    }
    (dest / CONTEXT_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


@dataclass(frozen=True)
class _Channels:
    """Stands in for a model in :func:`channel_plan` when only its channel count matters."""

    n_channels: int

    def predict(self, array: np.ndarray, axes: str, **options: Any) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError


def _channel_rule(track: Track, channels: list[int]) -> str:
    if len(channels) > 1:
        return f"one 1-channel model per channel, in order ({len(channels)} channels)"
    if channels[0] == 1:
        rule = "a 1-channel model"
        return rule + (", applied to each channel separately" if track.name == "unstructured" else "")
    return f"one {channels[0]}-channel model applied to all channels at once"
