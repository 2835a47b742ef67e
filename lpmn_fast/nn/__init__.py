"""Modules built on the prototype-MIL op."""

from .prototype_mil import IMPORTANCES, PrototypeMIL

__all__ = ["IMPORTANCES", "PrototypeMIL"]
