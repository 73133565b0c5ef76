"""The model zoo: small heterogeneous classifiers that all expose `embed(x) -> (B, d)` and a `head`."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from p2pfl.models.zoo import CNN1D, CNN2D, GRU, MLP, TinyTransformer, Classifier

# name -> constructor(input_length, num_classes, embed_dim, **arch options)
MODELS: dict[str, Callable[..., Classifier]] = {
    "mlp": MLP,
    "cnn1d": CNN1D,
    "cnn2d": CNN2D,
    "gru": GRU,
    "transformer": TinyTransformer,
}


class UnknownModelError(ValueError):
    pass


def build_model(arch: str, *, input_length: int, num_classes: int, embed_dim: int = 32, **options) -> Classifier:
    """Build a registered architecture; unknown names and options fail with the choices."""
    try:
        ctor = MODELS[arch]
    except KeyError:
        raise UnknownModelError(f"unknown architecture {arch!r}; choose one of: {', '.join(MODELS)}") from None
    try:
        return ctor(input_length=input_length, num_classes=num_classes, embed_dim=embed_dim, **options)
    except TypeError as e:
        raise UnknownModelError(f"bad options for architecture {arch!r}: {e}") from None


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["MODELS", "build_model", "param_count", "UnknownModelError", "Classifier"]
