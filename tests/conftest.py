"""Shared test set-up."""

from __future__ import annotations

import signal

import pytest


@pytest.fixture(scope="session", autouse=True)
def ctrl_c_raises():
    """A real Ctrl-C raises KeyboardInterrupt, as in a terminal: a shell that starts pytest in
    the background hands it SIGINT ignored, and Python then keeps ignoring it, so the tests
    that send themselves SIGINT would see nothing."""
    previous = signal.getsignal(signal.SIGINT)
    if previous == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)
