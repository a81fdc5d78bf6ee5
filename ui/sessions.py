"""What Gradio keeps per browser tab, released when the tab closes.

Gradio keeps a session state for every tab that ran an event (``Blocks.state_holder``: the ``gr.State`` values and
a copy of the page's component config, a few hundred KB here) until it is pushed out by newer sessions
(``state_session_capacity``); a closed tab's ``gr.State`` values go an hour after it closed, its session never.
``forget_session`` drops it at once (from the page's unload event): a tab that comes back after a lost connection
starts from the page's defaults, as it does for its uploads (``ui.uploads``).
"""

from __future__ import annotations

from typing import Any


def forget_session(demo: Any, session: str | None) -> bool:
    """Drop ``session``'s state from ``demo``'s state holder; whether there was one (a Gradio without the holder:
    nothing to drop)."""
    holder = getattr(demo, "state_holder", None)
    sessions = getattr(holder, "session_data", None)
    if session is None or sessions is None:
        return False
    with holder.lock:
        dropped = sessions.pop(session, None) is not None
        getattr(holder, "time_last_used", {}).pop(session, None)
    return dropped
