"""Fixtures of the scheduler tests: ``queue`` runs each contract test on every backend."""

from __future__ import annotations

import pytest

from scheduler.queue.local import LocalQueue
from tests.conftest import ALICE_TOKEN, need
from tests.scheduler.queues import make_hub_queue


@pytest.fixture(params=["local", "hub"])
def queue(request, tmp_path):
    if request.param == "local":
        return LocalQueue(tmp_path / "queue")
    try:
        hub = request.getfixturevalue("hub")
    except pytest.FixtureLookupError:
        need(False, "the emulator's hub fixture (tests/fakehub) is not available")

    return make_hub_queue(hub, ALICE_TOKEN)
