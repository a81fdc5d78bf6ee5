"""Scenario 11 of issue 6: after the other fault scenarios (this file sorts last), no token value is found in
anything the emulator stored (queue files, checkpoints, model repos and cards, commit messages), in the Spaces'
captured logs, in the containers' data folders (trainers' work folders, task files, logs) or in the UI text the
scenarios captured."""

from __future__ import annotations

import pytest

from tests.conftest import ALICE_TOKEN, BOB_TOKEN
from tests.faults.space import CAPTURED_TEXT, SPACE_FOLDERS

pytestmark = pytest.mark.slow

TOKENS = (ALICE_TOKEN, BOB_TOKEN)


def test_11_no_token_in_stored_files_logs_work_folders_or_ui_text(fakehub):
    scanned = {"stored": 0, "files": 0, "ui": 0}
    for name, data in fakehub.stored_bytes():
        scanned["stored"] += 1
        for token in TOKENS:
            assert token.encode() not in data, f"token in stored {name}"
    for folder in SPACE_FOLDERS:  # the containers' data folders, the trainers' work folders and the Space logs
        for path in folder.rglob("*"):
            if path.is_file():
                scanned["files"] += 1
                data = path.read_bytes()
                for token in TOKENS:
                    assert token.encode() not in data, f"token in {path}"
    for log in fakehub.root.rglob("*.log"):
        scanned["files"] += 1
        for token in TOKENS:
            assert token not in log.read_text(errors="replace"), f"token in {log}"
    for text in CAPTURED_TEXT:
        scanned["ui"] += 1
        for token in TOKENS:
            assert token not in text
    if SPACE_FOLDERS:  # run with the other scenarios: the scan must have covered their output
        assert scanned["stored"] > 50 and scanned["files"] > 50, scanned
