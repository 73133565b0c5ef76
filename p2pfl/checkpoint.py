"""Crash safety: one checkpoint per node, rewritten (atomically, for real nodes) after every round.

It holds what a restarted process needs to go on where it stopped: model and optimizer state,
the learner's step (the learning-rate schedule) and random generator, the last completed round,
the newest round heard from each neighbour, and the mode's own numbers (push-sum's mass, the reputation
defence's running mean per sender). `meta` names what the node is (architecture,
mode, data shard, reference digest); a checkpoint written by another kind of node is refused
rather than loaded into the wrong model. Loading uses `torch.load(weights_only=True)`: tensors
and plain containers only, so a tampered file cannot run code.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from p2pfl.files import atomic_write_bytes

FORMAT = 2  # 2: the mode's state
FILENAME = "checkpoint.pt"


class Trainable(Protocol):
    """What a checkpoint holds of a learner (`learner.Learner` is one); a leaf names nothing above it."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    step: int  # the learning-rate schedule's position
    gen: torch.Generator  # batches and augmentation


@dataclass(frozen=True)
class Resumed:
    round: int  # last completed round
    peers: dict[str, int]  # neighbour -> newest round it had shared with us
    mode_state: dict[str, float]  # Mode.state() when it was saved


def save(path: Path, learner: Trainable, *, round: int, meta: dict[str, str | int], peers: dict[str, int],
         mode_state: dict[str, float] | None = None) -> None:
    atomic_write_bytes(path, dumps(learner, round=round, meta=meta, peers=peers, mode_state=mode_state))


def dumps(learner: Trainable, *, round: int, meta: dict[str, str | int], peers: dict[str, int],
          mode_state: dict[str, float] | None = None) -> bytes:
    """A checkpoint's bytes (simulations keep them in memory: a crashed simulated node restarts from them)."""
    state = {
        "format": FORMAT, "round": round, "meta": dict(meta), "peers": dict(peers), "mode": dict(mode_state or {}),
        "model": learner.model.state_dict(), "optimizer": learner.optimizer.state_dict(),
        "step": learner.step, "rng": learner.gen.get_state(),
    }
    if (private := getattr(learner, "private", None)) is not None:  # DP: what was released and spent so far
        state["private"] = {"spent": private.spent, "counts": [int(c) for c in learner.label_counts]}
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def load(path: Path, learner: Trainable, *, meta: dict[str, str | int]) -> Resumed | None:
    """Restore `learner` from `path` if it exists; None for a fresh start."""
    path = Path(path)
    if not path.exists():
        return None
    return loads(path.read_bytes(), learner, meta=meta, where=str(path))


def loads(data: bytes, learner: Trainable, *, meta: dict[str, str | int], where: str = "the checkpoint") -> Resumed:
    """Restore `learner` from a checkpoint's bytes; ValueError (naming `where` and the fix) if they are not
    a checkpoint of this kind of node."""
    try:
        # onto the CPU: a checkpoint written on a GPU still loads where there is none; load_state_dict
        # then copies the tensors onto the learner's device
        state = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as e:
        raise ValueError(f"{where} is not a readable checkpoint ({type(e).__name__}: {e}); "
                         f"delete it to start this node from round 0") from None
    if state.get("format") != FORMAT:
        raise ValueError(f"{where} has checkpoint format {state.get('format')}, this version reads {FORMAT}; "
                         f"delete it to start this node from round 0")
    if state["meta"] != dict(meta):
        diff = ", ".join(f"{k}: saved {state['meta'].get(k)!r}, now {v!r}"
                         for k, v in meta.items() if state["meta"].get(k) != v)
        raise ValueError(f"{where} belongs to a different node ({diff}); use another --state-dir, "
                         f"or delete the checkpoint to start from round 0")
    try:
        learner.model.load_state_dict(state["model"])
        learner.optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:  # the same kind of node, another shape of model
        first = str(e).strip().splitlines()[0][:200]
        raise ValueError(f"{where} holds a model of another shape than this node's ({first}); the scenario's "
                         f"embed_dim, arch_options or adapter settings changed: use another --state-dir, or delete "
                         f"the checkpoint to start from round 0") from None
    learner.step = int(state["step"])
    learner.gen.set_state(state["rng"])
    if getattr(learner, "private", None) is not None:  # meta holds the privacy settings: they match
        learner.resume_private(int(state["private"]["spent"]), list(state["private"]["counts"]))
    return Resumed(int(state["round"]), {str(k): int(v) for k, v in state["peers"].items()},
                   {str(k): float(v) for k, v in state["mode"].items()})
