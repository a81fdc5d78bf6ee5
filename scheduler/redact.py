"""Secrets never reach a page: every log line and error the UI shows passes through ``redact``."""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "***"
# Hugging Face tokens (user ``hf_...``, OAuth ``hf_oauth_...``), should a library echo one we do not hold.
TOKEN_PATTERN = re.compile(r"\bhf_[A-Za-z0-9_]{20,}\b")


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with each of ``secrets`` and anything shaped like a Hub token replaced by ``***``."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, MASK)
    return TOKEN_PATTERN.sub(MASK, text)
