"""The training form: photos, prompts, model, recipe, hyper-parameters, hardware, estimate, output repo.

``submit`` validates everything first (nothing is stored on error), enqueues the task with its photos in one
atomic step and wakes the worker, which asks for the GPU.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from scheduler.flavors import FLAVORS, GPU_FLAVORS
from scheduler.task import Task
from scheduler.validation import submission_warnings, validate_submission
from ui.auth import access_for, is_owner, require_allowed
from ui.context import DEFAULT_LEARNING_RATE, AppContext
from ui.estimate import auto_steps, describe, estimate, hardware_label
from ui.limits import output_namespace, output_repo_problem, user_limit_problem

RESOLUTIONS = [256, 512, 768, 1024]
PROMPT_HELP = (
    "Name your subject with a rare token plus its class, e.g. **a photo of sks dog**. The rare token (`sks`, `zwx`, "
    "...) becomes your subject; use the same words when you generate images later."
)
CLASS_HELP = "Optional. E.g. `a photo of a dog`: enables prior preservation, so the model keeps knowing other dogs."
WORKER_REPLY_S = 8.0


@dataclass
class FormParts:
    """The form's components that other parts of the page update."""

    submit: gr.Button
    output_repo: gr.Textbox
    message: gr.Markdown


def hardware_choices() -> list[tuple[str, str]]:
    """GPU flavors, cheapest first, as (label with price, name)."""
    names = sorted(GPU_FLAVORS, key=lambda n: (FLAVORS[n].usd_per_hour, n))
    return [(hardware_label(n), n) for n in names]


def image_paths(files: Any) -> list[Path]:
    """Paths from a ``gr.File(file_count="multiple")`` value (strings or file objects)."""
    paths = []
    for item in files or []:
        paths.append(Path(item if isinstance(item, str) else getattr(item, "name", item)))
    return paths


def slug(text: str) -> str:
    """A repo-name-friendly version of a prompt."""
    words = re.sub(r"[^a-z0-9]+", "-", (text or "").lower()).strip("-")
    return "-".join(words.split("-")[:4]) or "subject"


def default_output_repo(user: str | None, prompt: str = "", local: bool = False, namespace: str | None = None) -> str:
    """``alice/dreambooth-a-photo-of-sks`` (locally just the name; ``namespace`` instead of the user when set)."""
    name = f"dreambooth-{slug(prompt)}" if prompt else "dreambooth-lora"
    return name if local or not user else f"{namespace or user}/{name}"


def build_task(ctx: AppContext, user: str, values: dict[str, Any]) -> Task:
    """The Task for a validated submission; ``params`` holds only keys the trainer knows."""
    recipe = values["recipe"]
    class_prompt = (values.get("class_prompt") or "").strip() or None
    params: dict[str, Any] = {
        "steps": int(values["steps"]),
        "learning_rate": float(values["learning_rate"]),
        "resolution": int(values["resolution"]),
        "prior_preservation": class_prompt is not None,
        "validation_prompts": [values["instance_prompt"].strip()],
    }
    if recipe == "dreambooth-lora":
        params["rank"] = int(values["rank"])
    return Task(
        instance_prompt=values["instance_prompt"].strip(),
        submitted_by=user,
        recipe=recipe,
        base_model=values["base_model"],
        class_prompt=class_prompt,
        params=params,
        hardware=values["hardware"],
        output_repo=values["output_repo"].strip(),
        private=bool(values["private"]),
        max_attempts=int(ctx.settings.max_attempts),
        deadline_s=float(ctx.settings.deadline_s),
    )


def validate(ctx: AppContext, images: list[Path], values: dict[str, Any], owner: bool = True) -> list[str]:
    """Every problem with the form's values (empty list: ready to enqueue). Non-owners get only the offered
    base models."""
    s = ctx.settings
    return validate_submission(
        instance_prompt=values["instance_prompt"],
        class_prompt=values.get("class_prompt") or None,
        images=images,
        hardware=values["hardware"],
        output_repo=values["output_repo"],
        steps=values["steps"],
        learning_rate=values["learning_rate"],
        rank=values["rank"],
        resolution=values["resolution"],
        base_model=values["base_model"],
        base_models=None if owner else list(s.base_models),  # the owner may name any model; others pick one offered
        recipe=values["recipe"],
        recipes=list(ctx.recipes),
        allow_cpu_training=bool(s.allow_cpu_training or s.local),
    )


def submit_task(ctx: AppContext, user: str, files: Any, values: dict[str, Any]) -> str:
    """Validate, enqueue and wake the worker; returns the Markdown answer for the user."""
    images = image_paths(files)
    if ctx.local:
        values = {**values, "hardware": values.get("hardware") or ctx.settings.train_hardware}
    owner = is_owner(ctx.settings, user)
    problems = validate(ctx, images, values, owner=owner)
    if not owner:  # what a non-owner may spend and write, checked with the rest so every problem shows at once
        tasks = ctx.queue.list()
        for problem in (user_limit_problem(ctx.settings, user, tasks),
                        output_repo_problem(ctx.settings, user, values["output_repo"].strip(), tasks, ctx.api)):  # fmt: skip
            if problem:
                problems.append(problem)
    if problems:
        return "**Nothing was queued. Please fix:**\n" + "\n".join(f"- {p}" for p in problems)
    task = ctx.queue.enqueue(build_task(ctx, user, values), images)
    remove_uploads(images)  # the queue holds the photos now; Gradio's upload copies go
    after = ctx.worker.status.loops
    ctx.worker.forget_refusal(task.id)
    ctx.worker.wake()
    ctx.worker.wait_for_loop(after, WORKER_REPLY_S)
    notes = "".join(f"\n\n_{w}_" for w in submission_warnings(len(images)))
    return queued_message(ctx, task) + notes


def remove_uploads(paths: list[Path]) -> None:
    """Delete Gradio's copies of uploaded files (and their hashed folders, once empty)."""
    for path in paths:
        path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            path.parent.rmdir()


def queued_message(ctx: AppContext, task: Task) -> str:
    """What happens next for a just-queued task."""
    count = task.images.count if task.images else 0
    head = f"**Task `{task.id}` queued** with {count} photos."
    if ctx.local:
        return head + " Training runs on this machine; follow it in the **Run** tab."
    status = ctx.worker.status.snapshot()
    hw = status.hardware
    if status.phase == "refused":
        return head + f" The GPU was not granted: {status.message}"
    if hw is not None and hw.current == task.hardware:
        return head + f" This Space already runs on {hardware_label(task.hardware)}: training starts shortly."
    return head + (
        f" The Space is moving to {hardware_label(task.hardware)}. It restarts there, so **this page will disconnect "
        "and reconnect** in a few minutes; the task is safe in the queue and its progress shows in the **Run** tab."
    )


def build_form(ctx: AppContext) -> FormParts:
    """Render the form inside the current Blocks and wire its events."""
    s = ctx.settings
    with gr.Column():
        files = gr.File(
            label="Photos of your subject (3 to 20; varied backgrounds and angles)",
            file_count="multiple",
            file_types=["image"],
            type="filepath",
        )
        preview = gr.Gallery(label="Preview", columns=6, height=180, object_fit="cover", interactive=False, visible=False)
        instance_prompt = gr.Textbox(label="Instance prompt", placeholder="a photo of sks dog", info=None)
        gr.Markdown(PROMPT_HELP)
        class_prompt = gr.Textbox(label="Class prompt (optional)", placeholder="a photo of a dog")
        gr.Markdown(CLASS_HELP)
        with gr.Row():
            base_model = gr.Dropdown(
                label="Base model",
                choices=list(s.base_models),
                value=s.default_base_model,
                allow_custom_value=True,
                min_width=240,
            )
            recipe = gr.Radio(
                label="Recipe",
                choices=[(label, name) for name, label in ctx.recipes.items()],
                value=next(iter(ctx.recipes)),
                min_width=240,
            )
        with gr.Row():
            steps = gr.Number(label="Steps (auto from the photo count; editable)", value=auto_steps(0), precision=0, minimum=1, min_width=160)
            hardware = gr.Dropdown(
                label="GPU",
                choices=hardware_choices(),
                value=s.train_hardware if s.train_hardware in GPU_FLAVORS else "t4-small",
                visible=not ctx.local,
                min_width=200,
            )
        with gr.Accordion("Advanced", open=False):
            with gr.Row():
                learning_rate = gr.Number(label="Learning rate", value=DEFAULT_LEARNING_RATE["dreambooth-lora"], min_width=140)
                rank = gr.Number(label="LoRA rank", value=4, precision=0, minimum=1, min_width=100)
                resolution = gr.Dropdown(label="Resolution (px)", choices=RESOLUTIONS, value=512, min_width=120)
        with gr.Row():
            output_repo = gr.Textbox(
                label="Output model repo" if not ctx.local else "Output name (uploaded only when HF_TOKEN is set)",
                value=default_output_repo(None, local=ctx.local),
                min_width=240,
            )
            private = gr.Checkbox(label="Private repo", value=True, min_width=120)
        initial = estimate(auto_steps(0), s.train_hardware if s.train_hardware in GPU_FLAVORS else "t4-small")
        estimate_md = gr.Markdown(describe(initial, ctx.local))
        submit = gr.Button("Train", variant="primary")
        message = gr.Markdown(elem_id="submit-message")

    def on_files(paths: Any) -> tuple[Any, Any]:
        found = [str(p) for p in image_paths(paths)]
        return gr.Gallery(value=found or None, visible=bool(found)), auto_steps(len(found))

    def on_recipe(name: str) -> Any:
        return DEFAULT_LEARNING_RATE.get(name, 1e-4)

    def on_estimate(n_steps: Any, flavor: str, name: str, res: Any, klass: str) -> str:
        try:
            est = estimate(int(n_steps or 0), flavor or s.train_hardware, recipe=name, resolution=int(res or 512),
                           prior_preservation=bool((klass or "").strip()))  # fmt: skip
        except (TypeError, ValueError):
            return ""
        return describe(est, ctx.local)

    files.change(on_files, files, [preview, steps], api_visibility="private", show_progress="hidden")
    recipe.change(on_recipe, recipe, learning_rate, api_visibility="private", show_progress="hidden")
    est_inputs = [steps, hardware, recipe, resolution, class_prompt]
    for comp in est_inputs:
        comp.change(on_estimate, est_inputs, estimate_md, api_visibility="private", show_progress="hidden")

    def submit_handler(
        files_value, instance, klass, model, recipe_name, n_steps, flavor, lr, rank_value, res, out_repo, is_private,
        profile: gr.OAuthProfile | None, request: gr.Request,
    ) -> tuple[str, Any]:  # fmt: skip
        access = require_allowed(s, profile, request)
        values = {
            "instance_prompt": instance or "",
            "class_prompt": klass or "",
            "base_model": model or "",
            "recipe": recipe_name,
            "steps": _number(n_steps),
            "hardware": flavor,
            "learning_rate": _number(lr, float),
            "rank": _number(rank_value),
            "resolution": _number(res),
            "output_repo": out_repo or "",
            "private": is_private,
        }
        answer = submit_task(ctx, access.user or "", files_value, values)
        kept = any(p.exists() for p in image_paths(files_value))  # a queued task's uploads are gone: clear the picker
        return answer, (gr.skip() if kept else None)

    submit.click(
        submit_handler,
        [files, instance_prompt, class_prompt, base_model, recipe, steps, hardware, learning_rate, rank, resolution,
         output_repo, private],  # fmt: skip
        [message, files],
        api_name="submit",
        api_visibility="private",
        concurrency_limit=1,
    )

    def on_prompt(prompt: str, current: str, profile: gr.OAuthProfile | None) -> Any:
        user = access_for(s, profile).user
        ns = output_namespace(s, user)
        generated = {default_output_repo(user, "", ctx.local, ns), default_output_repo(None, "", ctx.local)}
        if current and current not in generated and not current.startswith(f"{ns or user}/dreambooth-"):
            return gr.skip()
        return default_output_repo(user, prompt, ctx.local, ns)

    instance_prompt.blur(on_prompt, [instance_prompt, output_repo], output_repo, api_visibility="private", show_progress="hidden")
    return FormParts(submit=submit, output_repo=output_repo, message=message)


def _number(value: Any, kind: type = int) -> Any:
    """Numbers from the form as ``kind``; other values pass through for the validator to name."""
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return value
    return int(number) if kind is int and number.is_integer() else number
