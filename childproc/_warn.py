"""Warnings attributed to the application's line, never to childproc's own.

``warnings.warn(stacklevel=n)`` counts frames, and how many of childproc's lie
between the application and the warning depends on the way in: ``close()``
called directly, by an adapter's ``async with``, by ``run()``, by ``spawn()``
through an adapter. :func:`warn` walks out past every frame of the package (and
of :mod:`contextlib`, which runs the ``with`` blocks written as generators), so
the warning names the application's line whichever way it came.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings

__all__ = ["warn"]

_OURS = (os.path.dirname(os.path.abspath(__file__)) + os.sep, contextlib.__file__)


def warn(message: str, category: type[Warning]) -> None:
    """``warnings.warn(message, category)`` at the first frame outside childproc."""
    level = 2  # (1 is this function's frame; 2 its caller's)
    frame = sys._getframe(1)
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_OURS):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)
