"""SER metrics: WA, UA, macro and weighted F1 and the confusion matrix; valence MSE (scikit-learn)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, mean_squared_error, recall_score


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], classes: Sequence[str]) -> dict:
    """Metrics of predicted class indices against the truth.

    WA (weighted accuracy) is the plain accuracy; UA (unweighted accuracy) the mean recall over
    the classes present in ``y_true``; macro/weighted F1 follow scikit-learn over the classes seen
    in either array. The confusion matrix (rows: truth, columns: prediction) covers every class
    in ``classes``, in that order.
    """
    y_true, y_pred = _paired(y_true, y_pred, np.int64, ("y_true", "y_pred"), "metrics")
    n = len(classes)
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.min() < 0 or y.max() >= n:
            raise ValueError(f"{name} holds class indices outside [0, {n}) for classes {list(classes)}")
    present = np.unique(y_true)
    return {
        "wa": float(accuracy_score(y_true, y_pred)),
        "ua": float(recall_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, average="weighted", zero_division=0)),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=list(range(n))).tolist(),
        "classes": list(classes),
        "count": int(y_true.size),
    }


def valence_metrics(v_true: Sequence[float], v_pred: Sequence[float]) -> dict:
    """``valence_mse``: mean squared error of predicted against annotated valence (MER2023)."""
    v_true, v_pred = _paired(v_true, v_pred, np.float64, ("v_true", "v_pred"), "the valence MSE")
    if not (np.isfinite(v_true).all() and np.isfinite(v_pred).all()):
        raise ValueError("valence values must be finite (NaN or Inf found)")
    return {"valence_mse": float(mean_squared_error(v_true, v_pred))}


def _paired(a, b, dtype, names: tuple[str, str], what: str) -> tuple[np.ndarray, np.ndarray]:
    """``a`` and ``b`` as 1-d arrays of ``dtype`` and equal, non-zero length; ValueError otherwise."""
    a = np.asarray(a, dtype=dtype)
    b = np.asarray(b, dtype=dtype)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"{names[0]} and {names[1]} must be 1-d of equal length, got {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError(f"cannot compute {what} of an empty evaluation set")
    return a, b
