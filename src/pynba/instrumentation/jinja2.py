"""Jinja2: each render of a template, one timer (``group=render``, ``template=`` its name).

``Template.render`` and ``Template.render_async`` are hooked (Flask's
``render_template`` among their callers). The templates a render includes,
imports or extends are part of its timer, as Jinja2 renders them inside it.
``generate()`` and ``stream()`` are not timed: their output is consumed,
piece by piece, by code that is not the template's. Tags: see ``_templates``.
"""

from __future__ import annotations

from ._hooks import Patches
from ._templates import async_hook, sync_hook

__all__ = ["instrument", "uninstrument"]

_patches = Patches()


def instrument() -> None:
    """Time the renders of every Jinja2 template (idempotent)."""
    if _patches.applied:
        return
    import jinja2

    _patches.replace(jinja2.Template, "render", sync_hook)
    _patches.replace(jinja2.Template, "render_async", async_hook)


def uninstrument() -> None:
    """Put Jinja2 back as it was (idempotent)."""
    _patches.undo()
