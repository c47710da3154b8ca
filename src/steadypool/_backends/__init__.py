"""Backends, loaded lazily by name so that heavy dependencies load only when asked for."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._base import Backend

__all__ = ["BACKENDS", "get_backend"]

# name -> module defining `BACKEND`, a `Backend` subclass.
BACKENDS: dict[str, str] = {
    "threads": "steadypool._backends._threads",
    "processes": "steadypool._backends._processes",
    "ray": "steadypool._backends._ray",
}


def get_backend(name: str) -> type[Backend]:
    """Return the backend class called `name`, importing its module on first use.

    Raises:
        ValueError: `name` is not a known backend.
    """
    try:
        module = BACKENDS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown backend {name!r}: use one of {', '.join(map(repr, BACKENDS))}"
        ) from None
    backend: type[Backend] = import_module(module).BACKEND
    return backend
