"""The explanation figure: waveform on top, per-class evidence below, winning frames marked."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ..data.atomic import atomic_path  # noqa: E402
from ..models.backbones import SAMPLE_RATE  # noqa: E402
from .explanation import Explanation  # noqa: E402

_MAX_POINTS = 4000  # waveform points drawn; longer inputs are drawn as a min/max envelope


def _envelope(wave: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(times, lows, highs) of ``wave`` in at most _MAX_POINTS bins."""
    bins = max(1, int(np.ceil(wave.size / _MAX_POINTS)))
    padded = np.pad(wave, (0, (-wave.size) % bins), mode="edge").reshape(-1, bins)
    times = (np.arange(padded.shape[0]) * bins + bins / 2) / sample_rate
    return times, padded.min(1), padded.max(1)


def plot_explanation(wave: torch.Tensor, explanation: Explanation, path: str | Path, title: str,
                     highlight: str | None = None, segment: tuple[float, float] | None = None) -> None:
    """Write the PNG: ``wave`` (samples,) at 16 kHz; the winning frames of the top prototypes as
    lines coloured by the class each prototype supports most (darker: larger contribution);
    evidence per class (lines: evidence_soft, dots: the exact split at the frames that won a max),
    class ``highlight`` (the predicted one) drawn bold; ``segment`` (start_s, end_s) shaded if
    known (synthetic corpus)."""
    classes = explanation.classes
    colors = {c: plt.get_cmap("tab10")(i % 10) for i, c in enumerate(classes)}
    times = explanation.geometry.time_s(np.arange(explanation.num_frames))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 5.5), sharex=True, height_ratios=(1, 1.6),
                                      layout="constrained")
    t, lo, hi = _envelope(wave.float().cpu().numpy(), SAMPLE_RATE)
    top.fill_between(t, lo, hi, color="0.35", linewidth=0.5)
    top.set_ylabel("waveform")
    top.set_title(title, fontsize=10)
    strongest = max([max(p["contribution"].values()) for p in explanation.top_prototypes] + [1e-12])
    for p in explanation.top_prototypes:
        favoured = max(p["contribution"], key=p["contribution"].get)
        alpha = 0.25 + 0.75 * max(0.0, p["contribution"][favoured]) / strongest
        top.axvline(p["time_s"], color=colors[favoured], alpha=alpha, linewidth=1.4)
    if segment is not None:
        for ax in (top, bottom):
            ax.axvspan(*segment, color="gold", alpha=0.25, linewidth=0)
    if explanation.evidence_soft is not None:
        for i, c in enumerate(classes):
            bottom.plot(times, explanation.evidence_soft[:, i].numpy(), color=colors[c],
                        linewidth=2.0 if c == highlight else 0.8, alpha=1.0 if c == highlight else 0.6,
                        label=f"{c} (soft)")
    hard = explanation.evidence.numpy()
    won = np.flatnonzero(np.abs(hard).sum(1) > 0)
    for i, c in enumerate(classes):
        bottom.scatter(times[won], hard[won, i], color=colors[c], s=12, marker="o", edgecolors="none",
                       label=f"{c} (winning frames)")
    bottom.axhline(0, color="0.6", linewidth=0.6)
    bottom.set_xlabel("time (s)")
    bottom.set_ylabel("evidence (centred logit)")
    bottom.legend(fontsize=7, ncol=2, loc="upper right")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
