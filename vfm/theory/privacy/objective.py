"""`dp_linear_probe`: differentially private logistic regression on frozen features, accounted by last iterate.

Every step releases g = (1/B) sum_i clip_C(grad l_i) + l2 w + sigma xi, xi ~ N(0, I), and plain SGD takes
w <- w - lr g (weight decay lives in g, so the optimizer must be `sgd` with momentum 0 and weight_decay 0).
B is n (full), b (cyclic) or sample_rate n (Poisson), so one replaced record moves the data term by at most
2 min(C, L)/B: mu0 = 2 min(C, L)/(B sigma). The objective checks, every step, that what happened is what it
accounts: the global batch (gathered over ranks) is the schedule's (all records; the same fixed partition in the
same order; the Poisson draw of `sampler_seed`), and the weights moved by exactly -lr g since the last step
(another lr, momentum or a scheduler is a ConfigError). Noise comes from a generator seeded by (noise_seed,
step), the same on every rank; each rank sums the global gradient itself, so replicas stay identical.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from vfm.dist.collectives import all_gather_objects, all_reduce_sum
from vfm.errors import ConfigError
from vfm.registry import OBJECTIVES
from vfm.requirements import Requirements
from vfm.theory.privacy.accountant import LastIterateAccountant, noise_for_epsilon
from vfm.theory.privacy.guards import SamplerMismatchError, check_convex_head, contraction_factor, logistic_constants


def _check(kwargs: dict[str, Any], path: str) -> None:
    if (kwargs.get("target_epsilon") is None) == (kwargs.get("sigma") is None):
        raise ConfigError(f"{path}: give exactly one of target_epsilon (noise found by the accountant) and sigma")
    if kwargs.get("schedule") == "poisson" and kwargs.get("sample_rate") is None:
        raise ConfigError(f"{path}.sample_rate: required for schedule=poisson (the data.sampler's sample_rate)")
    epochs = kwargs.get("epochs")
    if isinstance(epochs, int) and epochs < 1:
        raise ConfigError(f"{path}.epochs: got {epochs}, expected >= 1 (the planned epochs the noise is calibrated for)")


@OBJECTIVES.register("dp_linear_probe", check=_check)
class DpLinearProbe(nn.Module):
    """A linear head (binary or softmax logistic regression) trained by noisy GD / cyclic GD / Poisson SGD."""

    def __init__(self, num_features: int, num_classes: int, schedule: Literal["full", "cyclic", "poisson"], lr: float,
                 l2: float, epochs: int, delta: float = 1e-5, target_epsilon: float | None = None,
                 sigma: float | None = None, feature_norm: float = 1.0, clip: float | None = None, bias: bool = True,
                 sample_rate: float | None = None, sampler_seed: int = 0, noise_seed: int = 0,
                 calibrate: Literal["last_iterate", "composition"] = "last_iterate") -> None:
        super().__init__()
        if num_classes < 2:
            raise ConfigError(f"objective.num_classes: got {num_classes}, expected >= 2")
        self.multiclass = num_classes > 2
        self.head = nn.Linear(num_features, num_classes if self.multiclass else 1, bias=bias)
        nn.init.zeros_(self.head.weight)  # a data-independent start; the accounting never depends on it
        if bias:
            nn.init.zeros_(self.head.bias)
        check_convex_head(self)
        # A bias is a weight on a constant feature 1: the augmented feature norm is sqrt(R^2 + 1).
        effective_norm = math.sqrt(feature_norm**2 + 1) if bias else feature_norm
        constants = logistic_constants(effective_norm, l2, self.multiclass)
        try:
            self.c = contraction_factor(l2, constants.smoothness, lr)
        except ConfigError as error:  # name the config keys: eta is objective.lr, m is objective.l2
            raise type(error)(f"objective.lr / objective.l2: {error}") from error
        if clip is not None and not clip > 0:
            raise ConfigError(f"objective.clip: got {clip!r}, expected a per-example gradient norm bound > 0")
        if clip is not None and clip < constants.lipschitz and self.multiclass:
            raise ConfigError(f"objective.clip: {clip} < L = {constants.lipschitz:.4g} makes clipping active, and a "
                              "clipped softmax gradient is not the gradient of a convex loss; leave clip unset")
        self.bound = min(clip, constants.lipschitz) if clip is not None else constants.lipschitz
        self.schedule, self.lr, self.l2, self.epochs, self.delta = schedule, lr, l2, epochs, delta
        self.target_epsilon, self.given_sigma, self.calibrate = target_epsilon, sigma, calibrate
        self.feature_norm, self.sample_rate = feature_norm, sample_rate
        self.sampler_seed, self.noise_seed = sampler_seed, noise_seed
        self.train_size: int | None = None
        self.reset_run_state()

    def reset_run_state(self) -> None:
        """Forget what the run has seen (set up again at its first step)."""
        self.sigma: float | None = self.given_sigma
        self.batch_size: int | None = None
        self.accountant: LastIterateAccountant | None = None
        self.partition: list[list[int]] = []
        self.expected: dict[str, torch.Tensor] | None = None
        self.history: list[dict[str, float]] = []

    # ---------------------------------------------------------------------------- engine contract
    def requirements(self) -> Requirements:
        """single or DDP, fp32, no accumulation or global clipping (the step is accounted as one noisy update)."""
        return Requirements(strategies=("single", "ddp"), precisions=("fp32",), grad_accum=False, clip_grad_norm=False,
                            owns_backward=True)

    def trainable_parameters(self) -> list[str]:
        """The head's weight and bias: the only parameters there are."""
        return [name for name, _ in self.named_parameters()]

    def check_dataset(self, dataset: Any, path: str) -> None:
        """Refuse features not bounded by feature_norm or not of this shape; remember the training set size."""
        features = getattr(dataset, "features", None)
        bound = getattr(dataset, "feature_norm", None)
        if features is None or bound is None:
            raise ConfigError(f"{path}: {type(dataset).__name__} has no precomputed, norm-bounded features; use "
                              "{type: frozen_features, dataset: ...}")
        if bound > self.feature_norm * (1 + 1e-6):
            raise ConfigError(f"{path}.feature_norm: {bound} exceeds the objective's feature_norm {self.feature_norm}")
        if features.shape[1] != self.head.in_features:
            raise ConfigError(f"{path}: features have {features.shape[1]} dimensions, objective.num_features is "
                              f"{self.head.in_features}")
        if int(dataset.labels.max()) >= max(self.head.out_features, 2):
            raise ConfigError(f"{path}: label {int(dataset.labels.max())} is out of range for objective.num_classes")
        if path == "data.train":
            self.train_size = len(dataset)

    def extra_state(self) -> dict[str, Any]:
        """Noise, batch size, accountant, first-epoch partition, expected next weights and history, for checkpoints."""
        return {"sigma": self.sigma, "batch_size": self.batch_size, "train_size": self.train_size,
                "accountant": self.accountant.state_dict() if self.accountant is not None else None,
                "partition": [list(b) for b in self.partition], "history": [dict(h) for h in self.history],
                "expected": {k: v.clone() for k, v in self.expected.items()} if self.expected is not None else None}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Continue the accounting of `extra_state()`; another training set size is a ConfigError."""
        if state["train_size"] != self.train_size:
            raise ConfigError(f"resume: the checkpoint accounted {state['train_size']} training records, this run has "
                              f"{self.train_size}")
        self.sigma, self.batch_size = state["sigma"], state["batch_size"]
        self.partition = [list(b) for b in state["partition"]]
        self.history = [dict(h) for h in state["history"]]
        self.expected = state["expected"]
        self.accountant = None
        if state["accountant"] is not None:
            self._build_accountant()
            self.accountant.load_state_dict(state["accountant"])

    # ------------------------------------------------------------------------------- accounting
    @property
    def normaliser(self) -> float:
        """B: the data term is (1/B) sum_i clip(grad l_i)."""
        if self.schedule == "full":
            return float(self.train_size)
        if self.schedule == "cyclic":
            return float(self.batch_size)
        return self.sample_rate * self.train_size

    @property
    def batches_per_epoch(self) -> int:
        """Steps in one epoch of the schedule."""
        if self.schedule == "full":
            return 1
        if self.schedule == "cyclic":
            return self.train_size // self.batch_size
        return max(1, round(1 / self.sample_rate))

    def _accountant_for(self, sigma: float) -> LastIterateAccountant:
        return LastIterateAccountant(self.schedule, self.c, gradient_sensitivity=2 * self.bound / self.normaliser,
                                     sigma=sigma, batches_per_epoch=self.batches_per_epoch,
                                     sample_rate=self.sample_rate if self.schedule == "poisson" else None)

    def _build_accountant(self) -> None:
        if self.sigma is None:
            self.sigma = noise_for_epsilon(self.target_epsilon, self.delta, self.epochs * self.batches_per_epoch,
                                           self._accountant_for, accounting=self.calibrate)
        if not self.sigma > 0:
            raise ConfigError(f"objective.sigma: got {self.sigma!r}, expected a noise std > 0 (no noise, no privacy)")
        self.accountant = self._accountant_for(self.sigma)

    def _check_batch(self, indices: list[int], step: int) -> None:
        """Refuse a global batch that is not the one the schedule accounts for at `step`."""
        from vfm.data.sampler import PoissonBatchSampler

        where = f"step {step + 1}"
        if len(set(indices)) != len(indices):
            raise SamplerMismatchError(f"data.sampler: {where} has a record twice (padding across ranks?); its "
                                       "sensitivity would double")
        if self.schedule == "full":
            if len(indices) != self.train_size:
                raise SamplerMismatchError(f"data.sampler: {where} has {len(indices)} of {self.train_size} records; "
                                           "schedule=full needs every record in every step (data.batch_size = n / ranks)")
            return
        if self.schedule == "poisson":
            length = self.batches_per_epoch
            draw = PoissonBatchSampler(self.train_size, self.sample_rate, self.sampler_seed).draw(step // length,
                                                                                                  step % length)
            if sorted(indices) != draw:
                raise SamplerMismatchError(f"data.sampler: {where} is not the Poisson draw of rate {self.sample_rate} "
                                           f"and seed {self.sampler_seed} the accounting assumes (fixed-size batches "
                                           "accounted as Poisson?); use data.sampler={type: poisson, sample_rate: ...}"
                                           " and objective.sampler_seed = seed")
            return
        if len(indices) != self.batch_size:
            raise SamplerMismatchError(f"data.sampler: {where} has {len(indices)} records, the first had {self.batch_size}")
        position = step % self.batches_per_epoch
        if step < self.batches_per_epoch:
            seen = {i for block in self.partition for i in block}
            if seen & set(indices):
                raise SamplerMismatchError(f"data.sampler: {where} repeats records within the first epoch")
            self.partition.append(sorted(indices))
        elif sorted(indices) != self.partition[position]:
            raise SamplerMismatchError(f"data.sampler: {where} is not batch {position} of the first epoch; cyclic "
                                       "accounting needs one fixed partition in the same order (data.sampler={type: "
                                       "cyclic})")

    def _check_update(self, step: int) -> None:
        """The weights must have moved by exactly -lr g since the last step (plain SGD at the accounted lr)."""
        if self.expected is None:
            return
        for name, param in self.head.named_parameters():
            if not torch.allclose(param.detach(), self.expected[name], rtol=1e-5, atol=1e-7):
                raise ConfigError(f"optim: before step {step + 1} the head's {name} is not w - lr g with lr={self.lr} "
                                  "as accounted; use optim={type: sgd, lr: objective.lr, momentum: 0, weight_decay: 0}"
                                  " and no scheduler")

    # ---------------------------------------------------------------------------------- training
    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(N, K) class scores; for binary, the two columns [0, z]."""
        z = self.head(features)
        return z if self.multiclass else torch.cat([torch.zeros_like(z), z], dim=1)

    def predict(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Logits for the accuracy evaluator."""
        return {"logits": self.logits(batch["features"])}

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The noiseless regularised loss and accuracy on a batch (the engine trains through forward_backward)."""
        logits = self.logits(batch["features"])
        penalty = 0.5 * self.l2 * sum(p.pow(2).sum() for p in self.head.parameters())
        return {"loss": F.cross_entropy(logits, batch["label"]) + penalty,
                "train_accuracy": (logits.argmax(1) == batch["label"]).float().mean()}

    def _clipped_sum(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sum of per-example gradients clipped to `bound`, in closed form: (weight grad, bias grad, stats)."""
        with torch.no_grad():
            logits = self.head(features)
            if self.multiclass:
                residual = logits.softmax(dim=1) - F.one_hot(labels, logits.shape[1]).to(logits.dtype)  # (N, K)
                losses = F.cross_entropy(logits, labels, reduction="none")
                correct = logits.argmax(1) == labels
            else:
                residual = torch.sigmoid(logits) - labels[:, None].to(logits.dtype)  # (N, 1)
                losses = F.binary_cross_entropy_with_logits(logits[:, 0], labels.to(logits.dtype), reduction="none")
                correct = (logits[:, 0] > 0).long() == labels
            augmented = features.norm(dim=1) ** 2 + (1.0 if self.head.bias is not None else 0.0)
            norms = residual.norm(dim=1) * augmented.sqrt()  # ||r x~^T||_F = ||r|| ||x~||
            factor = (self.bound / norms.clamp_min(1e-12)).clamp(max=1.0)
            scaled = residual * factor[:, None]
            stats = torch.stack([losses.sum(), correct.float().sum(), (factor < 1).float().sum(),
                                 torch.tensor(float(len(labels)))])
            return scaled.T @ features, scaled.sum(0), stats

    def forward_backward(self, batch: dict[str, Any], loss_scale: float) -> dict[str, Any]:
        """One noisy step's gradient in .grad (identical on every rank), and both accountings after it."""
        if self.train_size is None:
            raise ConfigError("dp_linear_probe: the training set size is unknown (check_dataset was not called on data.train)")
        step = self.accountant.steps if self.accountant is not None else 0
        device = self.head.weight.device
        if "features" in batch:
            features, labels, local = batch["features"].to(device), batch["label"].to(device), batch["index"].tolist()
        else:  # an empty Poisson draw: only noise
            features = torch.zeros(0, self.head.in_features, device=device)
            labels, local = torch.zeros(0, dtype=torch.long, device=device), []
        indices = [i for part in all_gather_objects(local) for i in part]
        if self.accountant is None:
            self.batch_size = len(indices)
            self._build_accountant()
        self._check_batch(indices, step)
        self._check_update(step)
        weight_sum, bias_sum, stats = self._clipped_sum(features, labels)
        flat = all_reduce_sum(torch.cat([weight_sum.flatten(), bias_sum, stats]))  # the global sums, on every rank
        weight_sum = flat[: weight_sum.numel()].view_as(weight_sum)
        bias_sum, stats = flat[weight_sum.numel() : weight_sum.numel() + bias_sum.numel()], flat[-4:]
        generator = torch.Generator().manual_seed(self.noise_seed * 1_000_003 + step)  # the same draw on every rank
        self.expected = {}
        for name, param, data_sum in (("weight", self.head.weight, weight_sum), ("bias", self.head.bias, bias_sum)):
            if param is None:
                continue
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float64).to(param.dtype).to(device)
            grad = data_sum / self.normaliser + self.l2 * param.detach() + self.sigma * noise
            param.grad = grad * loss_scale
            self.expected[name] = param.detach() - self.lr * param.grad
        self.accountant.step()
        logs = self._privacy_logs()
        count = max(stats[3].item(), 1.0)
        return {"loss": stats[0] / count, "train_accuracy": stats[1] / count, "clipped_fraction": stats[2] / count,
                "batch_records": stats[3], **{k: torch.tensor(v) for k, v in logs.items()}}

    def _privacy_logs(self) -> dict[str, float]:
        """Both accountings after the steps taken; each completed epoch is also kept in `history`."""
        accountant, steps = self.accountant, self.accountant.steps
        poisson = self.schedule == "poisson"
        epoch_done = steps % self.batches_per_epoch == 0
        logs = {"sigma": self.sigma, "privacy_epoch": steps / self.batches_per_epoch}
        if not poisson:
            logs["epsilon_last_iterate"] = accountant.epsilon(self.delta)
            logs["mu_last_iterate"] = accountant.mu()
            logs["mu_composition"] = accountant.composition_mu()
            logs["epsilon_composition"] = accountant.composition_epsilon(self.delta)
        elif epoch_done:  # a PLD composition costs ~0.1-1 s: Poisson runs are accounted once per epoch
            logs["epsilon_last_iterate_approx"] = accountant.epsilon(self.delta)
            logs["epsilon_composition"] = accountant.composition_epsilon(self.delta)
        if epoch_done:
            self.history.append({"epoch": steps // self.batches_per_epoch, "step": steps, **logs})
        return logs
