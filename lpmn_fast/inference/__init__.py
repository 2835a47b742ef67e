"""Inference: load a saved model, predict emotions of audio, explain LPMN predictions frame by frame."""

from .audio import InputError
from .explanation import Explanation
from .predictor import Prediction, Predictor, load

__all__ = ["Explanation", "InputError", "Prediction", "Predictor", "load"]
