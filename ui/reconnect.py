"""The page follows a restart of its app (a Space moving between CPU and GPU hardware): a banner, then a reload.

A Space restarts on every hardware switch, and Gradio's page then shows "Connection to the server was lost" for
good. ``head_html()`` goes into the page's ``<head>`` (``launch(head=...)``) with this process's ``BOOT_ID``. Its
script asks the app (GETs relative to the page) every ``POLL_S`` seconds while the tab is visible: a tiny
``gradio_api/info`` answer while all is well, the config after an outage and every ``CONFIG_EVERY`` polls. The config carries the head, so it names the boot id of the process that answers:

- no answer, or not the app's (an error page of the Spaces proxy): show ``BANNER_TEXT``;
- the same boot id: the app is still there (hide the banner if shown);
- another boot id: a new process serves the app, so reload the page into it.

While the banner shows, Gradio's own toasts ("Connection Lost ... Attempting reconnection") are hidden
(``RESTARTING_CLASS`` on ``<html>``, ``STYLE``): the banner says what happens. An error toast makes the script ask
the app at once, so the banner replaces Gradio's toast within one request instead of one poll.
"""

from __future__ import annotations

import json
import uuid

#: this process's id, different after each start of the app
BOOT_ID = uuid.uuid4().hex
POLL_S = 5.0
CONFIG_EVERY = 6  # every 6th poll (30 s) reads the config (116 KB here) even when the app answered each time
TIMEOUT_S = 20.0  # a busy app (training on the same cores) may answer slowly; that is not a restart
BANNER_ID = "restart-banner"
BANNER_TEXT = (
    "The Space is restarting (moving between CPU and GPU hardware). This page reloads by itself when the app is "
    "back, usually within a minute or a few."
)
#: in local mode nothing switches hardware: the app was restarted (or stopped) by whoever runs it
LOCAL_BANNER_TEXT = "The app is not answering (restarted or stopped?). This page reloads by itself when it is back."
MARKER = "app-boot-id"
RESTARTING_CLASS = "app-restarting"
#: Gradio 6's toasts live in ``.toast-wrap`` (its Toast component); hidden while the restart banner shows
STYLE = f"html.{RESTARTING_CLASS} .toast-wrap {{ display: none !important; }}"

SCRIPT = """
(() => {
  const BOOT = %(boot)s, MARKER = %(marker)s, TEXT = %(text)s, BANNER_ID = %(banner_id)s, CLASS = %(css_class)s;
  const POLL_MS = %(poll_ms)d, TIMEOUT_MS = %(timeout_ms)d, CONFIG_EVERY = %(config_every)d;
  if (window.__appReconnect) return;  // the head may be inserted more than once
  const state = window.__appReconnect = { boot: BOOT, polls: 0, down: false };
  let busy = false;
  function banner(show) {
    let el = document.getElementById(BANNER_ID);
    document.documentElement.classList.toggle(CLASS, show);  // hides Gradio's "Connection Lost" toast meanwhile
    if (!show) { if (el) el.hidden = true; return; }
    if (!el) {
      el = document.createElement("div");
      el.id = BANNER_ID;
      el.setAttribute("role", "status");
      el.setAttribute("aria-live", "polite");
      el.textContent = TEXT;
      // At the bottom, so the header stays readable.
      el.style.cssText = "position:fixed;bottom:0;left:0;right:0;z-index:10000;padding:14px 16px;background:#fef3c7;" +
        "color:#78350f;border-top:2px solid #f59e0b;font:600 15px/1.4 system-ui,sans-serif;text-align:center;" +
        "box-shadow:0 -2px 8px rgba(0,0,0,.15)";
      document.body.appendChild(el);
    }
    el.hidden = false;
  }
  function appUrl(path) {
    const cfg = window.gradio_config || {};
    const root = /^https?:/.test(cfg.root || "") ? cfg.root.replace(/\\/?$/, "/") : new URL(".", location.href).toString();
    return new URL(path, root).toString();
  }
  async function getJson(path) {  // null when there is no JSON answer (down, or an error page of the proxy)
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), TIMEOUT_MS);
    try {
      const resp = await fetch(appUrl(path), { cache: "no-store", credentials: "same-origin", signal: abort.signal });
      return resp.ok ? await resp.json() : null;
    } catch (e) { return null; } finally { clearTimeout(timer); }
  }
  async function check(full) {
    if (busy) return;
    busy = true;
    try {
      state.polls += 1;
      const prefix = ((window.gradio_config || {}).api_prefix || "/gradio_api").replace(/^\\//, "");
      // A tiny answer while all is well; the config (it carries the head, so the boot id) after an outage, now
      // and then (a restart between two polls), and when the tab is shown again.
      const alive = (await getJson(prefix + "/info")) !== null;
      if (!alive) { state.down = true; banner(true); return; }
      if (!full && !state.down) return;
      const config = await getJson("config");
      const head = config && typeof config.head === "string" && config.head.includes(MARKER) ? config.head : null;
      if (head === null) { state.down = true; banner(true); return; }
      if (head.includes(BOOT)) { state.down = false; banner(false); return; }
      banner(true);
      location.reload();  // a new process serves the app
    } finally { busy = false; }
  }
  setInterval(() => { if (!document.hidden) check(state.polls %% CONFIG_EVERY === CONFIG_EVERY - 1); }, POLL_MS);
  document.addEventListener("visibilitychange", () => { if (!document.hidden) check(true); });
  let toastSeen = null;  // Gradio shows an error toast when a call fails: ask the app now rather than at the next poll
  new MutationObserver(() => {
    const toast = document.querySelector(".toast-wrap .toast-body.error");
    if (toast && toast !== toastSeen) { toastSeen = toast; check(false); }
  }).observe(document.documentElement, { childList: true, subtree: true });
})();
"""


def head_html(*, local: bool = False, boot_id: str = BOOT_ID, poll_s: float = POLL_S, timeout_s: float = TIMEOUT_S) -> str:
    """``<meta>`` naming the boot id, and the watching script (all values JSON-quoted into it)."""
    text = LOCAL_BANNER_TEXT if local else BANNER_TEXT
    values = {"boot": json.dumps(boot_id), "marker": json.dumps(MARKER), "text": json.dumps(text),
              "banner_id": json.dumps(BANNER_ID), "css_class": json.dumps(RESTARTING_CLASS),
              "poll_ms": int(poll_s * 1000), "timeout_ms": int(timeout_s * 1000), "config_every": CONFIG_EVERY}  # fmt: skip
    return f'<meta name="{MARKER}" content="{boot_id}">\n<style>{STYLE}</style>\n<script>{SCRIPT % values}</script>'
