"""The prototype-MIL op and its backends."""

from .output import PrototypeMILOutput
from .prototype_mil import prototype_mil, resolve_backend
from .reference import prototype_mil_reference

__all__ = ["PrototypeMILOutput", "prototype_mil", "prototype_mil_reference", "resolve_backend"]
