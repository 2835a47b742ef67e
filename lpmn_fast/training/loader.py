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
    """Items of a LabelledSet by :class:`~.sampler.Item` key: (T, F) features (cropped), label, index, valence.

    ``decode_only``: (on-the-fly features whose frozen part is on a GPU) items carry the decoded
    waveform and their crop instead; :func:`finish_batch` prepares them in the training process.
    """

    def __init__(self, data: LabelledSet, decode_only: bool = False):
        self.data = data
        self.decode_only = decode_only

    def __len__(self) -> int:
        return len(self.data.labels)

    def __getitem__(self, item: Item):
        index, start, frames = item if isinstance(item, tuple) else (int(item), 0, None)
        valence = None if self.data.valence is None else float(self.data.valence[index])
        if self.decode_only:
            return self.data.features.waveform(index), int(self.data.labels[index]), index, valence, (start, frames)
        return crop(self.data.features[index], start, frames), int(self.data.labels[index]), index, valence


def crop(feats: torch.Tensor, start: int, frames: int | None) -> torch.Tensor:
    """feats (T, F) -> frames [start, start + frames) (all of them for ``frames`` None)."""
    if frames is None:
        return feats
    start = min(start, max(0, feats.shape[0] - frames))  # on-the-fly sizes are estimates
    return feats[start:start + frames]


def collate_items(items: Sequence[tuple]) -> Batch:
    feats, labels, index, valence = zip(*items)
    return collate(feats, labels, index, None if valence[0] is None else valence)


def _keep_items(items: Sequence[tuple]) -> list[tuple]:
    return list(items)


def finish_batch(features, items: Sequence[tuple]) -> Batch:
    """The Batch of decode-only items: the frozen part of every waveform, cropped, padded."""
    return collate_items([(crop(features.from_waveform(wave), *window), label, index, valence)
                          for wave, label, index, valence, window in items])


def batch_loader(data: LabelledSet, batches: Sequence[Sequence[Item]], *, workers: int = 0, seed: int = 0,
                 pin_memory: bool = False):
    """An iterable of the padded :class:`Batch` of each of ``batches``, in order (a DataLoader;
    with workers over on-the-fly features on a GPU, a generator finishing the workers' decoded audio)."""
    decode_only = workers > 0 and getattr(data.features, "prepare_on_gpu", False)
    loader = DataLoader(FeatureDataset(data, decode_only), batch_sampler=list(batches),
                        collate_fn=_keep_items if decode_only else collate_items, num_workers=workers,
                        pin_memory=pin_memory and not decode_only, generator=torch.Generator().manual_seed(seed),
                        persistent_workers=False)
    if not decode_only:
        return loader
    return (finish_batch(data.features, items) for items in loader)


def feature_sizes(features) -> list[int]:
    """Frames per utterance of a feature set: exact for cached features (tensors), estimated from
    the audio's duration for on-the-fly ones (their ``frame_estimates``)."""
    if hasattr(features, "frame_estimates"):
        return list(features.frame_estimates())
    return [int(f.shape[0]) for f in features]


__all__ = ["FeatureDataset", "batch_loader", "collate_items", "feature_sizes"]
