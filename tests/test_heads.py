"""GLM heads against direct computations; the hybrid loss against plain cross-entropy."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.config import FlowConfig, HeadConfig, ModelConfig, PreprocessingConfig
from models.heads import BayesianLinearHead, CategoricalHead, GaussianHead, SufficientStatistics, log_marginal_likelihood, posterior, with_bias_column
from models.hybrid import HybridModel, LossShares
from training.config import DataConfig, load_config
from training.data import load_dataset
from training.distributed import Cluster
from training.trainer import complete_model_config

TINY_CONFIG = str(Path(__file__).resolve().parents[1] / "training" / "configs" / "tiny.yaml")


def bayesian_problem(n=12, d=3):
    z = torch.randn(n, d, dtype=torch.float64)
    y = z @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + 0.3 + 0.1 * torch.randn(n, dtype=torch.float64)
    return z, y, torch.tensor(0.7, dtype=torch.float64), torch.tensor(0.2, dtype=torch.float64)


def test_marginal_likelihood_equals_dense_gaussian():
    z, y, alpha, noise_variance = bayesian_problem()
    design = with_bias_column(z)
    covariance = noise_variance * torch.eye(len(y), dtype=torch.float64) + design @ design.T / alpha
    expected = torch.distributions.MultivariateNormal(torch.zeros(len(y), dtype=torch.float64), covariance).log_prob(y)
    got = log_marginal_likelihood(SufficientStatistics.from_batch(z, y), alpha, noise_variance)
    torch.testing.assert_close(got, expected)


def test_posterior_and_predictive_equal_direct_computation():
    z, y, alpha, noise_variance = bayesian_problem()
    design = with_bias_column(z)
    covariance = torch.linalg.inv(alpha * torch.eye(4, dtype=torch.float64) + design.T @ design / noise_variance)
    mean = covariance @ design.T @ y / noise_variance
    got_mean, chol = posterior(SufficientStatistics.from_batch(z, y), alpha, noise_variance)
    torch.testing.assert_close(got_mean, mean)
    torch.testing.assert_close(torch.cholesky_inverse(chol), covariance)

    head = BayesianLinearHead(3, alpha=float(alpha), noise_std=float(noise_variance.sqrt()))
    head.fit_posterior(SufficientStatistics.from_batch(z, y), optimize_hyperparameters=False)
    z_new = torch.randn(5, 3, dtype=torch.float64)
    design_new = with_bias_column(z_new)
    prediction = head.predict(z_new)
    torch.testing.assert_close(prediction["mean"], design_new @ mean)
    torch.testing.assert_close(prediction["variance"], noise_variance + ((design_new @ covariance) * design_new).sum(1))


def test_statistics_add_over_batches():
    z, y, alpha, noise_variance = bayesian_problem(n=20)
    whole = SufficientStatistics.from_batch(z, y)
    parts = SufficientStatistics.from_batch(z[:7], y[:7]) + SufficientStatistics.from_batch(z[7:], y[7:])
    torch.testing.assert_close(log_marginal_likelihood(parts, alpha, noise_variance), log_marginal_likelihood(whole, alpha, noise_variance))


def test_hyperparameters_maximise_marginal_likelihood():
    z, y, _, _ = bayesian_problem(n=200)
    stats = SufficientStatistics.from_batch(z, y)
    head = BayesianLinearHead(3, objective="gaussian", alpha=10.0, noise_std=3.0)
    before = float(log_marginal_likelihood(stats, head.alpha, head.noise_variance).detach()) / 200
    after = head.fit_posterior(stats, optimize_hyperparameters=True)
    assert after > before
    assert 0.05 < float(head.noise_variance.detach().sqrt()) < 0.2  # the data's noise std is 0.1
    for factor in (0.8, 1.25):  # a local maximum in both hyperparameters
        assert after >= float(log_marginal_likelihood(stats, head.alpha * factor, head.noise_variance).detach()) / 200
        assert after >= float(log_marginal_likelihood(stats, head.alpha, head.noise_variance * factor).detach()) / 200


def classifier(lambda_shape=(8, 8)) -> HybridModel:
    return HybridModel(
        ModelConfig(
            input_shape=list(lambda_shape),
            preprocessing=PreprocessingConfig(levels=17),
            flow=FlowConfig(levels=2, steps=1, hidden=8),
            head=HeadConfig(num_classes=10),
        )
    )


def test_hybrid_loss_with_lambda_zero_is_cross_entropy():
    model = classifier()
    x = torch.randint(0, 17, (6, 8, 8)).float()
    y = torch.randint(0, 10, (6,))
    loss, output = model.loss(x, y, torch.ones(6, dtype=torch.bool), lambda_per_dim=0.0)
    torch.testing.assert_close(loss, F.cross_entropy(model.head.linear(output.z), y))


def test_fully_labelled_fast_path_is_the_mean_of_eq_7():
    model = classifier()
    x = torch.randint(0, 17, (6, 8, 8)).float()
    y = torch.randint(0, 10, (6,))
    loss, output = model.loss(x, y, None, lambda_per_dim=0.5)
    expected = F.cross_entropy(model.head.linear(output.z), y) - 0.5 / 64 * output.log_px.mean()
    torch.testing.assert_close(loss, expected)
    masked, _ = model.loss(x, y, torch.ones(6, dtype=torch.bool), lambda_per_dim=0.5)
    torch.testing.assert_close(masked, expected)


def test_hybrid_loss_weights_log_px_per_dimension_and_unlabeled_rows():
    model = classifier()
    x = torch.randint(0, 17, (6, 8, 8)).float()
    y = torch.randint(0, 10, (6,))
    labeled = torch.tensor([True, True, True, False, False, False])
    loss, output = model.loss(x, y, labeled, lambda_per_dim=0.5, entropy_weight=0.3)
    logits = model.head.linear(output.z)
    log_probs = F.log_softmax(logits, 1)
    entropy = -(log_probs.exp() * log_probs).sum(1)
    expected = -(-F.cross_entropy(logits[:3], y[:3]) + 0.5 / 64 * output.log_px.mean() - 0.3 * entropy[3:].mean())
    torch.testing.assert_close(loss, expected)


def test_log_px_is_latent_density_plus_logdets():
    model = classifier().eval()
    x = torch.randint(0, 17, (3, 8, 8)).float()
    output = model(x)
    h, pre = model.preprocessing(x.reshape(3, 1, 8, 8))
    z, flow_logdet = model.flow(h)
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1) + flow_logdet + pre
    torch.testing.assert_close(output.log_px, expected)
    assert torch.allclose(pre, torch.full((3,), -64 * math.log(17)))


def test_heads_give_per_row_log_likelihoods_in_the_input_dtype():
    torch.manual_seed(3)
    z, y = torch.randn(6, 3), torch.randint(0, 4, (6,))
    categorical = CategoricalHead(3, 4)
    logits = categorical.linear(z)
    torch.testing.assert_close(categorical.log_likelihood(z, y), torch.log_softmax(logits, 1)[torch.arange(6), y])
    prediction = categorical.predict(z)
    assert set(prediction) == {"logits", "probabilities"}
    torch.testing.assert_close(prediction["probabilities"], torch.softmax(logits, 1))
    probabilities = torch.softmax(logits, 1)
    torch.testing.assert_close(categorical.entropy(z), -(probabilities * probabilities.log()).sum(1))
    targets = torch.randn(6)
    gaussian = GaussianHead(3, noise_std=0.5)
    mean = gaussian.linear(z).squeeze(1)
    expected = torch.distributions.Normal(mean, 0.5).log_prob(targets)
    assert set(gaussian.predict(z)) == {"mean", "variance"}
    torch.testing.assert_close(gaussian.predict(z)["variance"], torch.full((6,), 0.25))
    torch.testing.assert_close(gaussian.log_likelihood(z, targets), expected)
    torch.testing.assert_close(gaussian.batch_log_likelihood(z, targets), expected.mean())


def test_bayesian_head_objectives_and_its_unfitted_state():
    z, y, alpha, noise_variance = bayesian_problem(n=40)
    head = BayesianLinearHead(3, objective="gaussian", alpha=float(alpha), noise_std=float(noise_variance.sqrt()))
    assert not bool(head.fitted) and head.posterior_precision_chol.dtype == head.posterior_mean.dtype == torch.float64
    point = head.point_estimate(z.float()).squeeze(1)
    expected = torch.distributions.Normal(point.double(), noise_variance.sqrt()).log_prob(y).mean()
    torch.testing.assert_close(head.batch_log_likelihood(z.float(), y.float()).double(), expected, rtol=1e-5, atol=1e-5)
    unfitted = head.predict(z.float())
    assert unfitted["mean"].dtype == torch.float32 and set(unfitted) == {"mean", "variance"}
    torch.testing.assert_close(unfitted["variance"], torch.full((40,), float(noise_variance)))
    marginal = BayesianLinearHead(3, alpha=float(alpha), noise_std=float(noise_variance.sqrt())).train()
    stats = SufficientStatistics.from_batch(z, y)
    per_row = marginal.batch_log_likelihood(z.float(), y.float())
    assert per_row.dtype == torch.float32 and bool(marginal.fitted)  # training stores the batch posterior
    torch.testing.assert_close(per_row.double(), log_marginal_likelihood(stats, alpha, noise_variance) / 40, rtol=1e-5, atol=1e-5)
    fitted = marginal.predict(z.float())
    assert fitted["mean"].dtype == fitted["variance"].dtype == torch.float32
    returned = BayesianLinearHead(3, alpha=float(alpha), noise_std=float(noise_variance.sqrt())).fit_posterior(stats, optimize_hyperparameters=False)
    assert returned == pytest.approx(float(log_marginal_likelihood(stats, alpha, noise_variance)) / 40)
    one_step, full = (BayesianLinearHead(3, alpha=10.0, noise_std=3.0) for _ in range(2))
    one_step.fit_posterior(stats, optimize_hyperparameters=True, max_iter=1)
    full.fit_posterior(stats, optimize_hyperparameters=True, max_iter=200)
    assert abs(float(one_step.noise_variance.detach()) - float(full.noise_variance.detach())) > 1e-3  # max_iter is honoured
    with pytest.raises(ValueError, match="objective must be one of"):
        BayesianLinearHead(3, objective="other")


def test_model_config_reaches_the_modules():
    bayesian = HybridModel(ModelConfig(
        input_shape=[3], preprocessing=PreprocessingConfig(kind="standardize"), flow=FlowConfig(kind="realnvp", steps=2, hidden=8, net_layers=2),
        head=HeadConfig(kind="bayesian", alpha=0.3, noise_std=2.0),
    ))
    assert float(bayesian.head.alpha.detach()) == pytest.approx(0.3) and float(bayesian.head.noise_variance.detach()) == pytest.approx(4.0)
    assert bayesian.task == "regression" and bayesian.target_moments.tolist() == [0.0, 1.0] and bayesian.flow_shape == (3,)
    realnvp_layers = [m for m in bayesian.flow.modules() if isinstance(m, torch.nn.Linear)]
    assert len(realnvp_layers) == 2 * 3  # two coupling steps, each a net of net_layers=2 hidden layers + output
    gaussian = HybridModel(ModelConfig(input_shape=[3], preprocessing=PreprocessingConfig(kind="standardize"), flow=FlowConfig(kind="realnvp", steps=1, hidden=4), head=HeadConfig(kind="gaussian", noise_std=0.5)))
    assert isinstance(gaussian.head, GaussianHead) and float(gaussian.head.log_noise_std.detach().exp()) == pytest.approx(0.5)
    logit = HybridModel(ModelConfig(input_shape=[1, 4, 4], preprocessing=PreprocessingConfig(levels=256, logit_alpha=0.05), flow=FlowConfig(levels=1, steps=1, hidden=4), head=HeadConfig(num_classes=3)))
    assert logit.preprocessing.logit_alpha == 0.05 and logit.flow_shape == (1, 4, 4)
    torch.testing.assert_close(logit.label_prior, torch.full((3,), 1 / 3))
    with pytest.raises(ValueError, match="model config needs input_shape"):
        HybridModel(ModelConfig(input_shape=[], head=HeadConfig(num_classes=3)))
    with pytest.raises(ValueError, match="dequantize preprocessing needs preprocessing.levels"):
        HybridModel(ModelConfig(input_shape=[4, 4], flow=FlowConfig(levels=1, steps=1, hidden=4), head=HeadConfig(num_classes=3)))
    with pytest.raises(ValueError, match="Glow needs image inputs"):
        HybridModel(ModelConfig(input_shape=[16], preprocessing=PreprocessingConfig(levels=2), head=HeadConfig(num_classes=3)))


def test_noise_reaches_the_dequantization_and_the_default_is_one_half():
    model = classifier().eval()
    x = torch.randint(0, 17, (3, 8, 8)).float()
    noise = torch.rand(3, 8, 8)
    torch.testing.assert_close(model(x).log_px, model(x, torch.full_like(x, 0.5)).log_px)
    with_noise = model(x, noise)
    h, pre = model.preprocessing(x.reshape(3, 1, 8, 8), noise.reshape(3, 1, 8, 8))
    z, flow_logdet = model.flow(h)
    torch.testing.assert_close(with_noise.log_px, torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1) + flow_logdet + pre)
    y = torch.randint(0, 10, (3,))
    loss, output = model.loss(x, y, None, 1.0, noise=noise)
    torch.testing.assert_close(output.log_px, with_noise.log_px)
    partly = torch.tensor([True, False, True])
    plain, _ = model.loss(x, y, partly, 1.0)
    weightless, _ = model.loss(x, y, partly, 1.0, entropy_weight=0.0)
    torch.testing.assert_close(plain, weightless)  # no entropy term unless asked
    all_labeled, _ = model.loss(x, y, torch.ones(3, dtype=torch.bool), 1.0, entropy_weight=0.3)
    assert torch.isfinite(all_labeled)  # no entropy of an empty set of unlabeled rows


def test_group_weighted_log_px_is_the_full_data_mean_and_over_sampling_does_not_bias_it():
    log_px = torch.tensor([-1.0, -2.0, -3.0, -10.0, -20.0])
    labeled = torch.tensor([True, True, False, False, False])
    whole = HybridModel._mean_log_px(log_px, labeled, LossShares(1, 1, 1), labeled_fraction=2 / 5)
    assert float(whole) == pytest.approx(float(log_px.mean()))  # the whole set as one batch: the plain mean
    # batches that over-sample the labeled rows: one labeled and one unlabeled row each, all pairs equally likely
    estimates = [
        float(HybridModel._mean_log_px(torch.stack([log_px[i], log_px[j]]), torch.tensor([True, False]), LossShares(1, 1, 1), 2 / 5))
        for i in (0, 1) for j in (2, 3, 4)
    ]
    assert np.mean(estimates) == pytest.approx(float(log_px.mean()))
    plain = [float(torch.stack([log_px[i], log_px[j]]).mean()) for i in (0, 1) for j in (2, 3, 4)]
    assert np.mean(plain) != pytest.approx(float(log_px.mean()))  # the plain batch mean would be biased


def test_shares_make_the_average_of_the_shard_gradients_the_whole_batch_gradient():
    config = load_config(TINY_CONFIG, [])
    dataset = load_dataset(DataConfig(name="tiny"))
    torch.manual_seed(0)
    model = HybridModel(complete_model_config(config.model, dataset)).train()
    x = torch.from_numpy(dataset.x[:13])
    y = torch.from_numpy(dataset.y[:13])
    labeled = torch.tensor([True, False, False, True, False, False, False, True, False, False, True, False, False])
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(1))
    model(x, noise)  # actnorm's data-dependent initialisation

    def gradient(loss: torch.Tensor) -> torch.Tensor:
        model.zero_grad()
        loss.backward()
        return torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel()) for p in model.parameters()])

    whole = gradient(model.loss(x, y, labeled, 1.0, 0.1, noise)[0])
    world = 3
    averaged, naive = torch.zeros_like(whole), torch.zeros_like(whole)
    for rank in range(world):
        cluster = Cluster(rank, world)
        xs, ys, ls, us = cluster.shard(x, y, labeled, noise)
        averaged += gradient(model.loss(xs, ys, ls, 1.0, 0.1, us, cluster.shares(labeled))[0]) / world
        naive += gradient(model.loss(xs, ys, ls, 1.0, 0.1, us)[0]) / world
    torch.testing.assert_close(averaged, whole, rtol=1e-5, atol=1e-6)
    assert (naive - whole).abs().max() > 1e-3  # plain per-process means would not be the same objective


def test_labeled_fraction_weights_log_px_per_group_in_the_loss():
    torch.manual_seed(0)
    model = HybridModel(ModelConfig(
        input_shape=[4], preprocessing=PreprocessingConfig(kind="standardize"), flow=FlowConfig(kind="realnvp", steps=2, hidden=8),
        head=HeadConfig(kind="categorical", num_classes=3),
    ))
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    labeled = torch.tensor([True, False, False, True, False, False])
    loss, output = model.loss(x, y, labeled, 2.0, 0.5, None, None, 0.1)
    log_px = 0.1 * output.log_px[labeled].mean() + 0.9 * output.log_px[~labeled].mean()
    expected = -(2.0 / 4 * log_px + model.head.batch_log_likelihood(output.z[labeled], y[labeled]) - 0.5 * model.head.entropy(output.z[~labeled]).mean())
    torch.testing.assert_close(loss, expected)
    shared, _ = model.loss(x, y, labeled, 2.0, 0.5, None, LossShares(0.5, 2.0, 3.0), 0.1)
    log_px_shared = 0.1 * output.log_px[labeled].mean() * 2.0 + 0.9 * output.log_px[~labeled].mean() * 3.0
    torch.testing.assert_close(shared, -(2.0 / 4 * log_px_shared + 2.0 * model.head.batch_log_likelihood(output.z[labeled], y[labeled]) - 0.5 * 3.0 * model.head.entropy(output.z[~labeled]).mean()))
    all_labeled = torch.ones(6, dtype=torch.bool)  # a batch (or a process's shard) holding one group: only that group's part
    only_labeled, output = model.loss(x, y, all_labeled, 2.0, 0.5, None, None, 0.1)
    torch.testing.assert_close(only_labeled, -(2.0 / 4 * 0.1 * output.log_px.mean() + model.head.batch_log_likelihood(output.z, y)))
    fast, _ = model.loss(x, y, None, 2.0, 0.0, None, LossShares(0.5, 0.5, 0.0))  # every row labeled: one share for both terms
    torch.testing.assert_close(fast, 0.5 * model.loss(x, y, None, 2.0)[0])
