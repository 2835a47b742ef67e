"""lpmn_fast: Local Prototypical Mapping Network for speech emotion recognition, with fused kernels."""

from .nn import PrototypeMIL
from .ops import PrototypeMILOutput, prototype_mil

__version__ = "0.1.0"
__all__ = ["PrototypeMIL", "PrototypeMILOutput", "load", "prototype_mil", "__version__"]


def load(path, **options):
    """A Predictor for a saved model or training run (lpmn_fast.inference.load; imported lazily)."""
    from .inference import load as _load

    return _load(path, **options)
