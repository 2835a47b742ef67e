"""The batches of one training epoch: which utterances, in which order, cropped where.

A pure function of (seed, epoch) and the utterance sizes, so that a run resumed mid-epoch skips
exactly the batches it had already trained on.

* Random batches (``bucket=False``): consecutive slices of the epoch's random permutation
  (:func:`~lpmn_fast.training.batching.epoch_order`), as before bucketing existed.
* Length-bucketed batches (``bucket=True``): utterances sorted by size after a random
  multiplicative jitter of +-``BUCKET_JITTER`` (so batch compositions change from epoch to epoch,
  ties broken at random), cut into consecutive batches, and the batch order shuffled. Every
  utterance appears once per epoch; only the last batch of the sorted order may be smaller. A
  batch then pads to a length close to its own utterances' instead of to the longest of a random
  sample, which for long-tailed durations (IEMOCAP) is most of the padding.

Crops (``max_frames``): each utterance longer than ``max_frames`` gets a window of that many
frames at a uniformly random start, drawn per (seed, epoch) and applied when the features are read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from .batching import epoch_order

BUCKET_JITTER = 0.1  # relative size noise before sorting: compositions vary, padding stays small


class Item(NamedTuple):
    """One utterance of a batch: ``index`` into the set, ``start`` frame and ``frames`` of its crop
    (``frames`` None: the whole utterance)."""

    index: int
    start: int = 0
    frames: int | None = None


def _generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    # stream 0 is epoch_order's; the sampler's own draws use other streams of the same (seed, epoch)
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 7 + stream)


def cropped_sizes(sizes: Sequence[int], max_frames: int | None) -> list[int]:
    return [int(s) if max_frames is None else min(int(s), max_frames) for s in sizes]


def epoch_batches(sizes: Sequence[int], batch_size: int, seed: int, epoch: int, *, bucket: bool = True,
                  max_frames: int | None = None) -> list[list[Item]]:
    """The batches of ``epoch``: lists of :class:`Item` covering every utterance once.

    sizes: (N,) frames per utterance (the bucketing key; crops use them too); batch_size: utterances
    per batch; max_frames: crop length, None for whole utterances.
    """
    n = len(sizes)
    if n == 0:
        raise ValueError("no utterances to batch: the training split is empty")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    effective = torch.tensor(cropped_sizes(sizes, max_frames), dtype=torch.float64)
    if bucket:
        g = _generator(seed, epoch, 1)
        noisy = effective * (1 + BUCKET_JITTER * (2 * torch.rand(n, generator=g, dtype=torch.float64) - 1))
        order = torch.argsort(noisy, stable=True)
        batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
        batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
    else:
        order = epoch_order(n, seed, epoch)
        batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    starts = _crop_starts(sizes, max_frames, seed, epoch)
    return [[Item(i, starts[i], None if max_frames is None or sizes[i] <= max_frames else max_frames)
             for i in b.tolist()] for b in batches]


def _crop_starts(sizes: Sequence[int], max_frames: int | None, seed: int, epoch: int) -> list[int]:
    if max_frames is None:
        return [0] * len(sizes)
    u = torch.rand(len(sizes), generator=_generator(seed, epoch, 2), dtype=torch.float64)
    return [int(x * (int(s) - max_frames + 1)) if s > max_frames else 0 for x, s in zip(u.tolist(), sizes)]


def padding_fraction(batches: Sequence[Sequence[int]]) -> float:
    """Padded share of a padded batch tensor's frames, over ``batches`` of per-utterance frame counts."""
    total = sum(len(b) * max(b) for b in batches if len(b))
    return 1.0 - sum(sum(b) for b in batches) / total if total else 0.0


__all__ = ["BUCKET_JITTER", "Item", "cropped_sizes", "epoch_batches", "padding_fraction"]
