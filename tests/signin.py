"""Session cookies of Gradio's mocked sign-in, for tests that are several people at once over raw HTTP.

The mocked sign-in (opted in with ``DREAMBOOTH_TEST_MOCK_SIGNIN``) signs the ``session`` cookie with a key derived
from an empty secret, so anyone can make one: exactly why the app refuses that sign-in outside tests.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time

import itsdangerous


def session_cookie(username: str, secret: str = "") -> str:
    """A ``session`` cookie for ``username``, signed as Gradio's SessionMiddleware signs it (key from ``secret``)."""
    key = hashlib.sha256((secret + "-v4").encode()).hexdigest()
    info = {"oauth_info": {"access_token": "t", "expires_at": time.time() + 3600,
                           "userinfo": {"preferred_username": username, "name": username, "profile": "", "picture": ""}}}  # fmt: skip
    data = base64.b64encode(json.dumps(info).encode())
    return itsdangerous.TimestampSigner(key).sign(data).decode()
