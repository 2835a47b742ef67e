"""An independent float64 NumPy computation of the prototype-MIL forward, for tests only."""

from __future__ import annotations

import numpy as np
import torch


def naive_prototype_mil(x: torch.Tensor, prototypes: torch.Tensor, lengths: torch.Tensor, tau: float):
    """Utterance by utterance in float64 NumPy. Returns pooled (B, K), frame_index (B, K), nearest (B, T)."""
    xs = x.detach().double().cpu().numpy()
    ps = prototypes.detach().double().cpu().numpy()
    B, T, _ = xs.shape
    K = ps.shape[0]
    ph = ps / np.maximum(np.linalg.norm(ps, axis=1, keepdims=True), 1e-12)
    pooled = np.zeros((B, K))
    frame_index = np.zeros((B, K), dtype=np.int64)
    nearest = np.full((B, T), -1, dtype=np.int64)
    for b in range(B):
        n = int(lengths[b])
        frames = xs[b, :n]
        xh = frames / np.maximum(np.linalg.norm(frames, axis=1, keepdims=True), 1e-12)
        cos = xh @ ph.T  # (n, K)
        z = cos / tau
        e = np.exp(z - z.max(axis=1, keepdims=True))
        s = e / e.sum(axis=1, keepdims=True)
        pooled[b] = s.max(axis=0)
        frame_index[b] = s.argmax(axis=0)  # NumPy returns the first maximum
        nearest[b, :n] = cos.argmax(axis=1)
    return torch.from_numpy(pooled), torch.from_numpy(frame_index), torch.from_numpy(nearest)


def random_lengths(B: int, T: int, generator: torch.Generator) -> torch.Tensor:
    """Ragged lengths in [1, T] with the last utterance full, so T is really used."""
    lengths = torch.randint(1, T + 1, (B,), generator=generator)
    lengths[-1] = T
    return lengths
