"""The training input pipeline: a ``torch.utils.data`` Dataset of frozen features and a DataLoader
over the epoch's batches (:mod:`.sampler`), with worker processes when asked.

Workers read cached features, or decode, resample and compute the frozen backbone part when
features are not cached. What a batch holds depends only on (seed, epoch) and the batch's
position, never on the number of workers; the loader gets its own seeded generator so that
creating it draws nothing from the global RNG that dropout (and the checkpoint) use.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from .batching import Batch, collate
from .sampler import Item
from .steps import LabelledSet


class FeatureDataset(Dataset):
    """Items of a LabelledSet by :class:`~.sampler.Item` key: (T, F) features (cropped), label, index, valence."""

    def __init__(self, data: LabelledSet):
        self.data = data

    def __len__(self) -> int:
        return len(self.data.labels)

    def __getitem__(self, item: Item):
        index, start, frames = item if isinstance(item, tuple) else (int(item), 0, None)
        feats = self.data.features[index]
        if frames is not None:
            start = min(start, max(0, feats.shape[0] - frames))  # on-the-fly sizes are estimates
            feats = feats[start:start + frames]
        valence = None if self.data.valence is None else float(self.data.valence[index])
        return feats, int(self.data.labels[index]), index, valence


def collate_items(items: Sequence[tuple]) -> Batch:
    feats, labels, index, valence = zip(*items)
    return collate(feats, labels, index, None if valence[0] is None else valence)


def batch_loader(data: LabelledSet, batches: Sequence[Sequence[Item]], *, workers: int = 0, seed: int = 0,
                 pin_memory: bool = False) -> DataLoader:
    """A DataLoader yielding the padded :class:`Batch` of each of ``batches``, in order."""
    return DataLoader(FeatureDataset(data), batch_sampler=list(batches), collate_fn=collate_items,
                      num_workers=workers, pin_memory=pin_memory,
                      generator=torch.Generator().manual_seed(seed), persistent_workers=False)


def feature_sizes(features) -> list[int]:
    """Frames per utterance of a feature set: exact for cached features (tensors), estimated from
    the audio's duration for on-the-fly ones (their ``frame_estimates``)."""
    if hasattr(features, "frame_estimates"):
        return list(features.frame_estimates())
    return [int(f.shape[0]) for f in features]


__all__ = ["FeatureDataset", "batch_loader", "collate_items", "feature_sizes"]
