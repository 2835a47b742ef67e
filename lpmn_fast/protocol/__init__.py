"""Evaluation protocol: train/validation/test splits and metrics, separate from data and model."""

from .metrics import classification_metrics
from .splits import SPLITS, Split, leave_one_session_out, make_split

__all__ = ["SPLITS", "Split", "classification_metrics", "leave_one_session_out", "make_split"]
