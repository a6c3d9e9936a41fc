"""vfm/theory/peer_review/estimate.py and reviews.py: closed forms against Monte Carlo within 3 standard errors."""

from __future__ import annotations

import numpy as np
import pytest

from vfm.theory.peer_review import (
    GaussianReview,
    ParallelMechanism,
    QualityPrior,
    SequentialThreshold,
    SoftmaxReview,
    count_utility,
    exact_reviews,
    exact_utility,
    parallel_optimal_threshold,
    parallel_prior_utility,
    shifted_quality,
    simulate,
)

DRAWS = 40_000


@pytest.mark.parametrize("mechanism", [ParallelMechanism(0.3), SequentialThreshold(0.5, -0.2),
                                       SequentialThreshold(-0.3, 0.4)])
@pytest.mark.parametrize("utility", [shifted_quality(), count_utility()])
def test_exact_gaussian_expectations_agree_with_monte_carlo(mechanism, utility):
    rng = np.random.default_rng(0)
    quality = np.array([2.0, 0.8, 0.1, -0.4, -1.5])  # one author, many noise draws
    review = GaussianReview(1.0)
    many = np.broadcast_to(quality, (DRAWS, 5))
    simulated_utility, simulated_reviews = simulate(mechanism, many, review, rng, utility)
    for exact, simulated in [(exact_utility(mechanism, quality, review, utility)[0], simulated_utility),
                             (exact_reviews(mechanism, quality, review)[0], simulated_reviews)]:
        se = simulated.std(ddof=1) / np.sqrt(DRAWS)
        assert abs(simulated.mean() - exact) < 3 * se + 1e-12, (exact, simulated.mean(), se)


def test_sequential_review_count_closed_form_by_hand():
    # E[#reviews | q] = 1 + sum_{i<n} prod_{j<=i} Phi((q_j - t_rev)/sigma): with every Phi = 1/2, 1 + 1/2 + 1/4.
    reviews = exact_reviews(SequentialThreshold(1.0, 0.0), np.zeros((1, 3)), GaussianReview(1.0))
    assert reviews[0] == pytest.approx(1.75)


def test_parallel_prior_closed_form_matches_sampled_qualities():
    prior, review, t = QualityPrior.normal(-1.0, 2.0), GaussianReview(1.0), 0.25
    quality = prior.sample(4, DRAWS, np.random.default_rng(3))
    per_author = exact_utility(ParallelMechanism(t), quality, review)
    se = per_author.std(ddof=1) / np.sqrt(DRAWS)
    assert abs(per_author.mean() - parallel_prior_utility(4, -1.0, 2.0, 1.0, t)) < 3 * se
    assert parallel_optimal_threshold(-1.0, 2.0, 1.0) == pytest.approx(0.25)
    # The closed-form optimum is a maximum of the closed form.
    best = parallel_prior_utility(4, -1.0, 2.0, 1.0, 0.25)
    assert best > parallel_prior_utility(4, -1.0, 2.0, 1.0, 0.15)
    assert best > parallel_prior_utility(4, -1.0, 2.0, 1.0, 0.35)


@pytest.mark.parametrize("normalized", [True, False])
def test_softmax_review_acceptance_probability_is_exact(normalized):
    review = SoftmaxReview(QualityPrior.normal(5.5, 1.0), temperature=-0.513, k=3, normalized=normalized)
    quality = np.array([4.0, 5.5, 6.3])
    rng = np.random.default_rng(5)
    scores = review.sample(np.broadcast_to(quality, (DRAWS, 3)), rng)
    for threshold in [5.0, 5.8]:
        exact = review.prob_at_least(quality, threshold)
        simulated = (scores >= threshold).mean(axis=0)
        se = np.sqrt(exact * (1 - exact) / DRAWS)
        assert np.all(np.abs(simulated - exact) < 3 * se + 1e-9), (threshold, exact, simulated)


def test_softmax_map_shrinks_reviews_toward_the_prior():
    review = SoftmaxReview(QualityPrior.normal(5.5, 1.0), normalized=False)
    # Without the log-partition term, MAP = precision-weighted mean: (1*5.5 + 1.026*(8+8+8)) / (1 + 3*1.026).
    expected = (5.5 + 1.026 * 24) / (1 + 3 * 1.026)
    assert review.map_estimate(np.array([7, 7, 7]))[()] == pytest.approx(expected)
    normalized = SoftmaxReview(QualityPrior.normal(5.5, 1.0))
    value = normalized.map_estimate(np.array([7, 7, 7]))[()]
    assert 5.5 < value < 8.0
    probs = np.exp(normalized.score_logprobs(np.array(value)))
    # At the MAP the derivative of log prior + 3 log P(8 | q) vanishes (checked by finite differences).
    def log_post(q):
        return float(3 * normalized.score_logprobs(np.array(q))[7] + normalized.prior.logpdf(q))
    assert abs(log_post(value + 1e-4) - log_post(value - 1e-4)) < 1e-6 and probs.sum() == pytest.approx(1.0)


def test_iclr_model_curves_match_simulated_sequential_review():
    from vfm.theory.peer_review import PaperCountDist
    from vfm.theory.peer_review.iclr import iclr_burden, iclr_like_model

    model = iclr_like_model(5.5, 1.0, -0.513, PaperCountDist.from_counts({3: 1}))
    result = iclr_burden(model, n_draws=2_000, seed=1)
    j = int(np.argmin(np.abs(result.thresholds - 5.6)))
    t = float(result.thresholds[j])
    rng = np.random.default_rng(2)
    quality = model.prior.sample(3, DRAWS, rng)
    value, reviews = simulate(SequentialThreshold(t, t), quality, model.review, rng, shifted_quality(5.5))
    # Different quality draws on each side; the exact side's per-draw spread is at most the simulated one's.
    se = np.hypot(value.std() / np.sqrt(DRAWS), value.std() / np.sqrt(2_000))
    assert abs(value.mean() - result.sequential_utility[j]) < 3 * se
    assert abs(reviews.mean() - result.sequential_reviews[j]) < 0.05
    assert result.parallel_reviews == 3.0 and 0 < result.relative_burden <= 1.0
