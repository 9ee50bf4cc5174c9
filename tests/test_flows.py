"""Every flow: inverse(forward(x)) == x, and log|det| equals slogdet of the autograd Jacobian."""
import math

import pytest
import torch
from torch.autograd.functional import jacobian

from models.flows import ActNorm, AffineCoupling, Glow, InvertibleLinearLU, PlanarFlow, PlanarLayer, RealNVP
from models.flows.layers import Squeeze


def randomize(flow: torch.nn.Module) -> torch.nn.Module:
    """Perturb every parameter so zero-initialised layers are not the identity."""
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
    return flow.double().eval()


CASES = {
    "actnorm-vector": (lambda: ActNorm(3), (3,)),
    "actnorm-image": (lambda: ActNorm(2), (2, 2, 2)),
    "lu-vector": (lambda: InvertibleLinearLU(4), (4,)),
    "lu-image": (lambda: InvertibleLinearLU(3), (3, 2, 2)),
    "coupling-mlp": (lambda: AffineCoupling(5, 8, "feedforward", 2, spatial=False), (5,)),
    "coupling-highway-vector": (lambda: AffineCoupling(4, 8, "highway", 2, spatial=False), (4,)),
    "coupling-conv": (lambda: AffineCoupling(4, 8, "feedforward", 2, spatial=True), (4, 2, 2)),
    "coupling-highway-image": (lambda: AffineCoupling(4, 6, "highway", 3, spatial=True), (4, 2, 2)),
    "squeeze": (lambda: Squeeze(), (1, 4, 4)),
    "glow": (lambda: Glow((1, 4, 4), levels=2, steps=2, hidden=8), (1, 4, 4)),
    "glow-split-prior": (lambda: Glow((1, 4, 8), levels=2, steps=1, hidden=8, split_prior=True), (1, 4, 8)),
    "glow-highway": (lambda: Glow((2, 4, 4), levels=1, steps=2, hidden=8, net="highway", net_layers=3), (2, 4, 4)),
    "realnvp": (lambda: RealNVP(3, steps=3, hidden=8), (3,)),
    "planar-layer": (lambda: PlanarLayer(2), (2,)),
    "planar-1d": (lambda: PlanarFlow(1, layers=3), (1,)),
}


@pytest.mark.parametrize("name", CASES)
def test_inverse_of_forward_is_identity(name):
    make, shape = CASES[name]
    flow = randomize(make())
    x = torch.randn(6, *shape, dtype=torch.float64)
    z, _ = flow(x)
    assert z.shape[0] == 6
    torch.testing.assert_close(flow.inverse(z), x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", CASES)
def test_logabsdet_matches_autograd_jacobian(name):
    make, shape = CASES[name]
    flow = randomize(make())
    x = torch.randn(3, *shape, dtype=torch.float64)
    _, logabsdet = flow(x)
    dims = math.prod(shape)
    for i in range(3):
        def single(v):
            return flow(v.reshape(1, *shape))[0].reshape(-1)

        matrix = jacobian(single, x[i].reshape(-1))
        sign, expected = torch.linalg.slogdet(matrix.reshape(dims, dims))
        assert sign != 0
        torch.testing.assert_close(logabsdet[i], expected, atol=1e-6, rtol=1e-6)


def test_actnorm_initialises_from_data_once():
    layer = ActNorm(3)
    x = torch.randn(500, 3) * torch.tensor([2.0, 0.5, 3.0]) + torch.tensor([1.0, -2.0, 0.0])
    y, _ = layer(x)
    torch.testing.assert_close(y.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std(0), torch.ones(3), atol=1e-3, rtol=0)
    assert int(layer.initialized) == 1 and "initialized" in layer.state_dict()
    before = layer.bias.detach().clone()
    layer(x * 10)
    torch.testing.assert_close(layer.bias.detach(), before)


def test_glow_refuses_shapes_it_would_have_to_pad():
    with pytest.raises(ValueError, match="never padded"):
        Glow((1, 6, 6), levels=2, steps=1, hidden=4)


def test_glow_latent_has_all_dimensions():
    glow = Glow((1, 8, 8), levels=2, steps=1, hidden=4)
    z, _ = glow(torch.randn(2, 1, 8, 8))
    assert z.shape == (2, 64)


def test_split_prior_starts_as_the_identity_and_counts_in_its_level():
    torch.manual_seed(0)
    plain, with_prior = Glow((1, 8, 8), levels=2, steps=1, hidden=4), Glow((1, 8, 8), levels=2, steps=1, hidden=4, split_prior=True)
    with_prior.levels.load_state_dict(plain.levels.state_dict())
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(with_prior.forward_levels(x), plain.forward_levels(x))  # zero-initialised: the same flow
    randomize(with_prior)
    z, level_logdets = with_prior.forward_levels(x.double())
    h, total = with_prior.squeeze(x.double())[0], torch.zeros(3, dtype=torch.float64)
    for step in with_prior.levels[0]:
        h, logabsdet = step(h)
        total = total + logabsdet
    out = with_prior.split_priors[0].net(h[:, 2:])
    mean, log_scale = out[:, 0::2], out[:, 1::2]
    torch.testing.assert_close(z[:, :32], ((h[:, :2] - mean) / log_scale.exp()).flatten(1))
    torch.testing.assert_close(level_logdets[:, 0], total - log_scale.flatten(1).sum(dim=1))


def test_lu_weight_cache_follows_parameter_changes():
    layer = InvertibleLinearLU(4).eval()
    x = torch.randn(3, 4)
    with torch.no_grad():
        first, _ = layer(x)
        layer.log_s.add_(0.5)  # an optimizer step or load_state_dict changes parameters in place
        second, _ = layer(x)
    layer.train()
    torch.testing.assert_close(second, layer(x)[0].detach())
    assert not torch.allclose(first, second)
