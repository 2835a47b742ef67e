"""Figures of a run: confusion matrix and training curves (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..data.atomic import atomic_path  # noqa: E402


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_confusion(matrices: dict[str, list[list[int]]], classes: list[str], path: str | Path) -> None:
    """One panel per titled confusion matrix (rows: truth, columns: prediction), row-normalised colours."""
    fig, axes = plt.subplots(1, len(matrices), figsize=(4.2 * len(matrices), 4), squeeze=False, layout="constrained")
    for ax, (title, cm) in zip(axes[0], matrices.items()):
        cm = np.asarray(cm)
        rates = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if rates[i, j] > 0.5 else "black")
        ax.set_xticks(range(len(classes)), classes, rotation=45)
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted")
        ax.set_title(title)
    axes[0, 0].set_ylabel("true")
    _save(fig, Path(path))


def plot_curves(history: list[dict], select_metric: str, path: str | Path) -> None:
    """Training loss and validation loss/metric per epoch."""
    epochs = [h["epoch"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    left.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train (CE + aux)")
    left.plot(epochs, [h["train_ce"] for h in history], marker=".", label="train CE")
    left.plot(epochs, [h["valid_loss"] for h in history], marker="s", label="valid CE")
    left.set_xlabel("epoch")
    left.set_ylabel("loss")
    left.legend()
    for metric in ("wa", "ua", "macro_f1"):
        right.plot(epochs, [h["valid"][metric] for h in history], marker="o", label=f"valid {metric}")
    right.set_xlabel("epoch")
    right.set_ylabel("metric")
    right.set_title(f"best epoch selected on valid {select_metric}")
    right.legend()
    _save(fig, Path(path))
