"""What the distributed tests' spawned workers share (not a test module)."""

from __future__ import annotations

import os
import socket
import sys


def free_port() -> int:
    """A TCP port free on this machine now, for a group's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def leave_passed_worker() -> None:
    """End a worker that passed without interpreter finalisation: gloo's run-loop threads may
    still be freeing finished async work (ZeroRedundancyOptimizer's broadcasts, pylr's
    all_reduces) whose tensors need the GIL, and taking it during finalisation aborts the
    process after everything is done ("terminate called without an active exception", torch's
    own issue, pytorch/pytorch#179291). A failing worker exits through the normal path."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
