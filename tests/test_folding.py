"""Batch norm folded into convolutions for prediction: the same function, the caller's model untouched."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from ai4life_kit.models.folding import fold_batch_norm
from ai4life_kit.models.unet import IsotropicUNet, UNet
from ai4life_kit.prediction import Predictor


def _with_statistics(model: torch.nn.Module, shape: tuple[int, ...], seed: int = 0) -> torch.nn.Module:
    """A model whose batch norms hold non-trivial running statistics and affine weights (not 0/1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 2.0, generator=gen)
                m.bias.uniform_(-0.5, 0.5, generator=gen)
        model.train()
        for _ in range(3):
            model(torch.randn(shape, generator=gen) * 3 + 1)
    return model.eval()


def _n_norms(model: torch.nn.Module) -> int:
    return sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.mark.parametrize(
    ("kwargs", "shape"),
    [
        ({"dims": 2}, (4, 1, 64, 64)),
        ({"dims": 2, "n2v2": True, "in_channels": 2, "out_channels": 2}, (4, 2, 64, 48)),
        ({"dims": 2, "probabilistic": True, "residual": True}, (4, 1, 32, 32)),
        ({"dims": 3, "depth": 2, "width": 8}, (2, 1, 16, 32, 32)),
    ],
)
def test_folded_network_computes_the_same_function(kwargs, shape):
    model = _with_statistics(UNet(**kwargs), shape)
    folded = fold_batch_norm(model)
    assert _n_norms(model) > 0 and _n_norms(folded) == 0
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 2
    with torch.inference_mode():
        want, got = model(x), folded(x)
    assert got.shape == want.shape
    # float rounding only: ~1e-7 of the output's range
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
    assert not torch.equal(got, model.train()(x))  # the reference really used running statistics


def test_folding_leaves_the_callers_model_and_its_state_dict_alone():
    model = _with_statistics(UNet(dims=2), (4, 1, 32, 32))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    folded = fold_batch_norm(model)
    assert folded is not model and model.training and not folded.training
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_nothing_to_fold_returns_the_model_itself():
    plain = UNet(dims=2, batch_norm=False)
    assert fold_batch_norm(plain) is plain
    scripted = torch.jit.script(UNet(dims=2).eval())
    assert fold_batch_norm(scripted) is scripted


def test_isotropic_network_folds_too():
    model = _with_statistics(IsotropicUNet(factor=2, width=8), (2, 1, 4, 32, 32))
    folded = fold_batch_norm(model)
    x = torch.randn(1, 1, 4, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(folded(x), model(x), atol=1e-5)


def _predictor(model: torch.nn.Module) -> Predictor:
    return Predictor(model, [10.0], [3.0], [10.0], [3.0], spatial_ndim=2, depth=2, device="cpu")


def test_predictor_gives_the_unfolded_networks_numbers_tiled_and_whole():
    model = _with_statistics(UNet(dims=2), (4, 1, 64, 64))
    image = np.random.default_rng(0).normal(10, 3, (200, 168)).astype(np.float32)
    with torch.inference_mode():
        x = torch.from_numpy((image - 10) / (3 + 1e-6))
        # whole image padded to the size multiple (200 and 168 already are multiples of 4)
        want = model(x[None, None])[0, 0].numpy() * 3 + 10
    pred = _predictor(model)
    whole = pred.predict(image, "YX")
    tiled = pred.predict(image, "YX", tile=[96, 96])
    np.testing.assert_allclose(whole, want, rtol=0, atol=2e-5 * np.abs(want).max())
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=2e-5 * np.abs(want).max())


def test_predictor_uses_weights_loaded_after_it_was_built():
    # The folded copy is kept while the weights stay; weights loaded into predictor.model later are used.
    a = _with_statistics(UNet(dims=2), (4, 1, 32, 32), seed=0)
    b = _with_statistics(UNet(dims=2), (4, 1, 32, 32), seed=1)
    image = np.random.default_rng(1).normal(10, 3, (64, 64)).astype(np.float32)
    original = copy.deepcopy(a)
    pred = _predictor(a)  # pred.model is a itself
    first = pred.predict(image, "YX")
    pred.model.load_state_dict(b.state_dict())
    np.testing.assert_allclose(pred.predict(image, "YX"), _predictor(b).predict(image, "YX"), atol=1e-5)
    assert not np.allclose(pred.predict(image, "YX"), first, atol=1e-3)
    pred.model = original  # a replaced model is folded anew
    np.testing.assert_allclose(pred.predict(image, "YX"), first, atol=1e-5)
    with torch.no_grad():  # and so are weights changed in place
        next(pred.model.parameters()).mul_(-1)
    changed = pred.predict(image, "YX")
    assert not np.allclose(changed, first, atol=1e-3)
    # and a parameter replaced by a new one of the same shape (a new tensor, not an in-place change)
    conv = next(m for m in pred.model.modules() if isinstance(m, torch.nn.Conv2d))
    conv.weight = torch.nn.Parameter(-conv.weight.detach().clone())
    assert not np.allclose(pred.predict(image, "YX"), changed, atol=1e-3)


def test_predictor_folds_once_while_the_weights_stay(monkeypatch):
    import ai4life_kit.prediction.predictor as predictor_module

    folds = []
    fold = predictor_module.fold_batch_norm
    monkeypatch.setattr(predictor_module, "fold_batch_norm", lambda m: folds.append(1) or fold(m))
    pred = _predictor(_with_statistics(UNet(dims=2), (4, 1, 32, 32)))
    image = np.zeros((64, 64), np.float32)
    for _ in range(3):
        pred.predict(image, "YX")
    assert len(folds) == 1
    pred.model.load_state_dict(_with_statistics(UNet(dims=2), (4, 1, 32, 32), seed=2).state_dict())
    pred.predict(image, "YX")
    assert len(folds) == 2


def test_predictor_runs_a_wrapping_module_as_itself():
    # A caller's wrapper (here one that counts calls) is not copied: its own state sees every call.
    class Counting(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner, self.calls = inner, 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            return self.inner(x)

    wrapper = Counting(_with_statistics(UNet(dims=2), (4, 1, 32, 32)))
    pred = _predictor(wrapper)
    pred.predict(np.zeros((64, 64), np.float32), "YX")
    assert pred.model is wrapper and wrapper.calls > 0
