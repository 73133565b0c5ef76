"""The shared part of a model in the parameter modes: what travels, how it is laid out, how it is set.

    adapter = attach(model, AdapterConfig(kind="bottleneck"), embed_dim=32, num_classes=10, seed=0)
    v = adapter.get_flat()          # what a node sends: the same length and layout on every node
    adapter.set_flat(averaged)      # what it keeps after averaging

Kinds (the scenario's [adapter] table):
- "whole": the whole model (identical architectures only). `fedavg` is adapter mode with this kind.
- "head": a linear classifier on `embed()`; the backbone stays private.
- "bottleneck": a residual bottleneck adapter (Houlsby et al. 2019) then the classifier.
- "residual": the same bottleneck adapter only; each node's classifier after it stays private.
- "lora": low-rank factors on every linear layer of a frozen backbone shared by all nodes (same
  family and seed, as a common pretrained checkpoint would be), plus the classifier. Nodes may pick
  smaller ranks than the shared one: factors travel zero-padded to the shared rank and each node
  keeps its first `rank` components after averaging (HetLoRA, Cho et al. 2024, without its
  sparsity-weighted aggregation).

A backbone whose `embed()` width differs from the scenario's `embed_dim` gets a private linear
projection to it, so unlike models still share one module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from p2pfl.config import ADAPTER_KINDS  # the grammar of adapter.kind; attach() builds each one
from p2pfl.models.zoo import Classifier


class ResidualAdapter(nn.Module):
    """h + up(relu(down(h))). `up` starts at zero: the adapter starts as the identity."""

    def __init__(self, d: int, bottleneck: int):
        super().__init__()
        self.down = nn.Linear(d, bottleneck)
        self.up = nn.Linear(bottleneck, d)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(F.relu(self.down(h)))


class BottleneckAdapter(nn.Module):
    """A residual adapter, then a linear classifier."""

    def __init__(self, d: int, bottleneck: int, num_classes: int):
        super().__init__()
        self.residual = ResidualAdapter(d, bottleneck)
        self.classifier = nn.Linear(d, num_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.residual(h))


class ProjectedHead(nn.Module):
    """A private projection from the backbone's width to the shared one, then the shared module."""

    def __init__(self, proj: nn.Module, shared: nn.Module):
        super().__init__()
        self.proj = proj
        self.shared = shared

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.shared(self.proj(h))


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update: W x + b + (alpha / r) B A x."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.rank = rank
        self.scale = alpha / rank
        self.A = nn.Parameter(torch.empty(rank, base.in_features))
        self.B = nn.Parameter(torch.zeros(base.out_features, rank))  # zero: starts as the base layer
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.A.T @ self.B.T) * self.scale


@dataclass
class Adapter:
    """The parameters a node gossips, and the wire layout every peer must share (`shape`)."""

    module: nn.Module
    shape: tuple[int, ...]  # announced in the hello; a peer announcing another shape is refused
    lora: tuple[tuple[LoRALinear, int], ...] = ()  # (layer, shared rank) for kind "lora"

    @classmethod
    def whole(cls, model: nn.Module) -> Adapter:
        """Every parameter of `model` (fedavg; the default when nothing is attached)."""
        return cls(model, (sum(p.numel() for p in model.parameters()),))

    @property
    def size(self) -> int:
        """Length of the flat vector, without building it (LoRA factors count at the shared rank)."""
        lora = sum(shared_rank * (layer.A.shape[1] + layer.B.shape[0]) for layer, shared_rank in self.lora)
        return lora + sum(p.numel() for p in self._plain())

    def get_flat(self) -> np.ndarray:
        parts = [t.reshape(-1) for t in self._tensors()]
        return torch.cat(parts).cpu().numpy().copy() if parts else np.zeros(0, np.float32)

    @torch.no_grad()
    def set_flat(self, flat: np.ndarray) -> None:
        v = torch.as_tensor(np.asarray(flat, dtype=np.float32))
        if v.shape != (self.size,):
            raise ValueError(f"adapter vector has shape {tuple(v.shape)}; this adapter needs ({self.size},)")
        i = 0
        for layer, shared_rank in self.lora:
            r = layer.rank
            a = v[i:i + shared_rank * layer.A.shape[1]].view(shared_rank, -1)
            i += a.numel()
            b = v[i:i + layer.B.shape[0] * shared_rank].view(-1, shared_rank)
            i += b.numel()
            layer.A.copy_(a[:r])  # truncate back to this node's rank
            layer.B.copy_(b[:, :r])
        for p in self._plain():
            p.copy_(v[i:i + p.numel()].view_as(p))
            i += p.numel()

    def _tensors(self) -> list[torch.Tensor]:
        out = []
        for layer, shared_rank in self.lora:  # zero-padded to the shared rank
            pad = shared_rank - layer.rank
            out.append(F.pad(layer.A.detach(), (0, 0, 0, pad)))
            out.append(F.pad(layer.B.detach(), (0, pad)))
        return out + [p.detach() for p in self._plain()]

    def _plain(self) -> list[nn.Parameter]:
        lora_params = {id(p) for layer, _ in self.lora for p in (layer.A, layer.B)}
        return [p for p in self.module.parameters() if p.requires_grad and id(p) not in lora_params]


def attach(model: Classifier, kind: str, *, embed_dim: int, num_classes: int, seed: int, bottleneck: int = 16,
           rank: int = 4, shared_rank: int = 4, alpha: float = 8.0) -> Adapter:
    """Put the shared module on `model` (in place) and return it. Shared modules start from `seed`,
    so every node's adapter starts equal, as gossip averaging expects."""
    if kind == "whole":
        return Adapter.whole(model)
    if kind not in ADAPTER_KINDS:
        raise ValueError(f"unknown adapter kind {kind!r}; choose one of: {', '.join(ADAPTER_KINDS)}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if kind == "lora":
            return _attach_lora(model, num_classes=num_classes, rank=rank, shared_rank=shared_rank, alpha=alpha)
        if kind == "head":
            shared, shape = nn.Linear(embed_dim, num_classes), (embed_dim, num_classes)
            on_top = shared
        elif kind == "bottleneck":
            shared, shape = BottleneckAdapter(embed_dim, bottleneck, num_classes), (embed_dim, bottleneck, num_classes)
            on_top = shared
        else:  # residual: the classifier after it stays private
            shared, shape = ResidualAdapter(embed_dim, bottleneck), (embed_dim, bottleneck)
            on_top = nn.Sequential(shared, nn.Linear(embed_dim, num_classes))
        # seeded after the shared module, so a projection does not shift the shared init
        proj = nn.Identity() if model.embed_dim == embed_dim else nn.Sequential(nn.Linear(model.embed_dim, embed_dim), nn.ReLU())
    model.head = ProjectedHead(proj, on_top)
    return Adapter(shared, shape)


def _attach_lora(model: Classifier, *, num_classes: int, rank: int, shared_rank: int, alpha: float) -> Adapter:
    if not 1 <= rank <= shared_rank:
        raise ValueError(f"LoRA rank {rank} must be between 1 and the shared rank {shared_rank}")
    for p in model.parameters():
        p.requires_grad_(False)  # the backbone is the common checkpoint: frozen
    layers = []
    for child in list(model.modules()):
        for attr, sub in list(child.named_children()):
            if isinstance(sub, nn.Linear) and sub is not model.head:
                lora = LoRALinear(sub, rank, alpha)
                setattr(child, attr, lora)
                layers.append((lora, shared_rank))
    model.head = nn.Linear(model.embed_dim, num_classes)  # trained fully and shared, as in LoRA fine-tuning
    if not layers:
        raise ValueError(f"{type(model).__name__} has no linear layer besides its head to put LoRA factors on")
    dims = sum(shared_rank * (lay.A.shape[1] + lay.B.shape[0]) for lay, _ in layers)
    return Adapter(model, (shared_rank, dims, num_classes), tuple(layers))
