"""The conformal gate against independent computations: p-values uniform on exchangeable data, the
false-rejection guarantee of the combined gate, the surprise functions, decision boundaries, and
the save/load round trip."""
import math

import numpy as np
import pytest
from scipy import stats

from models.conformal import LEARNED_COMBINATIONS, WEIGHT_FLOOR, batch_typicality_p_value, combined_statistic, fit_sum_weights, fit_weights, p_values, surprise
from models.gate import GATE_METHODS, Gate, calibrate_gate, gate_tails, score_matrix
from models.rowwise import row_products
from models.score_classifier import ScoreClassifier


def draw_scores(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Three dependent scores of one latent variable: Gaussian, heavy-tailed and skewed."""
    common = rng.standard_normal(n)
    return {
        "log_px": -50 + 5 * (0.8 * common + 0.6 * rng.standard_normal(n)),
        "heavy": common + rng.standard_t(2, n),
        "skewed": np.exp(0.5 * common + 0.5 * rng.standard_normal(n)),
    }


TAILS = {"log_px": "both", "heavy": "upper", "skewed": "lower"}


def draw_outliers(rng: np.random.Generator, n: int) -> list[dict[str, np.ndarray]]:
    """Two synthetic outlier sets: one far in the heavy score's tail, one low in the skewed score."""
    heavy, skewed = draw_scores(rng, n), draw_scores(rng, n)
    heavy["heavy"] = heavy["heavy"] + 6
    skewed["skewed"] = skewed["skewed"] / 8
    return [heavy, skewed]


@pytest.mark.parametrize("tail", ["lower", "upper", "both"])
def test_conformal_p_values_are_uniform_on_exchangeable_data(tail):
    rng = np.random.default_rng(0)
    n, repeats = 99, 3000
    p = np.array([p_values(np.sort(rng.standard_normal(n)), rng.standard_normal(1), tail)[0] for _ in range(repeats)])
    grid = np.arange(1, n + 2) / (n + 1)
    if tail == "both":  # twice the smaller one-sided p-value: valid, conservative, not uniform
        assert np.all([np.mean(p <= a) <= a + 3 * math.sqrt(a * (1 - a) / repeats) for a in (0.02, 0.05, 0.1, 0.2, 0.5)])
        return
    empirical = np.array([np.mean(p <= g + 1e-12) for g in grid])
    assert np.max(np.abs(empirical - grid)) < 1.36 / math.sqrt(repeats)  # KS at the 5% level
    assert stats.kstest(p, "uniform").pvalue > 0.001


@pytest.mark.parametrize("combine, classifier_hidden", [("fisher", 0), ("min", 0), ("weighted", 0), ("max_sum", 0), ("max_sum", 4), ("bonferroni", 0)])
def test_combined_gate_false_rejection_rate_is_at_most_alpha(combine, classifier_hidden, monkeypatch):
    """Fresh reference, calibration and test draws each time (and outliers for the weights and the
    score classifier, here fitted in few steps on a small reference): P(reject) <= alpha (binomial
    margin)."""
    monkeypatch.setattr("models.gate.CLASSIFIER_MIN_REFERENCE", 100)
    monkeypatch.setattr("models.score_classifier.STEPS", 30)
    rng = np.random.default_rng(1)
    alpha, repeats, rejected = 0.05, 1500 if classifier_hidden == 0 else 600, 0
    for _ in range(repeats):
        reference, calibration, test = draw_scores(rng, 200), draw_scores(rng, 99), draw_scores(rng, 1)
        outliers = draw_outliers(rng, 50) if combine in LEARNED_COMBINATIONS else None
        gate = calibrate_gate(
            reference["log_px"], reference, calibration, TAILS, "conformal", alpha, combine, outliers=outliers, classifier_hidden=classifier_hidden
        )
        assert (gate.classifier is not None) == (classifier_hidden > 0)
        rejected += int(not gate.decide(test).accepted[0])
    rate = rejected / repeats
    assert rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / repeats)
    if combine != "bonferroni":  # the calibrated combinations use their level, not a fraction of it
        assert rate >= alpha - 3 * math.sqrt(alpha * (1 - alpha) / repeats) - 1 / 100


def test_fit_weights_keeps_the_score_that_carries_the_evidence_and_moves_nothing_without_gain():
    rng = np.random.default_rng(12)
    reference = rng.exponential(size=(2000, 3))
    carried = rng.exponential(size=(500, 3))
    carried[:, 2] += 3  # only the third score has evidence
    weights = fit_weights(reference, [carried], alpha=0.01)

    def power(w):
        return np.mean((carried * w).max(axis=1) > np.quantile((reference * w).max(axis=1), 0.99))

    assert weights[2] == 1 and weights[:2].max() < 1 and weights.min() >= WEIGHT_FLOOR
    assert power(weights) > power(np.ones(3)) + 0.05
    # outliers drawn like the reference: no weighting rejects more, so the plain maximum stays
    assert fit_weights(reference, [reference], alpha=0.01).tolist() == [1.0, 1.0, 1.0]


def test_fit_sum_weights_adds_the_scores_that_share_evidence_without_losing_any_outlier_set():
    rng = np.random.default_rng(14)
    reference = rng.exponential(size=(4000, 4))
    shared = rng.exponential(size=(1000, 4))
    shared[:, :2] += 3.5  # two scores carry the evidence, neither alone enough
    alone = rng.exponential(size=(1000, 4))
    alone[:, 3] += 10  # only the last score: a sum over all would dilute it
    weights = fit_sum_weights(reference, [shared, alone], alpha=0.01)

    def shares(w):
        threshold = np.quantile(combined_statistic(reference, "max_sum", w), 0.99)
        return np.array([np.mean(combined_statistic(o, "max_sum", w) > threshold) for o in (shared, alone)])

    assert weights[:2].min() > 0 and weights.max() <= 1 and weights.min() >= 0
    assert shares(weights)[0] > shares(np.zeros(4))[0] + 0.3  # the worst set gains over min
    assert shares(weights)[1] >= shares(np.zeros(4))[1] - 0.01  # and the set one score catches is kept
    # outliers drawn like the reference: nothing to gain, so the statistic stays the plain maximum
    assert fit_sum_weights(reference, [rng.exponential(size=(4000, 4))], alpha=0.01).tolist() == [0.0] * 4


@pytest.mark.parametrize("combine", LEARNED_COMBINATIONS)
def test_a_learned_gate_rejects_more_of_the_outliers_it_was_fitted_for_and_survives_saving(combine, tmp_path):
    rng = np.random.default_rng(13)
    reference, calibration = draw_scores(rng, 1000), draw_scores(rng, 1000)
    outliers = draw_outliers(rng, 400)
    learned = calibrate_gate(reference["log_px"], reference, calibration, TAILS, "conformal", 0.05, combine, outliers=outliers)
    plain = calibrate_gate(reference["log_px"], reference, calibration, TAILS, "conformal", 0.05, "min")
    assert set(learned.summary.weights) == set(TAILS) and max(learned.summary.weights.values()) <= 1
    fresh = draw_outliers(rng, 2000)
    assert sum((~learned.decide(o).accepted).mean() for o in fresh) > sum((~plain.decide(o).accepted).mean() for o in fresh)
    learned.save(tmp_path / "gate.safetensors")
    loaded = Gate.load(learned.summary, tmp_path / "gate.safetensors")
    np.testing.assert_array_equal(loaded.weights, learned.weights)
    scores = draw_scores(rng, 300)
    np.testing.assert_array_equal(loaded.decide(scores).p_value, learned.decide(scores).p_value)
    with pytest.raises(ValueError, match="needs synthetic outliers"):
        calibrate_gate(reference["log_px"], reference, calibration, TAILS, "conformal", 0.05, combine)


def draw_shared_outliers(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Outliers that no single score gives away: every score moved one reference deviation the outlying way."""
    scores = draw_scores(rng, n)
    return {"log_px": scores["log_px"] + 5 * rng.choice([-1, 1], n), "heavy": scores["heavy"] + 1.5, "skewed": scores["skewed"] * 0.6}


def test_a_score_classifier_finds_evidence_shared_by_the_scores_keeps_the_guarantee_and_survives_saving(tmp_path):
    rng = np.random.default_rng(21)
    reference, calibration = draw_scores(rng, 4000), draw_scores(rng, 2000)
    outliers = [draw_shared_outliers(rng, 1000), *draw_outliers(rng, 1000)]
    plain = calibrate_gate(reference["log_px"], reference, calibration, TAILS, "conformal", 0.05, "max_sum", outliers=outliers)
    learned = calibrate_gate(reference["log_px"], reference, calibration, TAILS, "conformal", 0.05, "max_sum", outliers=outliers, classifier_hidden=16)
    assert plain.classifier is None and learned.weights.shape == (4,) and learned.summary.weights["classifier"] > 0
    fresh = draw_shared_outliers(rng, 4000)
    assert (~learned.decide(fresh).accepted).mean() > (~plain.decide(fresh).accepted).mean() + 0.05
    for far in draw_outliers(rng, 4000):  # the maximum over the gate scores still catches what one score gives away
        assert (~learned.decide(far).accepted).mean() >= (~plain.decide(far).accepted).mean() - 0.02
    inliers = draw_scores(rng, 20000)  # the gate is conditional on one calibration split of 2000: a margin of its own
    assert abs((~learned.decide(inliers).accepted).mean() - 0.05) < 3 * math.sqrt(0.05 * 0.95 / 2000)
    learned.save(tmp_path / "gate.safetensors")
    loaded = Gate.load(learned.summary, tmp_path / "gate.safetensors")
    assert loaded.classifier is not None
    np.testing.assert_array_equal(loaded.decide(fresh).p_value, learned.decide(fresh).p_value)
    # too small a reference for two halves: no classifier, the plain max_sum gate
    small = {name: values[:500] for name, values in reference.items()}
    assert calibrate_gate(small["log_px"], small, calibration, TAILS, "conformal", 0.05, "max_sum", outliers=outliers, classifier_hidden=16).classifier is None


def test_the_weights_judge_the_score_classifier_on_families_it_was_not_fitted_on():
    """A family outlying only in the tails the gate does not test (heavy low, skewed high) is caught
    by a classifier fitted on it, and not by one fitted on the other families only. The weights are
    fitted leave one family out, as on a family the classifier never saw, so the classifier gets no
    weight: the sum keeps only what carries over to families outside the fit."""
    rng = np.random.default_rng(23)
    reference, calibration, untested = draw_scores(rng, 4000), draw_scores(rng, 2000), draw_scores(rng, 1000)
    untested["heavy"], untested["skewed"] = untested["heavy"] - 4, untested["skewed"] * 4
    gate = calibrate_gate(
        reference["log_px"], reference, calibration, TAILS, "conformal", 0.05, "max_sum", outliers=[untested, *draw_outliers(rng, 1000)], classifier_hidden=16
    )
    caught = gate.classifier(score_matrix(untested, TAILS)) > np.quantile(gate.classifier_reference, 0.95)
    assert caught.mean() > 0.5  # the classifier fitted on them does catch them
    assert gate.summary.weights["classifier"] == 0


def test_score_classifier_bounds_contain_its_log_odds_over_a_box_of_scores():
    rng = np.random.default_rng(22)
    inliers = rng.standard_normal((600, 3))
    classifier = ScoreClassifier.fit(inliers, [rng.standard_normal((300, 3)) + [2, 0, -1]], hidden=8)
    low = rng.standard_normal((50, 3))
    high = low + rng.exponential(size=(50, 3))
    lower, upper = classifier.bounds(low, high)
    inside = low[:, None, :] + rng.uniform(size=(50, 200, 3)) * (high - low)[:, None, :]
    values = classifier(inside.reshape(-1, 3)).reshape(50, 200)
    assert np.all(values >= lower[:, None] - 1e-9) and np.all(values <= upper[:, None] + 1e-9)
    assert np.all(upper - lower <= np.abs(classifier.output_weight) @ np.abs(classifier.hidden_weight.T) @ ((high - low) / classifier.scale).T + 1e-9)
    np.testing.assert_array_equal(ScoreClassifier.from_arrays(classifier.arrays())(inside[0]), classifier(inside[0]))


def test_score_classifier_ensemble_is_the_mean_of_its_members_fitted_alone():
    rng = np.random.default_rng(24)
    inliers, outliers = rng.standard_normal((400, 3)), [rng.standard_normal((200, 3)) + [1, 0, -1], rng.standard_normal((200, 3)) * 3]
    ensemble = ScoreClassifier.fit(inliers, outliers, hidden=4, seed=5, members=3)
    alone = [ScoreClassifier.fit(inliers, outliers, hidden=4, seed=seed, members=1) for seed in (5, 6, 7)]
    scores = rng.standard_normal((100, 3)) * 2
    np.testing.assert_allclose(ensemble(scores), np.mean([member(scores) for member in alone], axis=0), rtol=1e-9, atol=1e-9)
    assert ensemble.hidden_weight.shape == (3, 12) and not np.allclose(alone[0](scores), alone[1](scores))


def test_row_products_are_the_matrix_product_and_the_same_for_a_row_alone_or_in_a_batch():
    """numpy's ``@`` rounds a row by how many rows come with it (a matrix-vector kernel alone):
    ``row_products`` is the same product with one fixed order of sums per row."""
    rng = np.random.default_rng(3)
    a, matrix, vector = rng.standard_normal((300, 9)), rng.standard_normal((9, 40)), rng.standard_normal(9)
    for b in (matrix, vector):
        whole = row_products(a, b)
        np.testing.assert_allclose(whole, a @ b, rtol=1e-12, atol=1e-12)
        for size in (1, 3, 64):
            np.testing.assert_array_equal(np.concatenate([row_products(a[i : i + size], b) for i in range(0, len(a), size)]), whole)


def test_p_value_counts_ties_and_tails_against_a_direct_count():
    calibration = np.sort(np.array([1.0, 2.0, 2.0, 3.0, 5.0]))
    scores = np.array([0.0, 2.0, 4.0, 6.0, -np.inf])
    lower = [(1 + np.sum(calibration <= s)) / 6 for s in scores]
    upper = [(1 + np.sum(calibration >= s)) / 6 for s in scores[:-1]] + [6 / 6]  # -inf is extreme only as a low value
    np.testing.assert_allclose(p_values(calibration, scores, "lower"), lower)
    np.testing.assert_allclose(p_values(calibration, scores[:-1], "upper"), upper[:-1])
    np.testing.assert_allclose(p_values(calibration, scores, "both"), np.minimum(1, 2 * np.minimum(lower, [(1 + np.sum(calibration >= s)) / 6 for s in scores[:-1]] + [1 / 6])))


def test_surprise_is_monotone_and_keeps_growing_past_the_reference():
    reference = np.sort(np.random.default_rng(2).standard_normal(500))
    scores = np.linspace(-20, 20, 401)
    upper = surprise(reference, scores, "upper")
    lower = surprise(reference, scores, "lower")
    assert np.all(np.diff(upper) >= 0) and np.all(np.diff(lower) <= 0)
    assert upper[-1] > upper[scores.searchsorted(reference[-1])] + 10  # unbounded beyond the largest reference value
    both = surprise(reference, scores, "both")
    np.testing.assert_allclose(both, np.maximum(0, np.maximum(upper, lower) - math.log(2)))
    assert surprise(reference, np.array([np.nan, -np.inf]), "lower").tolist() == [math.inf, math.inf]
    # inside the reference's central range, the surprise is -log of the empirical tail probability
    middle = np.array([0.0])
    assert surprise(reference, middle, "upper")[0] == pytest.approx(-math.log((1 + np.sum(reference >= 0)) / 501))


def make_gate(method="conformal", alpha=0.05):
    rng = np.random.default_rng(3)
    reference, calibration = draw_scores(rng, 300), draw_scores(rng, 300)
    return calibrate_gate(reference["log_px"], reference, calibration, TAILS, method, alpha, "fisher")


def test_tau_gates_accept_at_the_boundary_and_report_in_log_px_units():
    gate = make_gate("validation")
    scores = draw_scores(np.random.default_rng(4), 3)
    scores["log_px"] = np.array([gate.tau, np.nextafter(gate.tau, -np.inf), -np.inf])
    decision = gate.decide(scores)
    assert decision.accepted.tolist() == [True, False, False]
    assert decision.rejected_by.tolist() == [None, "log_px", "support"]
    np.testing.assert_allclose(decision.instance_score[:2], -scores["log_px"][:2])
    assert decision.threshold == -gate.tau
    assert np.all((decision.instance_score > decision.threshold) == ~decision.accepted)


def test_conformal_gate_accepts_p_equal_alpha_and_names_the_strongest_evidence():
    gate = make_gate(alpha=0.05)
    scores = draw_scores(np.random.default_rng(5), 2000)
    decision = gate.decide(scores)
    assert np.array_equal(decision.accepted, decision.p_value >= gate.alpha)
    assert decision.threshold == pytest.approx(-math.log10(gate.alpha))
    assert np.array_equal(decision.instance_score > decision.threshold, ~decision.accepted)
    boundary = np.flatnonzero(decision.p_value == gate.alpha)
    assert boundary.size == 0 or decision.accepted[boundary].all()
    # an input far in one score's tail is rejected, and that score is named
    far = {name: values[:1].copy() for name, values in scores.items()}
    far["heavy"] = np.array([1e6])
    outlier = gate.decide(far)
    assert not outlier.accepted[0] and outlier.rejected_by[0] == "heavy"
    assert outlier.p_value[0] == pytest.approx(1 / (len(gate.statistic) + 1))
    outside = gate.decide({**far, "log_px": np.array([-np.inf])})
    assert outside.p_value[0] == 0 and outside.rejected_by[0] == "support"


def test_every_method_and_the_save_load_round_trip(tmp_path):
    gate = make_gate()
    path = tmp_path / "gate.safetensors"
    gate.save(path)
    loaded = Gate.load(gate.summary, path)
    scores = draw_scores(np.random.default_rng(6), 500)
    for method in GATE_METHODS:
        first, second = gate.with_method(method).decide(scores), loaded.with_method(method).decide(scores)
        np.testing.assert_array_equal(first.accepted, second.accepted)
        np.testing.assert_array_equal(first.p_value, second.p_value)
    assert gate.summary.validation.tau == pytest.approx(np.quantile(draw_scores(np.random.default_rng(3), 300)["log_px"], 0.05))


def test_gate_tails_defaults_and_unknown_scores():
    available = ["log_px", "level_1", "level_2", "max_probability", "latent_distance"]
    defaults = gate_tails(None, available)
    assert set(defaults) <= set(available) and "log_px" in defaults and "level_1" in defaults and "level_2" in defaults
    assert gate_tails({"log_px": "lower"}, available) == {"log_px": "lower"}
    with pytest.raises(ValueError, match="entropy"):
        gate_tails({"entropy": "upper"}, available)


def test_batch_typicality_detects_a_shifted_batch_and_not_a_typical_one():
    rng = np.random.default_rng(7)
    calibration = np.sort(rng.normal(-100, 10, 2000))
    assert batch_typicality_p_value(calibration, rng.normal(-100, 10, 64)) > 0.05
    assert batch_typicality_p_value(calibration, rng.normal(-95, 10, 64)) < 0.01  # each value is typical, the batch is not
    assert batch_typicality_p_value(calibration, np.array([-100.0, -np.inf])) < 0.001
    repeats = [batch_typicality_p_value(calibration, rng.choice(calibration, 32), seed=i) for i in range(300)]
    assert np.mean(np.array(repeats) < 0.05) <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 300)


def test_upper_tail_past_the_threshold_matches_the_peaks_over_threshold_formula():
    reference = np.arange(1.0, 21.0)  # n = 20: the 90% quantile index is ceil(18) = 18, value 19
    threshold, excess = 19.0, np.array([1.0])  # values above it: 20
    base = -math.log((1 + 20 - 18) / 21)  # #reference >= 19 is 2
    scores = np.array([19.5, 25.0, 19.0, 3.0])
    expected = [base + (19.5 - threshold) / excess.mean(), base + (25.0 - threshold) / excess.mean(), -math.log((1 + 20 - 18) / 21), -math.log((1 + 20 - 2) / 21)]
    np.testing.assert_allclose(surprise(reference, scores, "upper"), expected)
    np.testing.assert_allclose(surprise(np.sort(-reference), -scores, "lower"), expected)
    flat = np.full(10, 4.0)  # no value above the threshold: the scale falls back to a tiny positive number
    assert surprise(flat, np.array([4.0 + 1e-9]), "upper")[0] > 100


def test_bonferroni_is_m_times_the_smallest_p_value_and_names_its_score():
    from models.conformal import combined_p_values

    per_score = np.array([[0.2, 0.01, 0.5], [0.9, 0.8, 0.7]])
    np.testing.assert_allclose(combined_p_values(per_score, None, "bonferroni", None), [0.03, 1.0])
    rng = np.random.default_rng(8)
    reference, calibration = draw_scores(rng, 300), draw_scores(rng, 300)
    gate = calibrate_gate(reference["log_px"], reference, calibration, TAILS, "conformal", 0.05, "bonferroni")
    far = {name: values[:1] for name, values in draw_scores(rng, 1).items()}
    far["skewed"] = np.array([1e-9])  # far into its lower tail
    decision = gate.decide(far)
    assert not decision.accepted[0] and decision.rejected_by[0] == "skewed" and gate.statistic is None


def test_a_p_value_equal_to_alpha_is_accepted():
    rng = np.random.default_rng(9)
    reference, calibration = draw_scores(rng, 200), draw_scores(rng, 19)  # combined p-values are k / 20
    gate = calibrate_gate(reference["log_px"], reference, calibration, TAILS, "conformal", 0.05, "min")
    beyond_all = {name: values[:1] for name, values in draw_scores(rng, 1).items()}
    beyond_all["heavy"] = np.array([1e9])
    decision = gate.decide(beyond_all)
    assert decision.p_value[0] == pytest.approx(0.05) and decision.accepted[0]


def test_calibrate_gate_defaults_taus_and_fitted_parts_survive_saving(tmp_path):
    import torch

    from models.scores import LatentGaussian, LatentNeighbours, ScoreFit

    rng = np.random.default_rng(10)
    reference, calibration = draw_scores(rng, 300), draw_scores(rng, 300)
    neighbours = LatentNeighbours.fit(rng.standard_normal((40, 4)), 3, dims=2)
    fitted = ScoreFit(LatentGaussian(torch.randn(4, 2), torch.randn(3, 2)), 1.5, neighbours)
    gate = calibrate_gate(reference["log_px"] + 1, reference, calibration, TAILS, slack=2.0, fitted=fitted)
    assert (gate.method, gate.alpha, gate.combine) == ("conformal", 0.01, "min") and gate.fitted is fitted
    assert gate.summary.min_train.tau == pytest.approx(reference["log_px"].min() + 1 - 2.0)
    assert gate.with_method("min_train").tau == gate.summary.min_train.tau and gate.with_method("min_train").method == "min_train"
    assert gate.with_method("validation").tau == gate.summary.validation.tau == gate.tau
    assert gate.with_method("conformal").tau == gate.tau
    gate.save(tmp_path / "gate.safetensors")
    loaded = Gate.load(gate.summary, tmp_path / "gate.safetensors")
    assert (loaded.method, loaded.tau, loaded.alpha, loaded.combine) == (gate.method, gate.tau, gate.alpha, gate.combine)
    assert loaded.fitted.neighbour_scale == 1.5
    torch.testing.assert_close(loaded.fitted.latent.weight, fitted.latent.weight)
    torch.testing.assert_close(loaded.fitted.latent.means, fitted.latent.means)
    assert loaded.fitted.neighbours.k == 3
    torch.testing.assert_close(loaded.fitted.neighbours.reference, neighbours.reference)
    torch.testing.assert_close(loaded.fitted.neighbours.projection, neighbours.projection)
    assert set(loaded.calibration) == {"log_px", "heavy", "skewed"} and set(loaded.reference) == set(TAILS)
    vectors = calibrate_gate(reference["log_px"], reference, calibration, TAILS, fitted=ScoreFit(fitted.latent, None))
    vectors.save(tmp_path / "vectors.safetensors")
    vectors = Gate.load(vectors.summary, tmp_path / "vectors.safetensors")
    assert vectors.fitted.neighbour_scale is None and vectors.fitted.neighbours is None


def test_default_scores_take_every_level_and_nothing_else():
    available = ["log_px", "level_1", "level_2", "levels_of_detail", "likelihood_ratio", "complexity", "max_probability", "latent_distance", "neighbour_distance", "other"]
    assert gate_tails(None, available) == {
        "log_px": "both", "level_1": "both", "level_2": "both", "likelihood_ratio": "lower",
        "complexity": "both", "max_probability": "lower", "latent_distance": "upper", "neighbour_distance": "upper",
    }


def test_batch_typicality_p_value_counts_as_a_conformal_rank():
    typical = np.full(50, -10.0)
    assert batch_typicality_p_value(typical, np.array([-10.0, -10.0]), draws=99) == 1.0  # every draw as far: (1 + 99) / 100
    assert batch_typicality_p_value(typical, np.array([-11.0]), draws=99) == pytest.approx(1 / 100)  # none as far
    assert batch_typicality_p_value(typical, np.array([np.nan]), draws=99) == pytest.approx(1 / 100)
    spread = np.sort(np.random.default_rng(11).normal(size=200))
    batch = np.array([0.3, -0.1, 0.5])
    assert batch_typicality_p_value(spread, batch, seed=4) == batch_typicality_p_value(spread, batch, seed=4)
    assert len({batch_typicality_p_value(spread, batch, seed=s) for s in range(5)}) > 1


def test_eq_10_outputs_and_units_for_accepted_and_rejected_inputs():
    from models.gate import bits_per_dim, gated_probabilities, gated_regression

    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    accepted = np.array([True, False, True])
    prior = np.array([0.3, 0.7])
    np.testing.assert_array_equal(gated_probabilities(probabilities, accepted, prior), [[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]])
    mean, variance = gated_regression(np.array([1.0, 2.0, 3.0]), np.array([0.1, 0.2, 0.3]), accepted, [5.0, 9.0])
    np.testing.assert_array_equal(mean, [1.0, 5.0, 3.0])
    np.testing.assert_array_equal(variance, [0.1, 9.0, 0.3])
    assert bits_per_dim(-64 * math.log(2) * 3.0, 64) == pytest.approx(3.0)
    np.testing.assert_allclose(bits_per_dim(np.array([-math.log(2) * 10, 0.0]), 10), [1.0, 0.0])


def test_the_gate_s_batch_test_uses_its_calibration_log_px():
    gate = make_gate()
    batch = np.array([-50.0, -48.0, -52.0])
    assert gate.batch_p_value(batch) == batch_typicality_p_value(gate.calibration["log_px"], batch, seed=len(batch))
    assert gate.batch_p_value(np.array([-5.0] * 3)) < 0.01


def test_summaries_per_score_p_values_and_method_taus_are_exact(tmp_path):
    from models.gate import summarize_log_px

    summary = summarize_log_px(np.array([-1.0, np.nan, -3.0, -np.inf, -2.0]))
    assert (summary.count, summary.non_finite, summary.min, summary.max, summary.mean) == (5, 2, -3.0, -1.0, -2.0)
    assert summary.quantiles["0.5"] == -2.0 and set(summary.quantiles) == {"0.001", "0.01", "0.05", "0.25", "0.5", "0.75", "0.95", "0.99"}
    with pytest.raises(ValueError, match="no finite"):
        summarize_log_px(np.array([np.nan, -np.inf]))
    assert summarize_log_px(np.array([-4.0])).min == -4.0
    rng = np.random.default_rng(12)
    reference, calibration = draw_scores(rng, 300), draw_scores(rng, 300)
    paper = calibrate_gate(reference["log_px"], reference, calibration, TAILS, "min_train")
    assert paper.tau == paper.summary.min_train.tau == reference["log_px"].min()  # no slack by default
    assert set(paper.summary.statistics) == {"train", "validation", "calibration"}
    scores = draw_scores(rng, 50)
    decision = make_gate().decide(scores)
    gate = make_gate()
    assert set(decision.p_values) == set(gate.tails)
    for name, tail in gate.tails.items():
        np.testing.assert_array_equal(decision.p_values[name], p_values(gate.calibration[name], scores[name], tail))
    assert gate.batch_p_value(scores["log_px"][:5]) == gate.batch_p_value(scores["log_px"][:5])
    gate.save(tmp_path / "gate.safetensors")
    assert Gate.load(gate.summary, tmp_path / "gate.safetensors").fitted is None


def test_small_references_the_fitted_tails_and_clear_errors():
    from models.conformal import Surprise, UpperTail, combined_statistic
    from models.gate import gated_probabilities, summarize_log_px

    assert UpperTail.fit(np.arange(5.0)).threshold == 4.0  # the largest of 5: ceil(0.9 * 5) is past the end
    assert UpperTail.fit(np.arange(100.0)).threshold == 90.0
    upper, lower, both = (Surprise.fit(np.arange(20.0), tail) for tail in ("upper", "lower", "both"))
    assert upper.lower is None and lower.upper is None and both.upper is not None and both.lower is not None
    with pytest.raises(ValueError, match="combine 'bonferroni' has no calibrated statistic"):
        combined_statistic(np.zeros((2, 2)), "bonferroni")
    with pytest.raises(ValueError, match="available: log_px, level_1"):
        gate_tails({"nope": "upper"}, ["log_px", "level_1"])
    with pytest.raises(ValueError, match="^no finite log p\\(x\\) values to summarize$"):
        summarize_log_px(np.array([np.nan]))
    probabilities = np.array([[0.25, 0.75]], dtype=np.float32)
    assert gated_probabilities(probabilities, np.array([False]), np.array([0.5, 0.5], dtype=np.float64)).dtype == np.float32


def test_batch_typicality_draws_from_every_calibration_value():
    calibration = np.sort(np.r_[-100.0, np.zeros(9)])  # one value in ten is far out
    assert batch_typicality_p_value(calibration, np.array([-100.0]), draws=999, seed=1) > 0.05  # as likely as a draw of the minimum
