"""Each out-of-distribution score against an independent computation, and the digits default's gate
on the inputs that fooled log p(x): blank and constant images."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint import load_checkpoint
from models.config import FlowConfig, HeadConfig, ModelConfig, PreprocessingConfig
from models.hybrid import HybridModel
from models.scores import LatentGaussian, LatentNeighbours, ScoreFit, forward_scores
from training.cli import main as training_main
from training.config import DataConfig
from training.data import load_dataset, split_dataset

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"


def glow(levels: int = 2) -> HybridModel:
    config = ModelConfig(
        input_shape=[8, 8], preprocessing=PreprocessingConfig(kind="dequantize", levels=17),
        flow=FlowConfig(kind="glow", levels=levels, steps=2, hidden=8), head=HeadConfig(kind="categorical", num_classes=10),
    )
    model = HybridModel(config)
    model.train()
    with torch.no_grad():
        model(torch.randint(0, 17, (64, 8, 8)).float(), torch.rand(64, 8, 8))
    return model.eval()


def test_level_terms_sum_to_log_px_and_match_a_direct_computation():
    torch.manual_seed(0)
    model = glow(levels=2)
    x = torch.randint(0, 17, (6, 8, 8)).float()
    with torch.no_grad():
        output = model(x)
        torch.testing.assert_close(output.level_log_px.sum(dim=1), output.log_px, rtol=0, atol=1e-3)
        # level 2 by hand: the log-dets of its steps plus log N of the latents it keeps
        h, _ = model.preprocessing(x.reshape(6, 1, 8, 8), None)
        h, _ = model.flow.squeeze(h)
        for step in model.flow.levels[0]:
            h, _ = step(h)
        h = h[:, model.flow.latent_shapes[0][0] :]
        h, _ = model.flow.squeeze(h)
        log_det = torch.zeros(6)
        for step in model.flow.levels[1]:
            h, step_log_det = step(h)
            log_det += step_log_det
        expected = log_det - 0.5 * (h.flatten(1) ** 2 + math.log(2 * math.pi)).sum(dim=1)
        torch.testing.assert_close(output.level_log_px[:, 1], expected, rtol=1e-5, atol=1e-4)


def test_latent_gaussian_matches_a_direct_mahalanobis_distance():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((500, 6)) @ rng.standard_normal((6, 6))
    y = rng.integers(0, 3, 500)
    z += np.eye(3, 6)[y] * 4
    fitted = LatentGaussian.fit(z, y, "all", [6], shrinkage=0.0)
    means = np.stack([z[y == k].mean(axis=0) for k in range(3)])
    covariance = sum(((z[y == k] - means[k]).T @ (z[y == k] - means[k])) for k in range(3)) / len(z)
    queries = rng.standard_normal((10, 6)) * 3
    distances = [[(q - m) @ np.linalg.solve(covariance, q - m) for m in means] for q in queries]
    with torch.no_grad():
        ours = fitted(torch.from_numpy(queries).float()).numpy()
    np.testing.assert_allclose(ours, np.min(distances, axis=1), rtol=1e-4)
    head = rng.standard_normal((3, 6))
    projected = LatentGaussian.fit(z, y, "head", [6], head_weight=head, shrinkage=0.0)  # the same in the head's logit space
    logit_space = LatentGaussian.fit(z @ head.T, y, "all", [3], shrinkage=0.0)
    with torch.no_grad():
        torch.testing.assert_close(projected(torch.from_numpy(queries).float()), logit_space(torch.from_numpy(queries @ head.T).float()), rtol=1e-3, atol=1e-3)
    coarse = LatentGaussian.fit(z, None, "coarse", [4, 2], shrinkage=0.0)
    assert coarse.weight.shape == (6, 2) and coarse.means.shape == (1, 2)


def test_latent_neighbours_match_a_brute_force_search():
    rng = np.random.default_rng(3)
    z = rng.standard_normal((300, 8)) * np.linspace(3, 0.5, 8)
    queries = rng.standard_normal((12, 8)) * 2
    queries[0] = z[7] * 3  # the direction of a reference latent: distance 0

    def kth_distance(reference, points, k):
        unit = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)
        distances = np.linalg.norm(unit(points)[:, None, :] - unit(reference)[None, :, :], axis=2)
        return np.sort(distances, axis=1)[:, k - 1] ** 2

    for k in (1, 4):
        with torch.no_grad():
            ours = LatentNeighbours.fit(z, k)(torch.from_numpy(queries).float()).numpy()
        np.testing.assert_allclose(ours, kth_distance(z, queries, k), atol=2e-3)
    assert ours.shape == (12,)
    sampled = LatentNeighbours.fit(z, 1, size=50, seed=4)
    assert sampled.reference.shape == (50, 8)
    kept = np.sort(np.random.default_rng(4).choice(300, size=50, replace=False))
    with torch.no_grad():
        np.testing.assert_allclose(sampled(torch.from_numpy(queries).float()).numpy(), kth_distance(z[kept], queries, 1), atol=2e-3)
    projected = LatentNeighbours.fit(z, 2, dims=3)  # the top 3 principal directions of the normalised latents
    directions = z / np.linalg.norm(z, axis=1, keepdims=True)
    components = np.linalg.svd(directions - directions.mean(axis=0), full_matrices=False)[2][:3].T
    with torch.no_grad():
        ours = projected(torch.from_numpy(queries).float()).numpy()
    np.testing.assert_allclose(ours, kth_distance(z @ components, queries @ components, 2), atol=2e-3)
    with pytest.raises(ValueError, match="at least k"):
        LatentNeighbours.fit(z[:3], 4)


def test_complexity_likelihood_ratio_and_max_probability_against_numpy():
    torch.manual_seed(1)
    model = glow()
    images = np.random.default_rng(2).integers(0, 17, (40, 8, 8)).astype(np.float32)
    with torch.no_grad():
        z = model(torch.from_numpy(images)).z.numpy()
    fitted = ScoreFit.fit(model, images, z, np.arange(40) % 10, "head")
    differences = np.abs(np.diff(images, axis=1)).sum(axis=(1, 2)) + np.abs(np.diff(images, axis=2)).sum(axis=(1, 2))
    assert fitted.neighbour_scale == pytest.approx(differences.mean() / (2 * 8 * 7))
    with torch.no_grad():
        scores = {k: v.numpy() for k, v in forward_scores(model, torch.from_numpy(images[:5]), fitted).items()}
    np.testing.assert_allclose(scores["complexity"], differences[:5] / (2 * fitted.neighbour_scale), rtol=1e-5)
    np.testing.assert_allclose(scores["likelihood_ratio"], scores["log_px"] + scores["complexity"], rtol=1e-6)
    np.testing.assert_allclose(scores["max_probability"], scores["probabilities"].max(axis=1))
    assert {"level_1", "level_2", "latent_distance"} <= set(scores)


def test_vectors_get_no_image_scores():
    config = ModelConfig(input_shape=[3], preprocessing=PreprocessingConfig(kind="standardize"), flow=FlowConfig(kind="realnvp", steps=2, hidden=8), head=HeadConfig(kind="gaussian"))
    model = HybridModel(config).eval()
    x = torch.randn(30, 3)
    with torch.no_grad():
        z = model(x).z.numpy()
    fitted = ScoreFit.fit(model, x.numpy(), z, None, "all")
    assert fitted.neighbour_scale is None
    with torch.no_grad():
        scores = forward_scores(model, x, fitted)
    assert {"log_px", "latent_distance", "mean", "variance"} <= set(scores) and "complexity" not in scores and "level_1" not in scores


@pytest.fixture(scope="module")
def digits_default(tmp_path_factory) -> Path:
    """The default digits config, trained for fewer epochs so the test stays short."""
    out = tmp_path_factory.mktemp("default") / "digits"
    assert training_main(["train", "--config", str(CONFIGS / "digits.yaml"), "--out", str(out), "--quiet", "--set", "train.epochs=25"]) == 0
    return out


def test_the_digits_default_rejects_blank_and_constant_images_and_keeps_test_digits(digits_default):
    loaded = load_checkpoint(digits_default)
    blank_and_constant = np.stack([np.full((8, 8), value, dtype=np.float32) for value in range(17)])
    with torch.no_grad():
        scores = {k: v.numpy() for k, v in forward_scores(loaded.model, torch.from_numpy(blank_and_constant), loaded.gate.fitted).items()}
    decision = loaded.gate.decide(scores)
    assert not decision.accepted.any(), decision.p_value
    config = DataConfig(**loaded.manifest.training.config["data"])
    test = split_dataset(load_dataset(config), config, 0).test
    with torch.no_grad():
        test_scores = {k: v.numpy() for k, v in forward_scores(loaded.model, torch.from_numpy(test.x), loaded.gate.fitted).items()}
    assert loaded.gate.decide(test_scores).accepted.mean() >= 0.95


def test_builtin_ood_families_are_drawn_like_the_data():
    from training.ood_sets import builtin_ood_sets

    x = load_dataset(DataConfig(name="digits")).x[:60]
    sets = builtin_ood_sets(x, 17, seed=0, count=40)
    assert set(sets) == {"uniform-noise", "gaussian-noise", "shuffled-pixels", "inverted", "blank", "constant", "dots", "glyphs", "strokes", "fragments", "blur"}
    for name, images in sets.items():
        assert images.shape[1:] == (8, 8) and images.dtype == np.float32, name
        assert images.min() >= 0 and images.max() <= 16 and np.array_equal(images, np.round(images)), name
    assert not sets["blank"].any()
    assert all(len(np.unique(image)) == 1 and image[0, 0] >= 1 for image in sets["constant"])
    assert all(1 <= np.count_nonzero(image) <= 3 for image in sets["dots"])
    for family in ("glyphs", "strokes"):  # ink, but less than a full frame, and not all the same image
        ink = (sets[family] > 8).mean(axis=(1, 2))
        assert (ink > 0).mean() > 0.9 and ink.max() < 0.9 and len({image.tobytes() for image in sets[family]}) > 30, family
    assert (sets["fragments"].sum(axis=(1, 2)) < x.sum(axis=(1, 2))).mean() > 0.9  # parts of the digits
    np.testing.assert_array_equal(sets["fragments"].shape, x.shape)
    assert (sets["blur"].std(axis=(1, 2)) < x.std(axis=(1, 2))).mean() > 0.9  # smoother (rescaled to their own peak)
    np.testing.assert_array_equal(sets["inverted"], 16 - x)
    again = builtin_ood_sets(x, 17, seed=0, count=40)
    assert all(np.array_equal(sets[k], again[k]) for k in sets)  # seeded


def test_unseen_ood_families_are_drawn_from_the_data_by_other_generators():
    from training.ood_sets import UNSEEN_FAMILIES, unseen_ood_sets

    x = load_dataset(DataConfig(name="digits")).x[:60]
    sets = unseen_ood_sets(x, 17, seed=0, count=40)
    assert tuple(sets) == UNSEEN_FAMILIES
    for name, images in sets.items():
        assert images.shape[1:] == (8, 8) and images.dtype == np.float32, name
        assert images.min() >= 0 and images.max() <= 16 and np.array_equal(images, np.round(images)), name
    assert all(any(np.array_equal(turned, np.rot90(image, k)) for k in (1, 3)) for turned, image in zip(sets["rotated"], x))
    assert (sets["overlaid"] >= x).all() and (sets["overlaid"].sum(axis=(1, 2)) > x.sum(axis=(1, 2))).mean() > 0.9
    np.testing.assert_array_equal(sets["chimeras"].shape, x.shape)
    ink = (sets["scripts"] > 8).mean(axis=(1, 2))
    assert (ink > 0).mean() > 0.9 and ink.max() < 0.9 and len({image.tobytes() for image in sets["scripts"]}) > 30
    again = unseen_ood_sets(x, 17, seed=0, count=40)
    assert all(np.array_equal(sets[k], again[k]) for k in sets)  # seeded
