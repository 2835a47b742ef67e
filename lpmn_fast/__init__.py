"""lpmn_fast: Local Prototypical Mapping Network for speech emotion recognition, with fused kernels."""

from .nn import PrototypeMIL
from .ops import PrototypeMILOutput, prototype_mil

__version__ = "0.1.0"
__all__ = ["PrototypeMIL", "PrototypeMILOutput", "prototype_mil", "__version__"]
