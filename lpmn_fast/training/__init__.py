"""Training: config, feature caching, batching, the loop, checkpoints, probing and plots."""

from .config import TrainConfig, load_config_file, make_config, resolve
from .loop import train
from .steps import evaluate, train_step

__all__ = ["TrainConfig", "evaluate", "load_config_file", "make_config", "resolve", "train", "train_step"]
