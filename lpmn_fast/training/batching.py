"""Padded batches in a batch order derived from (seed, epoch) alone, so a resumed run replays it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch


class Batch(NamedTuple):
    """feats (B, T, F) zero-padded; lengths (B,) int64; labels (B,) int64; index (B,) into the set."""

    feats: torch.Tensor
    lengths: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor

    def to(self, device: torch.device) -> "Batch":
        return Batch(*(t.to(device) for t in self))


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled order of ``n`` items in ``epoch``: a pure function of (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def collate(feats: Sequence[torch.Tensor], labels: Sequence[int], index: Sequence[int]) -> Batch:
    lengths = torch.tensor([f.shape[0] for f in feats], dtype=torch.int64)
    padded = torch.nn.utils.rnn.pad_sequence(list(feats), batch_first=True)
    return Batch(padded, lengths, torch.as_tensor(labels, dtype=torch.int64), torch.as_tensor(index, dtype=torch.int64))


def iterate_batches(features, labels: torch.Tensor, order: torch.Tensor, batch_size: int,
                    start: int = 0) -> Iterator[Batch]:
    """Batches of ``order`` (the last may be smaller), skipping the first ``start`` batches."""
    for b in range(start, (len(order) + batch_size - 1) // batch_size):
        idx = order[b * batch_size:(b + 1) * batch_size].tolist()
        yield collate([features[i] for i in idx], labels[idx].tolist(), idx)


def num_batches(n: int, batch_size: int) -> int:
    return (n + batch_size - 1) // batch_size
