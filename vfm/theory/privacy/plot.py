"""PNG figures: epsilon vs epochs under both accountings, and a DP run's epsilon and accuracy vs epochs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vfm.theory.privacy.accountant import LastIterateAccountant


def plot_epsilon_curve(accountant: LastIterateAccountant, epochs: Sequence[int], delta: float, path: str | Path,
                       title: str = "") -> Path:
    """Epsilon at `delta` after each epoch count, last iterate vs composition, written to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = accountant.curve([e * accountant.batches_per_epoch for e in epochs], delta)
    figure, axis = plt.subplots(figsize=(5.5, 3.6))
    last = "last iterate" + (" (approximation)" if curve.last_iterate_approximate else "")
    axis.plot(epochs, curve.epsilon_last_iterate, marker=".", label=last)
    axis.plot(epochs, curve.epsilon_composition, marker=".", label="composition (all iterates)")
    axis.set_xlabel("epochs")
    axis.set_ylabel(f"epsilon at delta = {delta:g}")
    axis.set_title(title or f"{accountant.schedule} batches, c = {accountant.c:.4g}, mu0 = {accountant.mu0:.3g}")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def plot_run(history: Sequence[dict], accuracy: Sequence[tuple[int, float]], path: str | Path, title: str = "") -> Path:
    """A DP run: epsilon per epoch under both accountings (left) and validation accuracy per epoch (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    epochs = [h["epoch"] for h in history]
    left.plot(epochs, [h["epsilon_last_iterate"] for h in history], label="last iterate")
    left.plot(epochs, [h["epsilon_composition"] for h in history], label="composition (all iterates)")
    left.set_xlabel("epochs")
    left.set_ylabel("epsilon at delta = 1e-5")
    left.legend()
    left.grid(alpha=0.3)
    right.plot([e for e, _ in accuracy], [a for _, a in accuracy], marker=".", color="C2")
    right.set_xlabel("epochs")
    right.set_ylabel("validation accuracy")
    right.grid(alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
