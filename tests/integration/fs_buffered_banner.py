"""Preloaded by a fresh fork server: makes stdout buffered and prints without flushing."""

from __future__ import annotations

import sys

sys.stdout.reconfigure(write_through=False)  # type: ignore[union-attr]
print("banner from a preload", end="")
