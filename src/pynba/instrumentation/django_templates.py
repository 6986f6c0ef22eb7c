"""Django templates: each render of a template, one timer (``group=render``, ``template=``).

``django.template.base.Template.render`` is hooked: the one method every
render of Django's template language goes through, whether through
``render()``, ``render_to_string()``, a ``TemplateResponse`` or a
``Template`` made by hand. The templates a render extends or includes are
part of its timer (see ``_templates``), named after the outer template.
"""

from __future__ import annotations

from ._hooks import Patches
from ._templates import sync_hook

__all__ = ["instrument", "uninstrument"]

_patches = Patches()


def instrument() -> None:
    """Time the renders of every Django template (idempotent)."""
    if _patches.applied:
        return
    from django.template.base import Template  # type: ignore[import-untyped]

    _patches.replace(Template, "render", sync_hook)


def uninstrument() -> None:
    """Put Django's templates back as they were (idempotent)."""
    _patches.undo()
