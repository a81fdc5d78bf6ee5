"""Test-wide set-up: Hub client environment pointing at the emulator, and the CI rule for prerequisites.

``HF_ENDPOINT`` is read by huggingface_hub at import time, so the emulator's port is chosen here, before any test
module imports the client; the session-wide emulator fixture (tests/fakehub/fixtures.py) binds that port.
"""

from __future__ import annotations

import os
import tempfile

import pytest

from tests.polling import free_port

EMULATOR_PORT = free_port()
TEST_HF_HOME = tempfile.mkdtemp(prefix="hf-home-")
# Fake tokens, deliberately not shaped like real Hub tokens.
ALICE_TOKEN = "hf_fake_alice_write"
BOB_TOKEN = "hf_fake_bob_write"
# The one test-only opt-in to Gradio's mocked sign-in for Space-mode apps (a real Space has the platform's OAuth).
MOCK_SIGNIN = {"DREAMBOOTH_TEST_MOCK_SIGNIN": "1"}

os.environ.update(
    HF_ENDPOINT=f"http://127.0.0.1:{EMULATOR_PORT}",
    HF_TOKEN=ALICE_TOKEN,
    HF_HOME=TEST_HF_HOME,
    HF_HUB_DISABLE_TELEMETRY="1",
    HF_HUB_DISABLE_XET="1",
    HF_HUB_DISABLE_PROGRESS_BARS="1",
    HF_HUB_DISABLE_UPDATE_CHECK="1",
    HF_HUB_DISABLE_EXPERIMENTAL_WARNING="1",
    GRADIO_ANALYTICS_ENABLED="False",
    NO_PROXY="127.0.0.1,localhost",
    # No scoring model (contract.scores): a run scores its validation loss only and makes no image for the scores,
    # which keeps the many tiny runs that are not about scores fast; the real scoring models cannot be downloaded
    # here. Tests about image scores ask for the fixed pixel embedding (the ``pixel_scoring`` fixture) or a tiny
    # scoring model themselves.
    SCORING_DINO_MODEL="none",
    SCORING_CLIP_MODEL="none",
)
for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HUGGINGFACE_CO_STAGING", "SPACE_ID", "SYSTEM"):
    os.environ.pop(var, None)

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need(condition: bool, reason: str) -> None:
    """Skip a test whose prerequisite is missing; under CI=true a missing prerequisite is a failure."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"missing prerequisite in CI: {reason}")
    pytest.skip(reason)


pytest_plugins = ["tests.fakehub.fixtures", "tests.tiny_models", "tests.tiny_scorers", "tests.tiny_captioner"]
