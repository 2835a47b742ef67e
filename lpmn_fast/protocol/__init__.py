"""Evaluation protocol: cross-validation splits, metrics and result tables, separate from data and model."""

from .metrics import classification_metrics, valence_metrics
from .splits import (
    SPLITS, Split, column_split, fold_ids, leave_one_session_out, make_split, speaker_kfold, stratified_kfold,
)

__all__ = ["SPLITS", "Split", "classification_metrics", "column_split", "fold_ids", "leave_one_session_out",
           "make_split", "speaker_kfold", "stratified_kfold", "valence_metrics"]
