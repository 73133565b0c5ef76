"""Differential privacy of what a node releases: DP-SGD on its private samples, an accountant's epsilon.

The mechanism (chosen by measurement; BENCHMARKS.md, privacy): every step that touches a private
sample is a DP-SGD step -- Poisson sampling at rate q, each sample's gradient clipped to norm
`clip`, Gaussian noise of std `noise x clip` on their sum -- and the label counts a node claims in its
frames (and trains its prior on) are released once through the Gaussian mechanism. Everything a node
sends afterwards (logits on public reference rows, label counts, parameters) is a function of these
outputs, public data and what neighbours sent: post-processing, free. Distillation on reference rows
is public data and is not clipped or noised.

The epsilon is opacus's RDP accountant's (no arithmetic of our own): `Ledger` records the count
release and each private step as the accountant's history, and `plan_noise` searches the noise that
spends the target over the steps the run will take.
"""

from __future__ import annotations

import logging
import secrets
import numpy as np
import torch

from p2pfl.config import PrivacyConfig

log = logging.getLogger(__name__)


def epsilon_of(history: list[tuple[float, float, int]], delta: float) -> float:
    """The RDP accountant's epsilon at `delta` for these Gaussian mechanisms composed (0 for none)."""
    from opacus.accountants import RDPAccountant  # opacus loads scipy: only private nodes pay for it

    if not history:
        return 0.0
    accountant = RDPAccountant()
    accountant.history = list(history)
    return float(accountant.get_epsilon(delta, alphas=ALPHAS))


# The RDP orders the accountant optimizes over: opacus's defaults (1.1 .. 63) and more at both ends, so that a
# single release (the counts; optimal order below 1.1 or above 63) gets its tight epsilon instead of a bound
ALPHAS = ([1 + x / 100 for x in range(1, 10)] + [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
          + [80, 96, 128, 192, 256, 384, 512, 1024])


def plan_noise(target: float, delta: float, sample_rate: float, steps: int, prefix: list[tuple[float, float, int]],
               tolerance: float = 0.01) -> float:
    """The smallest noise multiplier (to `tolerance`) whose `steps` DP-SGD steps at `sample_rate`, after
    the `prefix` releases, spend at most `target`. ValueError when the prefix alone spends it."""
    if (alone := epsilon_of(prefix, delta)) >= target:
        raise ValueError(f"privacy.epsilon = {target}: the label-count release alone spends {alone:.2f}; "
                         f"raise privacy.epsilon or privacy.count_noise")

    def spent(noise: float) -> float:
        return epsilon_of(prefix + [(noise, sample_rate, steps)], delta)

    lo, hi = 0.0, 1.0
    while spent(hi) > target:
        lo, hi = hi, hi * 2
        if hi > 1e6:
            raise ValueError(f"privacy.epsilon = {target}: no noise below 1e6 spends so little over {steps} steps")
    while hi - lo > tolerance:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if spent(mid) > target else (lo, mid)
    return hi


def noisy_counts(counts: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Label counts through the Gaussian mechanism (L2 sensitivity 1: one sample moves one count by one),
    rounded and floored at 0 (post-processing)."""
    return np.maximum(np.rint(counts + rng.normal(0.0, noise, size=counts.shape)), 0).astype(np.int64)


class PrivateSteps:
    """DP-SGD for one learner: which private rows a step samples, and the noisy gradient it applies.

    The model is wrapped by opacus's GradSampleModule (per-sample gradients by hooks; an nn.GRU must
    have been replaced by opacus's DPGRU, see `private_model`). The sampling and the noise come from a
    generator seeded by the operating system, never from the scenario seed (which peers know: with it
    they could subtract the noise). `spent` counts the private steps whose output may have left the
    node; once it reaches the planned steps the learner trains on the teacher alone, and says so."""

    def __init__(self, config: PrivacyConfig, n: int, planned_steps: int):
        self.config = config
        self.n = n
        self.planned = planned_steps
        self.sample_rate = min(1.0, config.batch / max(n, 1))
        try:
            self.count_noise = config.count_noise or plan_noise(COUNT_SHARE * config.epsilon, config.delta, 1.0, 1, [])
        except ValueError:  # its message would name the counts' share of the target, not the user's epsilon
            raise ValueError(f"privacy.epsilon = {config.epsilon}: too small for even the label counts' share of it "
                             f"({COUNT_SHARE:.0%}) with any noise up to 1e6; raise privacy.epsilon, or set "
                             f"privacy.count_noise") from None
        self.prefix = [(self.count_noise, 1.0, 1)]  # the label counts, released once
        self.noise = plan_noise(config.epsilon, config.delta, self.sample_rate, planned_steps, self.prefix)
        self.spent = 0
        self.gen = torch.Generator().manual_seed(secrets.randbits(63))
        self._epsilon: tuple[int, float] | None = None  # (spent, epsilon) last computed
        self._said_spent = False

    def can_step(self) -> bool:
        if self.spent < self.planned:
            return True
        if not self._said_spent:
            log.warning("privacy budget spent (epsilon %.3f of %.3f at delta %g): no more steps on private "
                        "samples; training on the teacher alone", self.epsilon(), self.config.epsilon,
                        self.config.delta)
            self._said_spent = True
        return False

    def epsilon(self) -> float:
        """What this node has spent so far (its count release and `spent` steps); cached per step."""
        if self._epsilon is None or self._epsilon[0] != self.spent:
            history = self.prefix + [(self.noise, self.sample_rate, self.spent)] if self.spent else self.prefix
            self._epsilon = (self.spent, epsilon_of(history, self.config.delta))
        return self._epsilon[1]

    def sample(self) -> torch.Tensor:
        """Poisson sampling: each private row in with probability sample_rate (what the accountant assumes)."""
        return torch.nonzero(torch.rand(self.n, generator=self.gen) < self.sample_rate).flatten()

    def set_grads(self, params: list[torch.nn.Parameter], private_rows: int) -> None:
        """From per-sample gradients (p.grad_sample, one row per input: the first `private_rows` private,
        the rest public), set p.grad to the clipped, noised private mean plus the public rows' sum. A
        parameter the forward did not reach (no grad_sample) gets the noise alone."""
        per_sample = [getattr(p, "grad_sample", None) for p in params]
        norms = torch.sqrt(sum((g[:private_rows].flatten(1).square().sum(1) for g in per_sample if g is not None),
                               torch.zeros(private_rows)))
        scale = (self.config.clip / (norms + 1e-6)).clamp(max=1.0)
        expected = self.sample_rate * self.n  # the mean over the expected batch: its size is not private
        for p, g in zip(params, per_sample):
            noise = torch.normal(0.0, self.noise * self.config.clip, size=p.shape, generator=self.gen)
            if g is None:
                p.grad = noise / expected
                continue
            private = torch.einsum("i,i...->...", scale, g[:private_rows])
            p.grad = (private + noise) / expected + g[private_rows:].sum(0)
            p.grad_sample = None
        self.spent += 1


# the share of privacy.epsilon the label-count release may spend when privacy.count_noise is 0 (auto)
COUNT_SHARE = 0.1


def private_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model with layers opacus cannot compute per-sample gradients of replaced (nn.GRU -> DPGRU,
    the same function with its own parameters). ValueError names what cannot be made private."""
    from opacus.validators import ModuleValidator

    fixed = ModuleValidator.fix(model) if ModuleValidator.validate(model, strict=False) else model
    left = ModuleValidator.validate(fixed, strict=False)
    if left:
        raise ValueError(f"privacy: {type(model).__name__} has layers DP-SGD cannot train: {left[0]}")
    return fixed
