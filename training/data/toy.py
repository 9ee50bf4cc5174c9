"""Synthetic low-dimensional data sets of the paper's sec. 6.1 and 6.5, drawn from ``seed``.

- ``gmm1d``: x from an equal-weight mixture of N(-4, 0.4^2), N(0, 0.6^2), N(4, 0.4^2); y = x^3 + noise,
  noise std 3 for the outer components and 20 for the middle one. Options ``n_train`` (250),
  ``n_validation`` (250), ``n_test`` (10,000); each split drawn fresh.
- ``moons``: scikit-learn's two interleaved half moons, options ``n_train`` (3,000), ``n_validation``
  (200), ``n_test`` (2,000), ``noise`` (0.1).
"""
from __future__ import annotations

import numpy as np
from scipy.special import logsumexp
from sklearn.datasets import make_moons

from training.config import DataConfig
from training.data.registry import Dataset, register_dataset

GMM_MEANS = np.array([-4.0, 0.0, 4.0])
GMM_STDS = np.array([0.4, 0.6, 0.4])
GMM_NOISE_STDS = np.array([3.0, 20.0, 3.0])


def gmm1d_sample(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``count`` pairs: x ``(count, 1)`` and y ``(count,)``, float32."""
    component = rng.integers(0, 3, size=count)
    x = rng.normal(GMM_MEANS[component], GMM_STDS[component])
    y = x**3 + rng.normal(0.0, GMM_NOISE_STDS[component])
    return x[:, None].astype(np.float32), y.astype(np.float32)


def gmm1d_log_density(x: np.ndarray) -> np.ndarray:
    """The true log p(x) (nats) of the mixture at points ``x`` ``(N,)``."""
    x = np.asarray(x, dtype=np.float64)[:, None]
    log_components = -0.5 * ((x - GMM_MEANS) / GMM_STDS) ** 2 - np.log(GMM_STDS * np.sqrt(2 * np.pi))
    return logsumexp(log_components, axis=1) - np.log(3)


@register_dataset("gmm1d")
def gmm1d(config: DataConfig, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    sizes = {key: int(config.options.get(key, default)) for key, default in (("n_train", 250), ("n_validation", 250), ("n_test", 10_000))}
    x, y = gmm1d_sample(sizes["n_train"], rng)
    return Dataset(
        x=x,
        y=y,
        task="regression",
        validation=gmm1d_sample(sizes["n_validation"], rng),
        test=gmm1d_sample(sizes["n_test"], rng),
        description="1-D mixture of three Gaussians, y = x^3 + noise (paper sec. 6.1)",
    )


@register_dataset("moons")
def moons(config: DataConfig, seed: int = 0) -> Dataset:
    noise = float(config.options.get("noise", 0.1))

    def draw(count: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
        x, y = make_moons(n_samples=count, noise=noise, random_state=seed * 1000 + offset)
        return x.astype(np.float32), y.astype(np.int64)

    x, y = draw(int(config.options.get("n_train", 3000)), 0)
    return Dataset(
        x=x,
        y=y,
        task="classification",
        classes=["upper", "lower"],
        validation=draw(int(config.options.get("n_validation", 200)), 1),
        test=draw(int(config.options.get("n_test", 2000)), 2),
        description=f"two half moons, noise {noise}",
    )
