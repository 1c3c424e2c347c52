"""Self-supervised methods, selectable by name (``napari-ssl methods`` lists them).

Each method module defines one :class:`PretextMethod` subclass with a non-empty ``name``.
The registry imports the modules of a fixed list in a fixed order; a module that does not
exist (yet) is skipped, any other import error is raised.
"""
from __future__ import annotations

import importlib

from ..errors import NapariSSLError
from .base import PretextMethod

__all__ = ["PretextMethod", "METHODS", "get_method", "method_summaries"]

# order shown by `napari-ssl methods`
METHOD_MODULES = (
    "inpainting",
    "rotation",
    "relative_position",
    "offset_heatmap",
    "byol",
    "simclr",
    "moco",
    "simsiam",
    "barlow_twins",
    "vicreg",
)


def _discover() -> dict[str, type[PretextMethod]]:
    found: dict[str, type[PretextMethod]] = {}
    for mod_name in METHOD_MODULES:
        full = f"{__name__}.{mod_name}"
        try:
            mod = importlib.import_module(full)
        except ModuleNotFoundError as exc:
            if exc.name == full:
                continue
            raise
        for obj in vars(mod).values():
            if isinstance(obj, type) and issubclass(obj, PretextMethod) and obj.__module__ == full and obj.name:
                found[obj.name] = obj
    return found


METHODS: dict[str, type[PretextMethod]] = _discover()


def get_method(name: str) -> type[PretextMethod]:
    try:
        return METHODS[name]
    except KeyError:
        raise NapariSSLError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}") from None


def method_summaries() -> list[tuple[str, str, str]]:
    """(name, kind, one-line summary) for every method, in display order."""
    return [(n, c.kind, c.summary) for n, c in METHODS.items()]
