"""The run directory contract: its files, the checkpoint and summary schemas, one reader and writer each.

Training writes a run directory; prediction, packaging, resume and ``--overwrite`` read it. This
module sits below all of them (it imports only :mod:`ai4life_kit.fileio`, :mod:`ai4life_kit.errors`
and torch) so that none of them has to import another to understand a run::

    RUN/
      ai4life-kit-run.json    RUN_MARKER: who made it, the files it trains on (written first)
      spec.yaml               the training recipe as run (a resume records what it changed)
      normalization.json      mean/std per channel, input and target (data.normalization)
      checkpoints/last.pt     TrainingState: weights, optimiser, scheduler, RNG, epoch (resume)
      checkpoints/best.pt     ModelCheckpoint: weights of the epoch with the lowest val_loss
      metrics.csv             one row per epoch (training.report)
      loss.png                loss curves
      training_summary.json   TrainingSummary: data, validation, timing
      uncertainty_calibration.json  probabilistic runs: interval factors fitted on the validation split

An ensemble (``train --ensemble K``) is a folder of K such run directories, one per seed::

    ENSEMBLE/
      ai4life-kit-ensemble.json   ENSEMBLE_MARKER: who made it, its members and their seeds (written first)
      member-1/ ... member-K/     run directories as above

Every schema carries ``format_version`` (:data:`FORMAT_VERSION`); files without one were written
by releases before it and load the same way. Checkpoints are read with ``weights_only=True``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from ai4life_kit.errors import ModelLoadError
from ai4life_kit.fileio import atomic_write_text

__all__ = [
    "BEST_CHECKPOINT",
    "CALIBRATION_FILE",
    "PAIRS_PLOT",
    "ENSEMBLE_MARKER",
    "CHECKPOINT_DIR",
    "FORMAT_VERSION",
    "LAST_CHECKPOINT",
    "METRICS_FILE",
    "NORMALIZATION_FILE",
    "RUN_ENTRIES",
    "RUN_LOCK",
    "RUN_MARKER",
    "SPEC_FILE",
    "SUMMARY_FILE",
    "ModelCheckpoint",
    "TrainingState",
    "TrainingSummary",
    "checkpoint_path",
    "is_ensemble_dir",
    "is_kit_checkpoint",
    "member_dir",
    "read_ensemble",
    "is_run_dir",
    "load_checkpoint",
    "read_marker",
    "read_summary",
    "write_summary",
]

FORMAT_VERSION = 1
"""Version of the run directory's schemas (marker, checkpoints, summary); absent means before 1."""

RUN_MARKER = "ai4life-kit-run.json"
"""Written first into every new run directory: what makes a folder one that --overwrite may replace."""
ENSEMBLE_MARKER = "ai4life-kit-ensemble.json"
"""Written first into an ensemble's folder: its member run directories and their seeds."""
RUN_LOCK = ".ai4life-kit.lock"
"""Held (``flock``) by the one process that trains into a run directory; deleted when it is done."""
SPEC_FILE = "spec.yaml"
NORMALIZATION_FILE = "normalization.json"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
METRICS_FILE = "metrics.csv"
LOSS_PLOT = "loss.png"
SUMMARY_FILE = "training_summary.json"
CALIBRATION_FILE = "uncertainty_calibration.json"
"""Probabilistic runs: per-level interval factors fitted on the validation split (training.calibration)."""
PAIRS_PLOT = "training_pairs.png"
"""Restoration tasks: example training pairs (input made by the degradation model | target)."""
RUN_ENTRIES = (
    RUN_MARKER,
    SPEC_FILE,
    NORMALIZATION_FILE,
    CHECKPOINT_DIR,
    METRICS_FILE,
    LOSS_PLOT,
    SUMMARY_FILE,
    CALIBRATION_FILE,
    PAIRS_PLOT,
)
"""Everything training writes at the top of a run directory, and so all that --overwrite deletes."""


def checkpoint_path(run_dir: Path, which: str = "best") -> Path:
    """``RUN/checkpoints/best.pt`` or ``last.pt``."""
    if which not in ("best", "last"):
        raise ValueError(f"checkpoint {which!r}: best or last")
    return Path(run_dir) / CHECKPOINT_DIR / (BEST_CHECKPOINT if which == "best" else LAST_CHECKPOINT)


# -- checkpoints ------------------------------------------------------------------------------


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint dict with ``weights_only=True`` (never unpickles arbitrary objects).

    Raises
    ------
    ModelLoadError
        Missing, unreadable, or not an ai4life-kit checkpoint (``model_args`` and ``model_state``).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"checkpoint {path} does not exist (has training finished an epoch?)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated / foreign files
        raise ModelLoadError(f"checkpoint {path} cannot be loaded ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or "model_args" not in ckpt or "model_state" not in ckpt:
        raise ModelLoadError(f"checkpoint {path} is not an ai4life-kit checkpoint")
    version = ckpt.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelLoadError(
            f"checkpoint {path} has format_version {version!r}; this ai4life-kit reads up to {FORMAT_VERSION}: upgrade"
        )
    return ckpt


def is_kit_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a checkpoint ai4life-kit wrote (loadable, with the kit's keys)."""
    if not Path(path).is_file():
        return False
    try:
        load_checkpoint(path)
    except ModelLoadError:
        return False
    return True


@dataclasses.dataclass
class ModelCheckpoint:
    """``best.pt``: what prediction and packaging need, the weights of the best epoch."""

    model_args: dict[str, Any]
    model_state: dict[str, Any]
    epoch: int | None = None
    val_loss: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def read(cls, path: Path) -> ModelCheckpoint:
        """Any kit checkpoint (``best.pt`` or ``last.pt``) as its model part."""
        ckpt = load_checkpoint(path)
        epoch = ckpt.get("epoch")
        val_loss = ckpt.get("val_loss")
        return cls(
            model_args=dict(ckpt["model_args"]),
            model_state=dict(ckpt["model_state"]),
            epoch=int(epoch) if isinstance(epoch, (int, float)) else None,
            val_loss=float(val_loss) if isinstance(val_loss, (int, float)) else None,
        )


@dataclasses.dataclass
class TrainingState:
    """``last.pt``: everything a resume needs to continue exactly where the run stopped.

    ``rng_state`` is rank 0's generator (what single-process resumes and older versions read),
    ``rng_states`` every rank's.
    """

    model_args: dict[str, Any]
    model_state: dict[str, Any]
    optimizer_state: dict[str, Any]
    scheduler_state: dict[str, Any]
    epoch: int
    global_step: int
    best_val_loss: float
    epochs_without_improvement: int
    rng_state: Any
    rng_states: list[Any]
    world_size: int = 1
    ema_state: dict[str, Any] | None = None  # the averaged weights (training.ema_decay), None without

    def to_dict(self) -> dict[str, Any]:
        # Shallow on purpose: asdict would deep-copy every weight tensor of the state dicts.
        return {"format_version": FORMAT_VERSION, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}}

    @classmethod
    def read(cls, path: Path) -> TrainingState:
        """``last.pt`` of a run; a checkpoint without the resume fields is a one-line error."""
        ckpt = load_checkpoint(path)
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in ckpt and n not in ("rng_states", "world_size", "ema_state")]
        if missing:
            raise ModelLoadError(f"{path} cannot be resumed from: it has no {', '.join(missing)}")
        values = {n: ckpt[n] for n in names if n in ckpt}
        values.setdefault("rng_states", [ckpt["rng_state"]])
        return cls(**values)


# -- marker and summary -----------------------------------------------------------------------


def read_marker(run_dir: Path) -> dict | None:
    """The run directory's marker, or ``None`` if it has none (or one not written by the kit)."""
    try:
        marker = json.loads((Path(run_dir) / RUN_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("created_by") == "ai4life-kit" else None


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` is a run directory this tool created (safe to replace with --overwrite).

    New run directories carry :data:`RUN_MARKER`; those of versions before it are recognised by
    their ``spec.yaml`` next to an ai4life-kit ``checkpoints/last.pt`` or ``best.pt``. A folder with
    just a ``checkpoints/`` (a PyTorch Lightning run, say) is not ours.
    """
    path = Path(path)
    if not path.is_dir():
        return False
    if read_marker(path) is not None:
        return True
    return (path / SPEC_FILE).is_file() and any(is_kit_checkpoint(checkpoint_path(path, w)) for w in ("last", "best"))


@dataclasses.dataclass
class TrainingSummary:
    """``training_summary.json``: what was trained on, how, and the best validation numbers.

    ``files`` / ``target_files`` are the resolved absolute image files (packaging reads its test
    tensors from them); ``data_arguments`` / ``target_arguments`` what the command line said.
    """

    algorithm: str
    files: list[str]
    target_files: list[str] | None
    data_arguments: list[str]
    target_arguments: list[str] | None
    inputs: list[dict[str, Any]]
    targets: list[dict[str, Any]] | None
    validation: str
    n_channels: int
    data_loading: str
    processes: int
    epochs_run: int
    early_stopped: bool
    steps: int
    best_epoch: int | None
    val_loss: float | None
    val_psnr: float | None
    device: str
    seconds_this_session: float

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, **dataclasses.asdict(self)}


def write_summary(summary: TrainingSummary, run_dir: Path) -> None:
    """Write ``training_summary.json`` atomically."""
    atomic_write_text(Path(run_dir) / SUMMARY_FILE, json.dumps(summary.to_dict(), indent=2, default=str))


def read_summary(run_dir: Path) -> dict[str, Any]:
    """``training_summary.json`` as a dict ({} when absent), validated as a JSON object.

    A dict, not a :class:`TrainingSummary`: summaries of older releases lack fields or name them
    differently, and their readers (packaging's docs and test data) handle each case.
    """
    from ai4life_kit.data.normalization import read_json_object

    return read_json_object(Path(run_dir) / SUMMARY_FILE, required=False)


# -- ensembles --------------------------------------------------------------------------------


def member_dir(ensemble_dir: Path, index: int) -> Path:
    """``ENSEMBLE/member-<index>`` (1-based)."""
    return Path(ensemble_dir) / f"member-{index}"


def read_ensemble(path: Path) -> dict | None:
    """An ensemble folder's marker (``members``: folder names, ``seeds``), or ``None`` if ``path`` is none."""
    try:
        marker = json.loads((Path(path) / ENSEMBLE_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("created_by") != "ai4life-kit":
        return None
    members = marker.get("members")
    if not isinstance(members, list) or not all(isinstance(m, str) and "/" not in m for m in members):
        return None
    return marker


def is_ensemble_dir(path: Path) -> bool:
    """Whether ``path`` is an ensemble folder this tool created (``train --ensemble``)."""
    return Path(path).is_dir() and read_ensemble(path) is not None
