"""Fixtures the integration tests share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from childproc import Context, SigchldOwner

from .kids import REAPING_MODES


@pytest.fixture(params=REAPING_MODES, ids=[m.name for m in REAPING_MODES])
def ctx(request: pytest.FixtureRequest) -> Iterator[Context]:
    """A context in each mode in which childproc reaps (a test file may define its own)."""
    with Context(request.param) as c:
        yield c


@pytest.fixture
def sel() -> Iterator[Context]:
    """A SELECTIVE_REAP context."""
    with Context(SigchldOwner.SELECTIVE_REAP) as c:
        yield c
