"""pytest plugin: the ``pinba_listener`` fixture, registered by pynba's ``pytest11`` entry point.

A test takes ``pinba_listener`` (a ``pynba.testing.PinbaListener``), hands
its ``address`` to the code under test and asserts on
``pinba_listener.wait_for(1)[0].script_name`` and the like.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .testing import PinbaListener


@pytest.fixture
def pinba_listener() -> Iterator[PinbaListener]:
    """A ``pynba.testing.PinbaListener`` on a free loopback port, closed after the test."""
    with PinbaListener() as listener:
        yield listener
