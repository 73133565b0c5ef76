"""Local learning for one model: train on private labels, distill from a teacher, predict, evaluate.

Blocking and single-threaded on purpose: the node calls it through its executor (a worker thread
for real nodes, inline under a simulated clock for simulations).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from p2pfl.config import ConfigError, PrivacyConfig, TrainConfig
from p2pfl.distill import balanced_cross_entropy, log_prior, outlier_loss, own_split_distill_loss
from p2pfl.models.adapter import Adapter
from p2pfl.privacy import PrivateSteps, noisy_counts


@dataclass(frozen=True)
class Evaluation:
    global_acc: float  # accuracy on the uniform test set (raw, prior-free predictions)
    personal_acc: float  # per-class accuracy with the node's prior, weighted by its label mix
    per_class: np.ndarray  # (C,) recall on the test set with prior-free predictions
    loss: float  # CE on the test set with prior-free logits


class Learner:
    """One model, its optimizer and its private data."""

    def __init__(self, model: nn.Module, x: np.ndarray, y: np.ndarray, *, num_classes: int, config: TrainConfig,
                 total_steps: int, seed: int, adapter: Adapter | None = None, privacy: PrivacyConfig | None = None):
        """privacy: train under DP-SGD (p2pfl/privacy.py) for `total_steps` private steps, and release
        noisy label counts; the model must be `privacy.private_model`'s."""
        self.device = resolve_device(config.device)
        self.model = model.to(self.device)  # in place: the adapter's views of its parameters stay valid
        # what the parameter modes gossip: an attached adapter, else the whole model
        self.adapter = adapter or Adapter.whole(model)
        self.config = config
        self.num_classes = num_classes
        # x, y: the private rows on the CPU (what modes read); _x, _y: the same on the training device
        # (the same tensors on the CPU: no copy)
        self.x = torch.as_tensor(x, dtype=torch.float32)
        self.y = torch.as_tensor(y, dtype=torch.long)
        self._x, self._y = self.x.to(self.device), self.y.to(self.device)
        self.gen = torch.Generator().manual_seed(seed)
        own_counts = np.bincount(y, minlength=num_classes).astype(np.int64)
        self.private: PrivateSteps | None = None
        self._per_sample: nn.Module | None = None
        # what the node claims in its frames and trains its prior on: under DP, its counts' release
        self.label_counts = own_counts
        if privacy is not None and privacy.on:
            from opacus import GradSampleModule  # opacus loads scipy: only a private node pays for it

            self.private = PrivateSteps(privacy, len(y), min(max(1, total_steps), privacy.steps or total_steps))
            # the release's noise from the OS, like the steps' (PrivateSteps): peers know the scenario seed
            self.label_counts = noisy_counts(own_counts, self.private.count_noise, np.random.default_rng())
            self._per_sample = GradSampleModule(model, loss_reduction="sum")
        self.log_p = self._prior(self.label_counts)
        self._mix = own_counts / max(own_counts.sum(), 1)  # evaluation only: nothing of it is released
        self.personal_log_p = log_prior(torch.as_tensor(own_counts))  # on the CPU, as evaluate's logits
        # frozen parameters (a LoRA backbone) are not the optimizer's
        self.optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.lr, weight_decay=config.weight_decay)
        self.total_steps = max(1, total_steps)
        self.step = 0

    def _prior(self, counts: np.ndarray) -> torch.Tensor:
        """The log prior the balanced loss trains with, from the counts the node claims (zeros: not balanced)."""
        prior = log_prior(torch.as_tensor(counts)) if self.config.balanced else torch.zeros(self.num_classes)
        return prior.to(self.device)

    # -- training -----------------------------------------------------------------------------
    def _lr(self) -> float:
        c = self.config
        t = min(self.step / self.total_steps, 1.0)
        return c.lr * (c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))

    def train(self, steps: int, teacher_x: torch.Tensor | None = None, teacher_p: torch.Tensor | None = None,
              kd_weight: float | None = None, anchors: torch.Tensor | None = None,
              anchored: torch.Tensor | None = None, outliers: bool = False) -> float:
        """`steps` optimizer steps of CE on private labels (+ KD on teacher rows if given). Returns mean loss.

        kd_weight: this call's weight of the KD term (None: config.kd_weight).
        anchors, anchored: (C, d) class prototypes and the (C,) mask of classes that have one (prototypes
        mode): each labelled embedding is pulled toward its class's prototype (MSE, config.proto_weight)
        and the classifier learns to name every prototype's class (config.proto_head_weight, 0: off).
        outliers: teacher_x are rows to expose as outliers (`distill.outlier_loss`; teacher_p, if given,
        is not read) rather than rows to distill on."""
        c = self.config
        kd_weight = c.kd_weight if kd_weight is None else kd_weight
        teacher_x, teacher_p, anchors, anchored = (None if t is None else t.to(self.device)
                                                   for t in (teacher_x, teacher_p, anchors, anchored))
        self.model.train()
        total = 0.0
        for _ in range(steps):
            for g in self.optimizer.param_groups:
                g["lr"] = self._lr()
            if self.private is not None:
                total += self._private_step(teacher_x, teacher_p, kd_weight, outliers)
                continue
            # indices from the CPU generator (the same draws on every device), moved to the rows
            idx = torch.randint(len(self.y), (min(c.batch_size, len(self.y)),), generator=self.gen).to(self.device)
            x = shift_augment(self._x[idx], c.augment_shift, self.gen) if c.augment_shift else self._x[idx]
            if anchors is not None:
                loss = self._anchored_loss(x, self._y[idx], anchors, anchored)
            elif teacher_x is None:
                loss = balanced_cross_entropy(self.model(x), self._y[idx], self.log_p)
            else:
                # One forward over labelled and reference rows together: the models have no batch
                # statistics, so this is the same loss as two passes at a fraction of the per-call cost.
                kd_idx, kd_x = self._kd_rows(teacher_x)
                z = self.model(torch.cat([x, kd_x]))
                loss = (balanced_cross_entropy(z[:len(idx)], self._y[idx], self.log_p)
                        + kd_weight * self._kd_loss(z[len(idx):], kd_idx, teacher_p, outliers))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.step += 1
            total += loss.item()
        return total / max(steps, 1)

    def _kd_rows(self, teacher_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of reference rows to learn from: their indices and the rows, shift-augmented if set."""
        c = self.config
        kd_idx = torch.randint(len(teacher_x), (min(c.kd_batch_size, len(teacher_x)),),
                               generator=self.gen).to(teacher_x.device)
        kd_x = teacher_x[kd_idx]
        return kd_idx, shift_augment(kd_x, c.augment_reference, self.gen) if c.augment_reference else kd_x

    def _kd_loss(self, z: torch.Tensor, kd_idx: torch.Tensor, teacher_p: torch.Tensor | None,
                 outliers: bool) -> torch.Tensor:
        """What the reference rows' logits `z` are trained toward: the teacher's rows (its split among our
        own classes weighed by train.kd_own_split), or, for outliers, no more than "unknown"; our own
        classes are those the node claims to have (its release, under DP)."""
        known = torch.as_tensor(self.label_counts > 0, device=z.device)
        if outliers:
            return outlier_loss(z, known)
        return own_split_distill_loss(z, teacher_p[kd_idx], known, self.config.kd_own_split, self.config.temperature)

    def _anchored_loss(self, x: torch.Tensor, y: torch.Tensor, anchors: torch.Tensor,
                       anchored: torch.Tensor) -> torch.Tensor:
        c = self.config
        e = self.model.embed(x)
        loss = balanced_cross_entropy(self.model.head(e), y, self.log_p)
        pulled = anchored[y]
        if pulled.any():
            loss = loss + c.proto_weight * nn.functional.mse_loss(e[pulled], anchors[y[pulled]])
        if c.proto_head_weight:
            classes = torch.nonzero(anchored).flatten()
            loss = loss + c.proto_head_weight * nn.functional.cross_entropy(self.model.head(anchors[classes]), classes)
        return loss

    def _private_step(self, teacher_x: torch.Tensor | None, teacher_p: torch.Tensor | None, kd_weight: float,
                      outliers: bool) -> float:
        """One DP-SGD step (privacy.PrivateSteps): a Poisson sample of private rows, their per-sample
        gradients clipped and noised, plus the distillation rows' plain gradient. Once the planned private
        steps are spent: distillation alone, a plain step (no private row is touched)."""
        c = self.config
        kd_idx = kd_x = None
        if teacher_x is not None:
            kd_idx, kd_x = self._kd_rows(teacher_x)
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if not self.private.can_step():
            if kd_x is None:
                return 0.0  # nothing public to learn from
            self._per_sample.disable_hooks()  # no per-sample gradients needed: public rows only
            try:
                loss = kd_weight * self._kd_loss(self.model(kd_x), kd_idx, teacher_p, outliers)
                _backward(loss)
            finally:
                self._per_sample.enable_hooks()
            self.optimizer.step()
            return loss.item()
        rows = self.private.sample()
        x = shift_augment(self.x[rows], c.augment_shift, self.gen) if c.augment_shift and len(rows) else self.x[rows]
        parts = [p for p in (x, kd_x) if p is not None and len(p)]
        loss = torch.zeros(())
        if parts:  # else: no private row drawn and nothing to distill, only the noise to add (set_grads)
            z = self._per_sample(torch.cat(parts))
            # summed, not averaged, over private rows: each row's gradient is clipped on its own, then the sum
            # is noised and divided by the expected batch size (PrivateSteps.set_grads)
            if len(rows):
                loss = nn.functional.cross_entropy(z[:len(rows)] + self.log_p, self.y[rows], reduction="sum")
            if kd_x is not None:
                loss = loss + kd_weight * self._kd_loss(z[len(rows):], kd_idx, teacher_p, outliers)
            _backward(loss)
        self.private.set_grads([p for p in self.model.parameters() if p.requires_grad], len(rows))
        self.optimizer.step()
        return loss.item()

    def resume_private(self, spent: int, counts: list[int]) -> None:
        """After a restart: the counts this node released before (a new draw would be a second release) and
        the private steps it spent, plus one round's worth: the steps after its last checkpoint may have been
        shared before it went down, and are redone with fresh noise."""
        self.label_counts = np.asarray(counts, dtype=np.int64)
        self.log_p = self._prior(self.label_counts)
        self.private.spent = spent + self.config.local_steps

    def epsilon_spent(self) -> float | None:
        """The accountant's epsilon for what this learner's private data went into so far (None: not private)."""
        return None if self.private is None else self.private.epsilon()

    # -- inference ----------------------------------------------------------------------------
    @torch.inference_mode()
    def logits(self, x: np.ndarray | torch.Tensor, batch: int = 4096) -> np.ndarray:
        """(N, C) prior-free logits."""
        self.model.eval()
        x = torch.as_tensor(x, dtype=torch.float32)
        return torch.cat([self.model(x[i:i + batch].to(self.device)).cpu() for i in range(0, len(x), batch)]).numpy()

    @torch.inference_mode()
    def class_means(self, *, logits: bool = False, batch: int = 4096) -> np.ndarray:
        """(C, d) the mean embed() of this node's training rows per class, or with `logits` (C, C) their
        mean prior-free logits; zeros for classes it has none of."""
        self.model.eval()
        f = self.model if logits else self.model.embed
        e = torch.cat([f(self._x[i:i + batch]).cpu() for i in range(0, len(self._x), batch)])
        sums = torch.zeros(self.num_classes, e.shape[1]).index_add_(0, self.y, e)
        counts = torch.bincount(self.y, minlength=self.num_classes).clamp(min=1)
        return (sums / counts[:, None]).numpy()

    def evaluate(self, x_test: np.ndarray, y_test: np.ndarray) -> Evaluation:
        z = torch.as_tensor(self.logits(x_test))
        y = torch.as_tensor(y_test, dtype=torch.long)
        loss = float(nn.functional.cross_entropy(z, y))
        per_class = _recall(z.argmax(1), y, self.num_classes)
        personal = _recall((z + self.personal_log_p).argmax(1), y, self.num_classes)
        mix = self._mix
        return Evaluation(
            global_acc=float((z.argmax(1) == y).float().mean()),
            personal_acc=float((personal * mix).sum()),
            per_class=per_class,
            loss=loss,
        )

    # -- the gossiped parameters as one flat vector (adapter modes, fedavg) ---------------------
    def get_flat(self) -> np.ndarray:
        return self.adapter.get_flat()

    def set_flat(self, flat: np.ndarray) -> None:
        self.adapter.set_flat(flat)


def resolve_device(name: str) -> torch.device:
    """train.device as a torch device; "auto": the first CUDA device if torch sees one, else the CPU. A device
    this torch cannot use is a ConfigError that says which it can."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    usable = {"cpu": lambda: True, "mps": lambda: torch.backends.mps.is_available(),
              "cuda": lambda: torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()}
    if not usable[device.type]():
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        raise ConfigError(f"train.device = {name!r}: torch {torch.__version__} sees {gpus} CUDA device(s)"
                         f"{' and an MPS device' if torch.backends.mps.is_available() else ''}; "
                         f"use 'cpu' or 'auto' (CUDA when there is one)")
    return device


def _backward(loss: torch.Tensor) -> None:
    with warnings.catch_warnings():  # opacus's hooks see inputs that need no gradient (the data): expected
        warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
        loss.backward()


def shift_augment(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Shift each signal by a random -max_shift..max_shift steps along its last axis, edges repeated."""
    length = x.shape[-1]
    shifts = torch.randint(-max_shift, max_shift + 1, (x.shape[0], 1), generator=gen)  # (B, 1)
    idx = (torch.arange(length)[None, :] + shifts).clamp(0, length - 1).to(x.device)  # (B, L)
    idx = idx.view(x.shape[0], *([1] * (x.dim() - 2)), length).expand_as(x)
    return x.gather(-1, idx)


def _recall(pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> np.ndarray:
    hits = torch.bincount(y[pred == y], minlength=num_classes).double()
    support = torch.bincount(y, minlength=num_classes).double().clamp(min=1)
    return (hits / support).numpy()
