"""Padded batches in a batch order derived from (seed, epoch) alone, so a resumed run replays it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch


class Batch(NamedTuple):
    """feats (B, T, F) zero-padded; lengths (B,) int64; labels (B,) int64; index (B,) into the set;
    valence (B,) float32 targets (MER2023) or None."""

    feats: torch.Tensor
    lengths: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor
    valence: torch.Tensor | None = None

    def to(self, device: torch.device) -> "Batch":
        """On ``device``; 16-bit features (a --cache-dtype cache) become float32, the dtype of the
        model's master weights (autocast lowers them again where it pays)."""
        moved = Batch(*(None if t is None else t.to(device, non_blocking=True) for t in self))
        if moved.feats.dtype in (torch.float16, torch.bfloat16):
            moved = moved._replace(feats=moved.feats.float())
        return moved


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled order of ``n`` items in ``epoch``: a pure function of (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def collate(feats: Sequence[torch.Tensor], labels: Sequence[int], index: Sequence[int],
            valence: Sequence[float] | None = None) -> Batch:
    lengths = torch.tensor([f.shape[0] for f in feats], dtype=torch.int64)
    padded = torch.nn.utils.rnn.pad_sequence(list(feats), batch_first=True)
    return Batch(padded, lengths, torch.as_tensor(labels, dtype=torch.int64), torch.as_tensor(index, dtype=torch.int64),
                 None if valence is None else torch.as_tensor(valence, dtype=torch.float32))


def iterate_batches(features, labels: torch.Tensor, order: torch.Tensor, batch_size: int,
                    start: int = 0, valence: torch.Tensor | None = None) -> Iterator[Batch]:
    """Batches of ``order`` (the last may be smaller), skipping the first ``start`` batches;
    ``valence`` (N,) targets, if given, ride along."""
    for b in range(start, num_batches(len(order), batch_size)):
        idx = order[b * batch_size:(b + 1) * batch_size].tolist()
        yield collate([features[i] for i in idx], labels[idx].tolist(), idx,
                      None if valence is None else valence[idx])


def num_batches(n: int, batch_size: int) -> int:
    return (n + batch_size - 1) // batch_size
