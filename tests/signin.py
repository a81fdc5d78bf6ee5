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


def session_cookie(username: str, secret: str = "", *, token: str = "t", scope: str = "openid profile",
                   expires_in: float = 3600) -> str:  # fmt: skip
    """A ``session`` cookie for ``username``, signed as Gradio's SessionMiddleware signs it (key from ``secret``).
    ``token``, ``scope`` and the expiry are what a handler typed ``gr.OAuthToken`` receives (Gradio reads
    ``oauth_info["scope"]``, so a cookie without it breaks such handlers)."""
    key = hashlib.sha256((secret + "-v4").encode()).hexdigest()
    info = {"oauth_info": {"access_token": token, "scope": scope, "expires_at": time.time() + expires_in,
                           "userinfo": {"preferred_username": username, "name": username, "profile": "", "picture": ""}}}  # fmt: skip
    data = base64.b64encode(json.dumps(info).encode())
    return itsdangerous.TimestampSigner(key).sign(data).decode()
