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
  test/input/images/<track's folder>/*.tif   small synthetic stacks (CIDC25: calcium videos) in the real
                      layout; for the 2025 challenges with the inputs.json their templates write
  submission.json     name, image tag, challenge, track, models and their sha256, test cases
```

The pins and the torch wheel come from :mod:`~ai4life_kit.challenge.deps`, the kit's wheel from
:mod:`~ai4life_kit.challenge.kitwheel`; this module decides and writes the files.
"""

from __future__ import annotations

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
from pathlib import Path
from typing import Any

import numpy as np

from ai4life_kit.challenge.contract import DEFAULT_CHALLENGE, INPUTS_JSON, Challenge, Track, get_challenge
from ai4life_kit.challenge.deps import pinned_requirements, torch_pin, torch_wheel_for
from ai4life_kit.challenge.kitwheel import build_kit_wheel
from ai4life_kit.errors import ModelLoadError, UserInputError
from ai4life_kit.fileio import prepare_output_dir

__all__ = [
    "CONTEXT_FILE",
    "Context",
    "image_name",
    "load_context",
    "render_context",
    "write_test_inputs",
]

CONTEXT_FILE = "submission.json"
CONTEXT_FORMAT = 1
IMAGE_UID = 10001
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
    def challenge(self) -> Challenge:
        """The challenge it was built for (contexts of releases before 2025's: MDC24)."""
        return get_challenge(self.info.get("challenge", DEFAULT_CHALLENGE))

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


def _link_or_copy(src: Path, dst: Path) -> str:
    try:
        os.link(src, dst)
        return "hard-linked"
    except OSError:
        shutil.copyfile(src, dst)
        return "copied"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_test_inputs(folder: Path, track: Track, n_channels: int, seed: int = 0) -> list[dict[str, Any]]:
    """Small synthetic stacks in ``track``'s layout: a 540 x 540 one and an odd-sized one.

    Calcium (CIDC25): two simulated two-photon videos (:mod:`ai4life_kit.simulate.calcium`),
    ``(64, 128, 128)`` and ``(23, 75, 61)`` int16.

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

    if track.temporal:
        from ai4life_kit.simulate.calcium import simulate_calcium

        # Two-photon videos as CIDC25 sends them: int16, one of odd size and few frames.
        cases = [
            (f"video-{i}.tif", simulate_calcium(shape, seed=seed + i).noisy)
            for i, shape in enumerate([(64, 128, 128), (23, 75, 61)])
        ]
    elif track.name == "structured":
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


@dataclass(frozen=True)
class _Plan:
    """What :func:`render_context` decided; every file of the context is written from it."""

    out: Path
    """Where the context will live (named in its texts)."""
    name: str
    challenge: Challenge
    track: Track
    paths: list[Path]
    channels: list[int]
    """Each model's channel count, in channel order."""
    data_channels: int
    """Channels of the test stacks."""
    tta: bool
    requirements: list[str]
    torch_wheel: Path | None

    @property
    def torch_pin(self) -> str:
        return torch_pin(self.requirements)


def render_context(
    models: Sequence[Path],
    track: str | None,
    out: Path,
    *,
    challenge: str = DEFAULT_CHALLENGE,
    name: str | None = None,
    overwrite: bool = False,
    tta: bool = False,
    torch_wheel: Path | None = None,
    n_channels: Sequence[int] | None = None,
    log: Log = print,
) -> Context:
    """Write a build context for ``models`` (bioimage.io zips) on ``challenge``'s ``track`` into ``out``.

    ``track`` may be ``None`` for a challenge with one track (MDC25, CIDC25).

    ``n_channels`` (one per model) skips loading the models to learn their channel counts; by
    default every model is loaded with :func:`~ai4life_kit.challenge.runner.load_models`, which
    also proves it can be read without bioimageio.core, as in the image.
    """
    from ai4life_kit.challenge.runner import load_models

    chal = get_challenge(challenge)
    if track is None:
        if len(chal.tracks) > 1:
            raise UserInputError(f"{chal.name} has tracks {', '.join(chal.tracks)}: choose one with --track")
        track = next(iter(chal.tracks))
    if track not in chal.tracks:
        raise UserInputError(f"unknown track {track!r} for {chal.name}; use {' or '.join(chal.tracks)}")
    trk = chal.tracks[track]
    paths = [Path(m) for m in models]
    if not paths:
        raise UserInputError("give at least one model (.zip)")
    for p in paths:
        if not p.is_file():
            raise ModelLoadError(f"model {p} does not exist")
        if not zipfile.is_zipfile(p):
            raise ModelLoadError(f"model {p} is not a zip file (expected a bioimage.io package)")
    name = image_name(out, name)
    channels = list(n_channels) if n_channels is not None else [m.n_channels for m in load_models(paths, "cpu", chal)]
    data_channels = _data_channels(trk, channels)
    requirements = pinned_requirements()
    wheel = torch_wheel_for(torch_pin(requirements), torch_wheel)

    out = prepare_output_dir(Path(out), overwrite, is_ours=lambda p: (p / CONTEXT_FILE).is_file())
    plan = _Plan(out, name, chal, trk, paths, channels, data_channels, tta, requirements, wheel)
    log(f"writing build context {out}")
    # Written next to `out` and renamed into place: a failure never leaves half a context behind.
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _write_context(staging, plan, log)
        out.rmdir()
        os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return load_context(out)


def _data_channels(track: Track, channels: list[int]) -> int:
    """The test stacks' channel count for models with ``channels``; raise if they cannot serve ``track``."""
    from ai4life_kit.challenge.runner import channel_plan

    stand_ins = [_Channels(c) for c in channels]
    if track.temporal:  # (T, Y, X) videos: one channel
        channel_plan(stand_ins, 1, "a calcium video (T, Y, X)")
        return 1
    if track.name == "structured":
        # (S, Y, X) stacks have one channel: one 1-channel model.
        channel_plan(stand_ins, 1, "a structured-track stack (S, Y, X)")
        return 1
    data_channels = len(channels) if len(channels) > 1 else (channels[0] if channels[0] > 1 else 3)
    channel_plan(stand_ins, data_channels, "the test stack")
    return data_channels


def _write_context(dest: Path, plan: _Plan, log: Log) -> None:
    """Every file of the context into ``dest`` (``plan.out`` is where it will live)."""
    os.chmod(dest, 0o755)
    model_files = _copy_models(dest, plan.paths)
    sha = {f: _sha256(dest / f) for f in model_files}
    kit_wheel = _write_dependencies(dest, plan, log)
    trk = plan.track
    cases = write_test_inputs(dest / "test" / "input" / trk.input_dir, trk, plan.data_channels)
    if plan.challenge.name != DEFAULT_CHALLENGE:  # the 2025 templates describe their inputs in inputs.json
        listed = [
            {
                "image": {"name": c["path"]},
                "interface": {"slug": trk.interface, "kind": "Image", "relative_path": trk.input_dir},
            }
            for c in cases
        ]
        (dest / "test" / "input" / INPUTS_JSON).write_text(json.dumps(listed, indent=2) + "\n", encoding="utf-8")
    values = _template_values(plan, model_files, sha, kit_wheel.name)
    (dest / "Dockerfile").write_text(_render(_template("Dockerfile.in"), values), encoding="utf-8")
    (dest / "README.md").write_text(_render(_template("README.md.in"), values), encoding="utf-8")
    (dest / ".dockerignore").write_text(_template("dockerignore.in"), encoding="utf-8")
    info = _description(plan, model_files, sha, cases)
    (dest / CONTEXT_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def _copy_models(dest: Path, paths: list[Path]) -> list[str]:
    """The model zip(s) into ``model/``, in channel order; their paths relative to ``dest``."""
    (dest / "model").mkdir()
    model_files = []
    for i, p in enumerate(paths):
        fname = p.name if len(paths) == 1 else f"c{i}-{p.name}"
        shutil.copyfile(p, dest / "model" / fname)
        os.chmod(dest / "model" / fname, 0o644)
        model_files.append(f"model/{fname}")
    return model_files


def _write_dependencies(dest: Path, plan: _Plan, log: Log) -> Path:
    """``kit/`` (the kit's wheel, returned), ``wheels/`` (the torch wheel if any) and ``requirements.txt``."""
    import ai4life_kit

    (dest / "kit").mkdir()
    kit_wheel = build_kit_wheel(dest / "kit", log)
    (dest / "wheels").mkdir()
    (dest / "wheels" / "README.txt").write_text(
        "Wheels pip may install from (--find-links), e.g. the torch CPU wheel; may be empty.\n", encoding="utf-8"
    )
    wheel = plan.torch_wheel
    if wheel is not None:
        how = _link_or_copy(wheel, dest / "wheels" / wheel.name)
        log(f"  torch wheel {wheel.name} {how} into wheels/")
    else:
        log(f"  no local torch CPU wheel found: the build downloads {plan.torch_pin} from the PyTorch CPU index")
    # Nothing context-specific here: contexts with the same pins share the image's pip layer.
    header = (
        f"# Inference dependencies of an ai4life-kit {ai4life_kit.__version__} challenge image, pinned to the\n"
        "# versions it was tested with. torch is the CPU build (from wheels/ or the PyTorch CPU index).\n"
    )
    (dest / "requirements.txt").write_text(header + "\n".join(plan.requirements) + "\n", encoding="utf-8")
    return kit_wheel


def _template_values(plan: _Plan, model_files: list[str], sha: dict[str, str], kit_wheel: str) -> dict[str, str]:
    """The placeholders of the Dockerfile and README templates."""
    import ai4life_kit

    trk, paths, tta, out = plan.track, plan.paths, plan.tta, plan.out
    container_models = [f"/opt/app/{f}" for f in model_files]
    entry = ["ai4life-kit", "challenge", "run"]
    for m in container_models:
        entry += ["--model", m]
    entry += ["--input-root", "/input", "--output-root", "/output", "--challenge", plan.challenge.name]
    entry += ["--tta"] if tta else []
    return {
        "name": plan.name,
        "track": trk.name,
        "challenge": plan.challenge.name,
        "challenge_title": plan.challenge.title,
        "output_dir": trk.output_dir,
        "output_interface": trk.output_interface,
        "layout": trk.layout,
        "kit_version": ai4life_kit.__version__,
        "model_list": ", ".join(p.name for p in paths),
        "model_list_md": ", ".join(f"`{p.name}`" for p in paths),
        "model_files_md": ", ".join(f"`{f}`" for f in model_files),
        "model_sha256": ",".join(sha[f] for f in model_files),
        "model_args": " ".join(f"--model {m}" for m in container_models)
        + f" --challenge {plan.challenge.name}"
        + (" --tta" if tta else ""),
        "entrypoint": ", ".join(json.dumps(a) for a in entry),
        "entrypoint_shell": " ".join(entry),
        "kit_wheel": kit_wheel,
        "torch_pin": plan.torch_pin,
        "uid": str(IMAGE_UID),
        "interface": trk.interface,
        "input_dir": trk.input_dir,
        "context_arg": str(out),
        "build_command": " ".join(
            ["ai4life-kit challenge build", *(str(p) for p in paths)]
            + ([f"--challenge {plan.challenge.name}"] if plan.challenge.name != DEFAULT_CHALLENGE else [])
            + [f"--track {trk.name}", f"--out {out}"]
            + (["--tta"] if tta else [])
        ),
        "channel_rule": _channel_rule(trk, plan.channels),
    }


def _description(
    plan: _Plan, model_files: list[str], sha: dict[str, str], cases: list[dict[str, Any]]
) -> dict[str, Any]:
    """The context's ``submission.json``."""
    import ai4life_kit

    return {
        "format": CONTEXT_FORMAT,
        "name": plan.name,
        "image": f"{plan.name}:latest",
        "challenge": plan.challenge.name,
        "track": plan.track.name,
        "models": model_files,
        "model_sha256": sha,
        "model_channels": plan.channels,
        "tta": plan.tta,
        "kit_version": ai4life_kit.__version__,
        "torch": plan.torch_pin,
        "torch_wheel": plan.torch_wheel.name if plan.torch_wheel else None,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "test_cases": [{**c, "path": f"test/input/{plan.track.input_dir}/{c['path']}"} for c in cases],
    }


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
