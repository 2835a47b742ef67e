"""The result type shared by every backend of the prototype-MIL op."""

from __future__ import annotations

from typing import NamedTuple

import torch


class PrototypeMILOutput(NamedTuple):
    """Outputs of :func:`lpmn_fast.prototype_mil`.

    pooled: (B, K) max over valid frames of the softmax over prototypes (input dtype).
    frame_index: (B, K) int64, the frame that attains each max (ties: smallest t).
    nearest: (B, T) int64, argmax over prototypes of the cosine (ties: smallest k); -1 on padding.
    """

    pooled: torch.Tensor
    frame_index: torch.Tensor
    nearest: torch.Tensor
