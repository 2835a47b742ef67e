"""Modules built on the prototype-MIL op."""

from .prototype_mil import PrototypeMIL

__all__ = ["PrototypeMIL"]
