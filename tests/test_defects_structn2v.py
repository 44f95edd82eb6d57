"""Defects: structN2V masking, the torch floor, the trust note of ``validate --help``.

The struct mask hides its line, and nothing on that line reaches the blind spot: the images hold
``arange`` values, all distinct, so the origin of every value in the masked input can be told
from the value alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

import ai4life_kit.training.session as session
from ai4life_kit.data.masking import MaskSpec, mask_batch
from ai4life_kit.training import train
from kit_helpers import invoke, small_spec

CASES = [  # (shape, struct axis)
    ((4, 2, 48, 40), -1),
    ((4, 2, 48, 40), -2),
    ((2, 1, 12, 24, 20), -1),
    ((2, 1, 12, 24, 20), -3),
]
IDS = [f"{len(s) - 2}d-axis{a}" for s, a in CASES]
SPAN = 5


def _unique_image(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.arange(int(np.prod(shape)), dtype=torch.float32).reshape(shape)


def _struct_lines(x: torch.Tensor, mask: torch.Tensor, axis: int, span: int):
    """Per blind spot: coordinates ``(N, span, ndim)`` of its struct line and which lie inside."""
    centres = mask.nonzero()  # (N, ndim)
    steps = torch.arange(-(span // 2), span // 2 + 1)
    coords = centres[:, None, :].repeat(1, steps.numel(), 1)
    coords[..., x.ndim + axis] += steps
    inside = (coords[..., x.ndim + axis] >= 0) & (coords[..., x.ndim + axis] < x.shape[axis])
    return centres, coords.clamp(min=0).minimum(torch.tensor(x.shape) - 1), inside


@pytest.mark.parametrize(("shape", "axis"), CASES, ids=IDS)
@pytest.mark.parametrize("replacement", ["uniform", "median"])
def test_struct_mask_overwrites_every_pixel_of_the_struct_line(shape, axis, replacement):
    """(a) No pixel on the struct line of a blind spot keeps its original (noisy) value."""
    x = _unique_image(shape)
    spec = MaskSpec(2.0, 5, replacement, struct_axis=axis, struct_span=SPAN)
    masked, mask = mask_batch(x, spec, torch.Generator().manual_seed(0))
    _, coords, inside = _struct_lines(x, mask, axis, SPAN)
    assert mask.sum() > 50
    line = coords[inside]  # (M, ndim), centres included
    assert not torch.any(masked[tuple(line.unbind(-1))] == x[tuple(line.unbind(-1))])
    # Nothing off the lines is touched: the struct mask is not a blanket noise.
    hidden = torch.zeros_like(mask)
    hidden[tuple(line.unbind(-1))] = True
    assert torch.equal(masked[~hidden], x[~hidden])


@pytest.mark.parametrize(("shape", "axis"), CASES, ids=IDS)
@pytest.mark.parametrize("replacement", ["uniform", "median"])
def test_replacement_never_comes_from_the_hidden_struct_line(shape, axis, replacement):
    """(b) A blind spot's replacement is never the value of a pixel of its own struct line."""
    x = _unique_image(shape)
    spec = MaskSpec(2.0, 5, replacement, struct_axis=axis, struct_span=SPAN)
    for seed in range(3):
        masked, mask = mask_batch(x, spec, torch.Generator().manual_seed(seed))
        centres, coords, inside = _struct_lines(x, mask, axis, SPAN)
        line_values = x[tuple(coords.unbind(-1))]  # (N, span), centre included
        value = masked[tuple(centres.unbind(-1))]  # (N,)
        leaked = ((line_values == value[:, None]) & inside).any(dim=1)
        assert not leaked.any(), f"{int(leaked.sum())} of {len(value)} blind spots see their struct line"
        # ... and it still is a pixel of the blind spot's 5-neighbourhood, same sample and channel
        # (the median of distinct values is one of them).
        origin = torch.stack(torch.unravel_index(value.long(), x.shape), dim=1)
        assert torch.equal(origin[:, :2], centres[:, :2])
        assert (origin - centres)[:, 2:].abs().max() <= 2


def test_without_a_struct_mask_the_masking_is_plain_n2v():
    """(c) Span 1 or no axis is N2V: the same draws, and neighbours along x may be copied."""
    x = _unique_image((8, 1, 64, 64))
    plain = mask_batch(x, MaskSpec(2.0, 5, "uniform"), torch.Generator().manual_seed(0))
    for spec in (
        MaskSpec(2.0, 5, "uniform", struct_axis=-1, struct_span=1),
        MaskSpec(2.0, 5, "uniform", struct_axis=None, struct_span=SPAN),
    ):
        masked, mask = mask_batch(x, spec, torch.Generator().manual_seed(0))
        assert torch.equal(masked, plain[0]) and torch.equal(mask, plain[1])
    # N2V draws from all 24 neighbours: the 4 within +-2 on the row are about 1/6 of the draws.
    masked, mask = plain
    centres = mask.nonzero()
    value = masked[tuple(centres.unbind(-1))]
    origin = torch.stack(torch.unravel_index(value.long(), x.shape), dim=1)
    on_row = (origin[:, 2] == centres[:, 2]).float().mean().item()
    assert 0.1 < on_row < 0.25


def test_struct_mask_hides_row_correlated_noise_that_plain_n2v_sees():
    """Noise constant along x in runs of 3 pixels is visible to N2V, hidden by the x struct mask.

    With the mask on x (span 5) no input pixel of a blind spot's run keeps or copies its value,
    so a predictor that reads the nearest unmasked row neighbours recovers the noise under plain
    N2V but not under structN2V.
    """
    gen = torch.Generator().manual_seed(0)
    runs = torch.randn((16, 1, 32, 11), generator=gen)
    noise = runs.repeat_interleave(3, dim=-1)[..., :32]  # each run of 3 along x shares its noise
    results = {}
    for name, spec in {
        "n2v": MaskSpec(2.0, 5, "uniform"),
        "structn2v": MaskSpec(2.0, 5, "uniform", struct_axis=-1, struct_span=SPAN),
    }.items():
        masked, mask = mask_batch(noise, spec, torch.Generator().manual_seed(1))
        # The best a network could do with the row: the mean of the direct x neighbours.
        left = torch.roll(masked, 1, dims=-1)
        right = torch.roll(masked, -1, dims=-1)
        guess = ((left + right) / 2)[mask]
        truth = noise[mask]
        results[name] = torch.corrcoef(torch.stack([guess, truth]))[0, 1].item()
    assert results["n2v"] > 0.4
    assert abs(results["structn2v"]) < 0.1


def test_structn2v_training_augments_with_flips_only(tmp_path, monkeypatch):
    """A 90-degree turn makes row-correlated noise column-correlated, which the x mask misses."""
    rng = np.random.default_rng(0)
    data = tmp_path / "a.tif"
    tifffile.imwrite(data, rng.random((64, 64), dtype=np.float32))
    calls = []
    real = session.augment_batch

    def spy(tensors, generator, rotate, flip_axes):
        calls.append((rotate, flip_axes))
        return real(tensors, generator, rotate, flip_axes)

    monkeypatch.setattr(session, "augment_batch", spy)
    for algorithm in ("n2v", "structn2v"):
        calls.clear()
        spec = small_spec(
            algorithm, training__epochs=1, training__steps_per_epoch=2, training__batch_size=2, training__val_patches=2
        )
        train(spec, [data], None, tmp_path / algorithm, device="cpu", progress=False)
        assert calls and all(flips == (-2, -1) for _, flips in calls)
        assert all(rotate is (algorithm == "n2v") for rotate, _ in calls), algorithm


# -- torch floor and the trust note of `validate --help` (same defects issue) ----------------------


def test_torch_floor_excludes_releases_whose_weights_only_load_can_be_bypassed():
    """CVE-2025-32434 (fixed in 2.6) and CVE-2026-24747 (fixed in 2.10): ``torch>=2.10``."""
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    deps = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["dependencies"]
    (torch_req,) = [Requirement(d) for d in deps if Requirement(d).name == "torch"]
    for old in ("2.2.0", "2.5.1", "2.6.0", "2.9.1"):
        assert not torch_req.specifier.contains(old), old
    assert torch_req.specifier.contains("2.10.0") and torch_req.specifier.contains(torch.__version__.split("+")[0])


def test_validate_help_says_testing_a_package_runs_its_code():
    result = invoke("validate", "--help")
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    assert "runs its code" in text and "not sandboxes" in text and "only test packages you trust" in text
