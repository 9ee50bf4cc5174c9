"""GLM heads against direct computations; the hybrid loss against plain cross-entropy."""
import math

import torch
import torch.nn.functional as F

from models.config import FlowConfig, HeadConfig, ModelConfig, PreprocessingConfig
from models.heads import BayesianLinearHead, SufficientStatistics, log_marginal_likelihood, posterior, with_bias_column
from models.hybrid import HybridModel


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
