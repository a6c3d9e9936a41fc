"""Peer-review mechanisms (Su 2021; Zhang, Schoenebeck, Su 2024): models, mechanisms, exact and simulated
expectations, threshold optimisation, incentive checks and Gaussian sweeps. numpy and scipy only."""

from vfm.theory.peer_review import plots
from vfm.theory.peer_review.estimate import (
    Estimate,
    exact_reviews,
    exact_utility,
    expected_reviews,
    expected_utility,
    parallel_optimal_threshold,
    parallel_prior_utility,
    simulate,
)
from vfm.theory.peer_review.incentives import BestResponse, best_response, is_truthful
from vfm.theory.peer_review.isotonic import isotonic_adjust
from vfm.theory.peer_review.mechanisms import IsotonicMechanism, Mechanism, ParallelMechanism, SequentialThreshold
from vfm.theory.peer_review.outcome import Outcome, Probabilities, truthful_order
from vfm.theory.peer_review.priors import PaperCountDist, QualityPrior
from vfm.theory.peer_review.reviews import GaussianReview, ReviewModel, SoftmaxReview
from vfm.theory.peer_review.sweep import CellResult, gap_closed, gaussian_burden, gaussian_cell, relative_burden
from vfm.theory.peer_review.thresholds import (
    ThresholdResult,
    isotonic_curve,
    optimize_isotonic,
    optimize_parallel,
    optimize_sequential,
    utility_curve,
)
from vfm.theory.peer_review.utilities import (
    AdditiveUtility,
    ScoreUtility,
    above_utility,
    count_utility,
    exponential_score_utility,
    shifted_quality,
)
from vfm.theory.peer_review.variants import CreditPool, MemorylessCoinFlip

__all__ = [
    "AdditiveUtility", "BestResponse", "CellResult", "CreditPool", "Estimate", "GaussianReview",
    "IsotonicMechanism", "Mechanism", "MemorylessCoinFlip", "Outcome", "PaperCountDist", "ParallelMechanism",
    "Probabilities", "QualityPrior", "ReviewModel", "ScoreUtility", "SequentialThreshold", "SoftmaxReview",
    "ThresholdResult", "above_utility", "best_response", "count_utility", "exact_reviews", "exact_utility",
    "expected_reviews", "expected_utility", "exponential_score_utility", "gap_closed", "gaussian_burden",
    "gaussian_cell", "is_truthful", "isotonic_adjust", "isotonic_curve", "optimize_isotonic", "optimize_parallel",
    "optimize_sequential", "parallel_optimal_threshold", "parallel_prior_utility", "relative_burden",
    "plots", "shifted_quality", "simulate", "truthful_order", "utility_curve",
]
