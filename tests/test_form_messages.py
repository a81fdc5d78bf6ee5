"""What the Train form tells a newcomer: an out-of-range number is answered by the form's own message (the shared
bounds of ``contract.params``), once, never by Gradio's raw "Value 0 is less than minimum value 1."; the Base model
help names the model families the trainer's catalog lists.

The submit runs through the real Gradio app (local mode, served on a free port), joined the way the page joins it
(``gradio_api/queue/join`` and the session's event stream), so a message Gradio itself raises would show here.
"""

from __future__ import annotations

import json
import uuid

from app import create_app
from contract.params import PARAMS
from contract.settings import load_settings
from tests.polling import free_port
from tests.test_form import form_blocks, local_ctx
from tests.test_security import http, page_event
from ui.model_family import catalog_families


def page_submit(url: str, changes: dict[str, object]) -> tuple[dict, list[str]]:
    """Press Train as the page does, with the form's defaults but ``changes`` (by label): the completion message
    and every message shown on the way (toasts)."""
    config = json.loads(http(f"{url}config").body)
    dep = next(d for d in config["dependencies"] if d.get("api_name") == "submit")
    components = {c["id"]: c for c in config["components"]}
    data = []
    for cid in dep["inputs"]:
        props = components[cid].get("props", {})
        data.append(changes.get(props.get("label"), props.get("value")))
    return page_event(url, dep["id"], data, uuid.uuid4().hex)


def test_zero_steps_get_the_forms_message_naming_the_field_and_its_range_and_no_raw_gradio_one(tmp_path):
    app = create_app(load_settings({"DATA_DIR": str(tmp_path / "data")}))
    assert not app.problems
    port = free_port()
    app.demo.launch(prevent_thread_lock=True, **{**app.launch_options(), "server_port": port})
    try:
        steps_label = "Steps (auto from the photo count; editable)"
        done, shown = page_submit(f"http://127.0.0.1:{port}/", {steps_label: 0, "LoRA rank": 0,
                                                              "Instance prompt": "a photo of sks dog"})  # fmt: skip
    finally:
        app.close()
    assert done.get("success"), done  # answered by the handler, not refused by Gradio's own check
    answer = done["output"]["data"][0]
    answer = answer.get("value", answer) if isinstance(answer, dict) else answer
    steps, rank = PARAMS["steps"], PARAMS["rank"]
    assert f"{steps.label}: 0 is out of range; use {steps.span()}." in answer, answer
    assert f"{rank.label}: 0 is out of range; use {rank.span()}." in answer, answer
    assert answer.count(f"{steps.label}:") == 1  # once
    everything = json.dumps([done, shown])
    assert "less than minimum" not in everything and "minimum value" not in everything, everything
    assert app.worker.queue.list() == []


def test_the_base_model_help_names_every_family_of_the_catalog(tmp_path):
    families = catalog_families()
    assert {"sd", "flux1", "flux2-klein"} <= set(families)  # the built-in ones, at least
    help_text = form_blocks(local_ctx(tmp_path))["Base model"].info
    assert all(f.label in help_text for f in families.values()), help_text
    assert "Stable Diffusion pipeline" not in help_text
    assert "model_index.json" in help_text and "demo model" in help_text  # locally the demo model is said too
