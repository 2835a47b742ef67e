"""Which frames an LPMN prediction rests on: winning frames of the important prototypes, and a
per-frame evidence timeline per class.

With W (classes, K) the classifier weights on the pooled mappings and Wc = W minus its mean
over classes (a value added to every logit changes no probability, so only Wc favours one class
over the others), pooled[k] = s[frame_index[k], k] the MIL max of prototype k (eq. 2):

* ``evidence[t, c] = sum over the prototypes k whose max frame t won of Wc[c, k] * pooled[k]``.
  Summed over t it is exactly the centred logit of class c (logit - bias, minus the class mean),
  so it splits the decision among the frames; frames that won no max carry none.
* ``evidence_soft[t, c] = sum over all k of Wc[c, k] * s[t, k]``: the centred logit the
  utterance would get if frame t alone were the bag; a smooth curve defined at every frame.

``top_prototypes`` lists the K' prototypes with the largest Fisher importance (eq. 4, the
ranking the paper selects by), each with its winning frame and its contribution per class.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.backbones import SAMPLE_RATE
from .chunks import FrameGeometry, Pooled, centred_weights

EVIDENCE_DEFINITION = ("evidence[t, c] = sum over prototypes k whose max-over-time frame is t of "
                       "(W[c, k] - mean_c' W[c', k]) * pooled[k]; sums over t to the centred logit of class c")
SOFT_DEFINITION = ("evidence_soft[t, c] = sum over prototypes k of (W[c, k] - mean_c' W[c', k]) * s[t, k], "
                   "s[t] = frame t's softmax over prototypes (eq. 2)")


@dataclass
class Explanation:
    """classes; geometry (frame times); evidence and evidence_soft (T, classes) float32;
    top_prototypes: dicts (rank, prototype, codebook_index, fisher_importance, frame, time_s,
    mapping, contribution per class), most important first; ranked_by: "fisher" or, for a model
    with no Fisher estimate, "contribution"."""

    classes: list[str]
    geometry: FrameGeometry
    evidence: torch.Tensor
    evidence_soft: torch.Tensor | None
    top_prototypes: list[dict]
    ranked_by: str

    @property
    def num_frames(self) -> int:
        return self.evidence.shape[0]

    def winning_frames(self) -> list[int]:
        """Sorted distinct frames that won the max of a top prototype."""
        return sorted({p["frame"] for p in self.top_prototypes})

    def to_dict(self, decimals: int = 5) -> dict:
        def curves(e: torch.Tensor) -> dict:
            return {c: [round(v, decimals) for v in e[:, i].tolist()] for i, c in enumerate(self.classes)}

        return {
            "frame_shift_s": self.geometry.shift / SAMPLE_RATE, "frame_window_s": self.geometry.window / SAMPLE_RATE,
            "num_frames": self.num_frames,
            "frame_time_definition": "frame t covers [t * frame_shift_s, t * frame_shift_s + frame_window_s); "
                                     "time_s is its centre",
            "top_prototypes_ranked_by": self.ranked_by, "top_prototypes": self.top_prototypes,
            "winning_frames": self.winning_frames(),
            "evidence_definition": EVIDENCE_DEFINITION, "evidence": curves(self.evidence),
            **({"evidence_soft_definition": SOFT_DEFINITION, "evidence_soft": curves(self.evidence_soft)}
               if self.evidence_soft is not None else {}),
        }


def frame_evidence(wc: torch.Tensor, pooled: torch.Tensor, frame_index: torch.Tensor, T: int) -> torch.Tensor:
    """(T, classes): each prototype's centred contribution Wc[:, k] * pooled[k] at its winning frame.

    wc: (classes, K) centred weights; pooled, frame_index: (K,); T frames.
    """
    contribution = (wc * pooled.float()[None]).T  # (K, classes)
    return torch.zeros(T, wc.shape[0]).index_add_(0, frame_index.cpu(), contribution.cpu())


def explain(head: torch.nn.Module, result: Pooled, classes: list[str], geometry: FrameGeometry,
            top_k: int) -> Explanation:
    """The explanation of one prototype-head result (see the module docstring)."""
    mil = head.mil
    wc = centred_weights(head)
    evidence = frame_evidence(wc, result.pooled, result.frame_index, result.num_frames)
    contribution = (wc * result.pooled.float()[None]).cpu()  # (classes, K)
    importance = head.feature_importance()  # of the classifier's inputs (a probe's K' prototypes)
    top_k = max(1, min(top_k, importance.numel()))
    if int(mil.fisher_updates) > 0:
        ranked_by, top = "fisher", torch.topk(importance, top_k, sorted=True).indices
    else:  # an untrained or hand-built layer: no importance estimate to rank by
        ranked_by, top = "contribution", torch.topk(contribution.abs().amax(0), top_k).indices
    selected = getattr(head, "selected", None)  # a probe's prototypes are a subset of the full codebook
    prototypes = []
    for rank, k in enumerate(top.tolist(), start=1):
        frame = int(result.frame_index[k])
        prototypes.append({
            "rank": rank, "prototype": k,
            "codebook_index": int(selected[k]) if selected is not None else k,
            "fisher_importance": float(importance[k]), "frame": frame,
            "time_s": round(geometry.time_s(frame), 4), "mapping": float(result.pooled[k]),
            "contribution": {c: float(contribution[i, k]) for i, c in enumerate(classes)},
        })
    soft = None if result.soft_evidence is None else result.soft_evidence.float().cpu()
    return Explanation(list(classes), geometry, evidence, soft, prototypes, ranked_by)
