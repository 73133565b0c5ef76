"""Model definitions. Input is (B, L) signals (or (B, C, L)); output logits (B, num_classes)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class Classifier(nn.Module):
    """A backbone producing an embedding of size `embed_dim`, then a linear head.

    Every model has the same two-part shape so adapter mode can put a shared module on top of
    `embed()` whatever the backbone is.
    """

    embed_dim: int

    def embed(self, x: torch.Tensor) -> torch.Tensor:  # (B, L) -> (B, d)
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L) -> (B, C)
        return self.head(self.embed(x))


def _channels(x: torch.Tensor) -> torch.Tensor:
    return x.unsqueeze(1) if x.dim() == 2 else x  # (B, L) -> (B, 1, L)


def _tokens(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, L) or (B, C, L) -> (B, ceil(L/size), C*size): consecutive values as one token, end zero-padded."""
    x = _channels(x)
    x = F.pad(x, (0, -x.shape[-1] % size))  # (B, C, T*size)
    b, c, _ = x.shape
    return x.reshape(b, c, -1, size).permute(0, 2, 1, 3).reshape(b, -1, c * size)


class MLP(Classifier):
    def __init__(self, *, input_length: int, num_classes: int, embed_dim: int = 32, hidden: int = 100, in_channels: int = 1):
        super().__init__()
        self.embed_dim = embed_dim
        self.body = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * input_length, hidden), nn.ReLU(),
            nn.Linear(hidden, embed_dim), nn.ReLU(),
        )
        self.head = nn.Linear(embed_dim, num_classes)

    def embed(self, x):
        return self.body(x)


class CNN1D(Classifier):
    """The MNIST-1D paper's CNN: 3 conv layers of `channels`, kernel 5, stride 2 (~7.5k params at 25)."""

    def __init__(self, *, input_length: int, num_classes: int, embed_dim: int = 32, channels: int = 25, in_channels: int = 1):
        super().__init__()
        self.embed_dim = embed_dim
        self.convs = nn.Sequential(
            nn.Conv1d(in_channels, channels, 5, stride=2, padding=2), nn.ReLU(),
            nn.Conv1d(channels, channels, 5, stride=2, padding=2), nn.ReLU(),
            nn.Conv1d(channels, channels, 5, stride=2, padding=2), nn.ReLU(),
        )
        with torch.no_grad():
            flat = self.convs(torch.zeros(1, in_channels, input_length)).numel()
        self.proj = nn.Sequential(nn.Flatten(), nn.Linear(flat, embed_dim), nn.ReLU())
        self.head = nn.Linear(embed_dim, num_classes)

    def embed(self, x):
        return self.proj(self.convs(_channels(x)))


class CNN2D(Classifier):
    """Images (B, H, W): two 3x3 conv layers of `channels`, each halving the image, then a projection
    (~13k params at 16 on 28x28). Image data is (N, H, W), so the zoo's in_channels / input_length are
    its height / width; the other models read the rows as channels (MLP, CNN1D) or tokens (GRU)."""

    def __init__(self, *, input_length: int, num_classes: int, embed_dim: int = 32, channels: int = 16,
                 in_channels: int = 1):
        super().__init__()
        self.embed_dim = embed_dim
        self.height = in_channels
        self.convs = nn.Sequential(
            nn.Conv2d(1, channels, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
        )
        with torch.no_grad():
            flat = self.convs(torch.zeros(1, 1, in_channels, input_length)).numel()
        self.proj = nn.Sequential(nn.Flatten(), nn.Linear(flat, embed_dim), nn.ReLU())
        self.head = nn.Linear(embed_dim, num_classes)

    def embed(self, x):
        return self.proj(self.convs(x.reshape(x.shape[0], 1, self.height, -1)))


class GRU(Classifier):
    """A GRU reading `chunk` consecutive values per step; the last hidden state is the embedding.

    chunk=2 halves the sequential steps, which are what a GRU costs on CPU; chunk=1 is the classic
    one-value-per-step GRU (not benchmarked against chunk=2 in the repo yet).
    """

    def __init__(self, *, input_length: int, num_classes: int, embed_dim: int = 32, hidden: int = 32, chunk: int = 2,
                 in_channels: int = 1):
        super().__init__()
        self.embed_dim = embed_dim
        self.chunk = chunk
        self.rnn = nn.GRU(in_channels * chunk, hidden, batch_first=True)
        self.proj = nn.Sequential(nn.Linear(hidden, embed_dim), nn.ReLU())
        self.head = nn.Linear(embed_dim, num_classes)

    def embed(self, x):
        _, h = self.rnn(_tokens(x, self.chunk))  # h: (1, B, hidden)
        return self.proj(h[-1])


class TinyTransformer(Classifier):
    """Patches of the signal as tokens, two pre-norm encoder layers, mean pooling."""

    def __init__(self, *, input_length: int, num_classes: int, embed_dim: int = 32, width: int = 32, patch: int = 4,
                 layers: int = 2, heads: int = 4, in_channels: int = 1):
        super().__init__()
        self.embed_dim = embed_dim
        self.patch = patch
        tokens = -(-input_length // patch)
        self.tok = nn.Linear(in_channels * patch, width)
        self.pos = nn.Parameter(torch.zeros(1, tokens, width))
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=2 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.proj = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, embed_dim), nn.ReLU())
        self.head = nn.Linear(embed_dim, num_classes)

    def embed(self, x):
        h = self.encoder(self.tok(_tokens(x, self.patch)) + self.pos)  # (B, T, width)
        return self.proj(h.mean(dim=1))
