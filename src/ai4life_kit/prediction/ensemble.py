"""Ensembles: K members' predictions averaged, and where they disagree (``train --ensemble K``).

The ensemble's output is the mean of its members' outputs. Its uncertainty maps:

- deterministic members (N2V, N2V2, structN2V, MAE CARE / Noise2Noise): ``std``, the members'
  standard deviation per pixel (ddof 1), read as a normal distribution's sigma by calibration;
- probabilistic members (``algorithm.loss: laplace``): ``scale``, the Laplace scale with the
  members' mixture's mean absolute deviation (:func:`ai4life_kit.laplace.ensemble_scale`:
  their own uncertainty plus their disagreement), and ``disagreement``, the per-pixel
  Jensen-Shannon divergence ``D`` in bits (:func:`ai4life_kit.laplace.ensemble_disagreement`).

The spread of deterministic members is what the ensemble does not know (epistemic); it is not
the noise of the measurement and is usually smaller than the error.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ai4life_kit.errors import ModelLoadError, UserInputError
from ai4life_kit.laplace import ensemble_disagreement, ensemble_scale
from ai4life_kit.prediction.predictor import Predictor
from ai4life_kit.prediction.restoration import RestorationPredictor
from ai4life_kit.rundir import is_ensemble_dir, read_ensemble

__all__ = ["EnsemblePredictor", "load_model"]


class EnsemblePredictor:
    """The members of an ensemble as one predictor: :meth:`predict` gives their mean.

    Parameters
    ----------
    members
        :class:`Predictor` objects of the same kind (dimensions, channels, probabilistic or not).
    names
        The members' names, for messages.
    """

    def __init__(self, members: Sequence[Predictor], names: Sequence[str] | None = None) -> None:
        if len(members) < 2:
            raise ModelLoadError(f"an ensemble needs at least 2 members, got {len(members)}")
        self.members = list(members)
        self.names = list(names or [f"member-{i}" for i in range(1, len(members) + 1)])
        first = self.members[0]
        for name, m in zip(self.names[1:], self.members[1:], strict=True):
            kind = (m.spatial_ndim, m.n_channels, len(m.target_mean), m.probabilistic)
            if kind != (first.spatial_ndim, first.n_channels, len(first.target_mean), first.probabilistic):
                raise ModelLoadError(f"ensemble member {name} is not the same kind of model as {self.names[0]}")
        self.spatial_ndim = first.spatial_ndim
        self.probabilistic = first.probabilistic
        self.algorithm = first.algorithm

    @classmethod
    def from_dir(cls, path: Path, device: str | torch.device = "auto", checkpoint: str = "best") -> EnsemblePredictor:
        """Load every member of an ensemble folder (``best`` or ``last`` checkpoints)."""
        marker = read_ensemble(path)
        if marker is None:
            raise ModelLoadError(f"{path} is not an ai4life-kit ensemble")
        missing = [n for n in marker["members"] if not (Path(path) / n / "checkpoints").is_dir()]
        if missing:
            raise ModelLoadError(
                f"ensemble {path}: member(s) {', '.join(missing)} not trained yet (train ... --ensemble --resume)"
            )
        members = [Predictor.from_run_dir(Path(path) / n, device, checkpoint) for n in marker["members"]]
        return cls(members, marker["members"])

    @property
    def n_channels(self) -> int:
        return self.members[0].n_channels

    @property
    def border(self) -> str:
        return self.members[0].border

    @border.setter
    def border(self, value: str) -> None:
        for m in self.members:
            m.border = value

    @property
    def engine(self) -> str:
        return self.members[0].engine

    @engine.setter
    def engine(self, value: str) -> None:
        for m in self.members:
            m.engine = value

    def check_input(self, shape: tuple[int, ...], axes: str) -> Any:
        return self.members[0].check_input(shape, axes)

    def n_tiles(self, shape: tuple[int, ...], axes: str, tile: Sequence[int] | None = None, batch_size: int = 4) -> int:
        """Tiles of all members together (progress bars)."""
        return len(self.members) * self.members[0].n_tiles(shape, axes, tile, batch_size)

    def member_predictions(self, array: np.ndarray, axes: str, **options: Any) -> tuple[np.ndarray, np.ndarray | None]:
        """Every member's output, stacked on a new first axis; and their Laplace scales (probabilistic members)."""
        means, scales = [], []
        for m in self.members:
            if self.probabilistic:
                mean, scale = m.predict_with_scale(array, axes, **options)
                scales.append(scale)
            else:
                mean = m.predict(array, axes, **options)
            means.append(mean)
        return np.stack(means), (np.stack(scales) if scales else None)

    def predict(self, array: np.ndarray, axes: str, **options: Any) -> np.ndarray:
        """The mean of the members' outputs, shaped as ``array`` (options: :meth:`Predictor.predict`'s)."""
        means, _ = self.member_predictions(array, axes, **options)
        return means.mean(axis=0, dtype=np.float64).astype(np.float32)

    @staticmethod
    def combine(means: np.ndarray, scales: np.ndarray | None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The ensemble mean and its uncertainty maps (module docstring) from :meth:`member_predictions`."""
        mean = means.mean(axis=0, dtype=np.float64).astype(np.float32)
        if scales is None:
            return mean, {"std": means.std(axis=0, ddof=1, dtype=np.float64).astype(np.float32)}
        return mean, {"scale": ensemble_scale(means, scales), "disagreement": ensemble_disagreement(means, scales)}

    def predict_with_uncertainty(
        self, array: np.ndarray, axes: str, **options: Any
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The ensemble mean and its uncertainty maps (module docstring), each shaped as ``array``."""
        return self.combine(*self.member_predictions(array, axes, **options))

    def predict_to(self, *args: Any, **kwargs: Any) -> Path:
        raise UserInputError("an ensemble predicts in memory, one image at a time: leave out --out-of-core and Zarr")


def load_model(
    model: Path, device: str | torch.device = "auto"
) -> Predictor | EnsemblePredictor | RestorationPredictor:
    """A run directory, an ensemble folder (``train --ensemble``) or a ``.zip`` package.

    A run directory trained for super-resolution or isotropic reconstruction comes as a
    :class:`~ai4life_kit.prediction.restoration.RestorationPredictor` (its output is resampled).
    """
    model = Path(model)
    if is_ensemble_dir(model):
        return EnsemblePredictor.from_dir(model, device)
    predictor = Predictor.load(model, device)
    if predictor.task is not None and predictor.task.resamples:
        return RestorationPredictor(predictor, predictor.task)
    return predictor
