"""log p(x) of whole models is a normalised density, and the preprocessing counts its Jacobian."""
import math

import numpy as np
import pytest
import torch
from torch.autograd.functional import jacobian

from models.config import FlowConfig, HeadConfig, ModelConfig, PreprocessingConfig
from models.gate import bits_per_dim
from models.hybrid import HybridModel
from models.preprocessing import Dequantize, Standardize
from tests.test_flows import randomize


def regression_model(dim: int, flow: FlowConfig) -> HybridModel:
    config = ModelConfig(
        input_shape=[dim], preprocessing=PreprocessingConfig(kind="standardize"), flow=flow, head=HeadConfig(kind="gaussian")
    )
    model = HybridModel(config)
    model.preprocessing.fit(torch.randn(100, dim) * 2 + 1)
    return randomize(model)


def test_1d_planar_density_integrates_to_one():
    model = regression_model(1, FlowConfig(kind="planar", steps=3))
    grid = torch.linspace(-40, 40, 20001, dtype=torch.float64)[:, None]
    with torch.no_grad():
        density = model(grid).log_px.exp().numpy()
    assert abs(np.trapezoid(density, grid[:, 0].numpy()) - 1) < 1e-3


def test_2d_realnvp_density_integrates_to_one():
    model = regression_model(2, FlowConfig(kind="realnvp", steps=3, hidden=8))
    axis = torch.linspace(-25, 25, 501, dtype=torch.float64)
    grid = torch.cartesian_prod(axis, axis)
    with torch.no_grad():
        density = model(grid).log_px.exp().reshape(501, 501).numpy()
    step = float(axis[1] - axis[0])
    assert abs(density.sum() * step * step - 1) < 2e-3


def test_uniform_density_gives_log2_levels_bits_per_dim():
    for levels in (17, 256):
        dequantize = Dequantize(levels)
        x = torch.randint(0, levels, (4, 1, 8, 8)).double()
        x_c, logabsdet = dequantize(x, torch.rand_like(x))
        # p_c uniform on [0,1)^D: log p_c = 0, so log p(x) is the preprocessing's log-det alone.
        assert ((x_c >= -0.5) & (x_c < 0.5)).all()
        torch.testing.assert_close(bits_per_dim(logabsdet, 64), torch.full((4,), math.log2(levels), dtype=torch.float64))


def test_logit_preprocessing_logdet_matches_jacobian():
    dequantize = Dequantize(256, logit_alpha=0.05)
    x = torch.randint(0, 256, (1, 6)).double()
    _, logabsdet = dequantize(x)
    # d/dx of the continuous map at u = 1/2, plus the -D log K of scaling into [0, 1).
    matrix = jacobian(lambda v: dequantize(v[None])[0][0], x[0])
    expected = torch.linalg.slogdet(matrix)[1]
    torch.testing.assert_close(logabsdet[0], expected)


def test_inputs_outside_the_support_have_no_density():
    dequantize = Dequantize(17)
    x = torch.tensor([[0.0, 16.0], [-1.0, 3.0], [2.0, 17.5]])
    _, logabsdet = dequantize(x)
    assert torch.isfinite(logabsdet[0]) and torch.isneginf(logabsdet[1:]).all()


def test_standardize_logdet():
    layer = Standardize((3,))
    layer.fit(torch.randn(1000, 3) * torch.tensor([1.0, 2.0, 4.0]))
    _, logabsdet = layer(torch.zeros(2, 3))
    torch.testing.assert_close(logabsdet, -torch.log(layer.std).sum().expand(2))


@pytest.mark.parametrize("logit_alpha", [None, 0.05])
def test_dequantize_inverts_at_the_bin_centre_and_clamps_outside_the_support(logit_alpha):
    layer = Dequantize(17, logit_alpha)
    x = torch.tensor([[0.0, 3.0, 16.0], [5.0, 8.0, 11.0]])
    y, logabsdet = layer(x)
    torch.testing.assert_close(layer.inverse(y), x, rtol=1e-5, atol=1e-4)
    noise = torch.tensor([[0.1, 0.9, 0.5], [0.0, 0.25, 0.75]])
    shifted, _ = layer(x, noise)
    centre = (x + noise) / 17
    expected = centre - 0.5 if logit_alpha is None else torch.logit(logit_alpha + (1 - 2 * logit_alpha) * centre)
    torch.testing.assert_close(shifted, expected, rtol=1e-5, atol=1e-5)
    single = torch.stack([layer(row[None])[1][0] for row in x])
    torch.testing.assert_close(logabsdet, single)  # per row, not summed over the batch
    outside, outside_logdet = layer(torch.tensor([[-3.0, 3.0, 40.0]]))
    inside, _ = layer(torch.tensor([[0.0, 3.0, 16.0]]))
    torch.testing.assert_close(outside, inside)  # clamped to [0, K - 1] for the latents
    assert outside_logdet[0] == -math.inf


def test_dequantize_needs_two_levels_and_standardize_centres():
    Dequantize(2)
    with pytest.raises(ValueError, match="levels must be at least 2, got 1"):
        Dequantize(1)
    layer = Standardize((2,))
    layer.fit(torch.tensor([[1.0, 10.0], [3.0, 30.0]]))
    y, _ = layer(torch.tensor([[2.0, 20.0], [3.0, 30.0]]))
    torch.testing.assert_close(y, torch.tensor([[0.0, 0.0], [2 ** -0.5, 2 ** -0.5]]))
    torch.testing.assert_close(layer.inverse(y), torch.tensor([[2.0, 20.0], [3.0, 30.0]]))


def test_integer_features_are_dequantized_in_training_and_centred_at_inference():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(np.c_[rng.integers(0, 10, 500), rng.normal(size=500), rng.integers(-3, 3, 500)].astype(np.float32))
    plain, dequantized = Standardize((3,)), Standardize((3,), dequantize_integers=True)
    plain.fit(x)
    dequantized.fit(x)
    assert dequantized.lattice.tolist() == [1.0, 0.0, 1.0] and "lattice" not in plain.state_dict()
    # the statistics are those of the dequantized data: variance + 1/12 on integer features
    np.testing.assert_allclose(dequantized.std[[0, 2]] ** 2, x[:, [0, 2]].var(0) + 1 / 12, rtol=0.1)
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(1))
    trained, logdet = dequantized(x, noise)
    centred, logdet_centre = dequantized(x, None)
    shifted = trained * dequantized.std + dequantized.mean - x  # noise - 1/2 where integer, 0 elsewhere
    torch.testing.assert_close(shifted[:, [0, 2]], noise[:, [0, 2]] - 0.5, atol=1e-5, rtol=0)
    torch.testing.assert_close(shifted[:, 1], torch.zeros(500), atol=1e-5, rtol=0)
    torch.testing.assert_close(centred, (x - dequantized.mean) / dequantized.std)
    torch.testing.assert_close(logdet, logdet_centre)  # unit cells: no extra log-det
    torch.testing.assert_close(plain(x, noise)[0], plain(x, None)[0])  # without the option noise is ignored

