"""Codebook initialisation by k-means on training frames (section 3.1's universal model)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def kmeans_codebook(frames: torch.Tensor, num_prototypes: int, seed: int = 0) -> torch.Tensor:
    """frames: (N, C) -> (K, C) unit-norm centroids of the unit-normalised frames.

    The prototypes are compared by cosine (eq. 2), so k-means runs on the unit sphere.
    """
    # Imported here: scikit-learn takes ~0.7 s to import and only training's codebook init needs it,
    # not ``import lpmn_fast.models`` (inference, lpmn-predict).
    from sklearn.cluster import MiniBatchKMeans

    if frames.dim() != 2:
        raise ValueError(f"frames must be (N, C), got shape {tuple(frames.shape)}")
    if frames.shape[0] < num_prototypes:
        raise ValueError(
            f"k-means needs at least K = {num_prototypes} training frames, got {frames.shape[0]}; "
            "use fewer prototypes or more data"
        )
    unit = F.normalize(frames.detach().double(), dim=-1).cpu().numpy()
    km = MiniBatchKMeans(n_clusters=num_prototypes, random_state=seed, n_init=3,
                         batch_size=min(4096, unit.shape[0]), max_iter=100)
    km.fit(unit)
    centres = torch.from_numpy(np.ascontiguousarray(km.cluster_centers_))
    return F.normalize(centres, dim=-1).to(frames.dtype)
