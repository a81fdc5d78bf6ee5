"""The Train form: photos, prompts, model, recipe, hyper-parameters, hardware, estimate, output repo.

The recipe choices, their "auto" steps and their fields come from the trainer's recipe catalog; in local mode the
built-in demo model is offered (and chosen on a machine without a GPU). Pressing Train runs ``ui.submission.submit``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr

from contract.catalog import FamilyInfo
from contract.flavors import FLAVORS, GPU_FLAVORS, JOBS_GPU_FLAVORS
from contract.scores import scoring_prompts
from scheduler.output_names import default_output_repo
from training.demo import DEMO_LABEL, DEMO_MODEL, DEMO_RESOLUTION, DEMO_STEPS
from training.recipe_base import clamp_steps
from ui.advanced import (
    ADVANCED_FIELDS,
    advanced_updates,
    advanced_values,
    build_advanced,
    form_number,
    resolution_choices,
)
from ui.auth import access_for, may_submit, require_allowed
from ui.caption_editor import build_caption_editor, wire_caption_editor
from ui.context import AppContext, default_recipe
from ui.estimate import auto_steps, describe, hardware_label, jobs_price, local_hardware
from ui.form_estimate import form_estimate, photos_to_caption, uses_jobs
from ui.limits import output_namespace
from ui.local_device import LocalDevice, local_device
from ui.model_family import (
    FORM_RANK,
    FORM_RESOLUTION,
    PHOTOS_LABEL,
    SD_FAMILY,
    EditCounts,
    base_model_help,
    edited,
    family_for,
    family_hardware,
    hardware_note,
    mark_applied,
    other_family,
    photos_label,
    toucher,
    training_image_count,
)
from ui.submission import DATASET_HELP, RECIPE_FIELDS, image_paths, lists_field, shown_uploads, submit
from ui.visitor_submit import VISITOR_JOBS_INFO, visitor_submit

if TYPE_CHECKING:
    from collections.abc import Collection

PROMPT_HELP = (
    "Name your subject with a rare token plus its class, e.g. **a photo of sks dog**. The rare token (`sks`, `zwx`, "
    "...) becomes your subject; use the same words when you generate images later."
)
CLASS_HELP = "Optional. E.g. `a photo of a dog`: enables prior preservation, so the model keeps knowing other dogs."


@dataclass
class FormParts:
    """The form's components that other parts of the page update."""

    submit: gr.Button
    output_repo: gr.Textbox
    message: gr.Markdown
    hardware: gr.Dropdown | None = None


def hardware_choices(jobs: bool = False, prices: dict[str, float] | None = None) -> list[tuple[str, str]]:
    """GPU flavors, cheapest first, as (label with price, name): the Space's GPU flavors, or with ``jobs`` the Jobs
    GPU flavors (H200 and RTX PRO 6000 included) at the Jobs price (``prices``: the Hub's, else the list price)."""
    if not jobs:
        names = sorted(GPU_FLAVORS, key=lambda n: (FLAVORS[n].usd_per_hour, n))
        return [(hardware_label(n), n) for n in names]
    names = sorted(JOBS_GPU_FLAVORS, key=lambda n: (jobs_price(n, prices), n))
    return [(hardware_label(n, jobs_price(n, prices)), n) for n in names]


def jobs_hardware_info(ctx: AppContext) -> str:
    """The hardware field's help in Jobs mode."""
    if getattr(ctx.settings, "visitor_pays", False):
        return VISITOR_JOBS_INFO
    return (f"This Space stays on CPU: each task trains on Hugging Face Jobs, {ctx.settings.max_parallel_jobs} at "
            "once (billed per minute; needs a positive credit balance).")  # fmt: skip


def base_model_choices(ctx: AppContext) -> list[tuple[str, str]]:
    """(label, value) of the offered base models; locally the demo model first."""
    offered = [(m, m) for m in ctx.settings.base_models]
    return [(DEMO_LABEL, DEMO_MODEL), *offered] if ctx.local else offered


def default_base_model(ctx: AppContext, device: LocalDevice) -> str:
    """The demo model locally on a machine without a GPU (unless BASE_MODELS / DEFAULT_BASE_MODEL name the
    models), else the configured default."""
    s = ctx.settings
    sources = s.sources()
    configured = sources.get("base_models") != "default" or sources.get("default_base_model") != "default"
    if ctx.local and not device.gpu and not configured:
        return DEMO_MODEL
    return s.default_base_model


def recipe_steps(ctx: AppContext, recipe: str | None, base_model: str | None, image_count: int,
                 family: FamilyInfo | None = None) -> int:  # fmt: skip
    """The "auto" steps: the demo model's own, else the chosen recipe's policy for ``image_count`` photos (with the
    model family's steps per photo when it has its own, within the recipe's limits)."""
    if base_model == DEMO_MODEL:
        return DEMO_STEPS
    info = ctx.recipes.get(recipe or "") or ctx.recipes[default_recipe(ctx.recipes)]
    per_image = family.defaults.steps_per_image if family is not None else None
    if per_image:
        return clamp_steps(image_count, per_image, info.min_steps, info.max_steps)
    return auto_steps(image_count, info)


def field_state(ctx: AppContext, recipe: str, base_model: str | None, image_count: int, resolution: Any,
                *, recipe_changed: bool = True, family: FamilyInfo | None = None,
                family_changed: bool = False) -> list[dict[str, Any]]:  # fmt: skip
    """Constructor arguments of steps, learning rate, rank, resolution and the "set by this recipe" note for
    ``recipe`` and ``base_model`` (of model family ``family`` when known).

    A field the recipe ignores is hidden; one it fixes shows the recipe's value read-only. The demo model brings
    its own resolution and steps. The learning rate is reset only when the recipe or the family changed (the
    family's own rate for a LoRA recipe, else the recipe's); rank and resolution only when the family changed (to
    the family's, else the form's 4 and 512 px)."""
    info = ctx.recipes.get(recipe)
    fixed = dict(info.fixed_params) if info else {}
    demo = base_model == DEMO_MODEL
    back_from_demo = not demo and form_number(resolution) == DEMO_RESOLUTION
    d = family.defaults if family is not None else None
    family_lr = d.learning_rate if d is not None and lists_field(info, "rank") else None
    learning_rate = family_lr or (info.default_learning_rate if info else None)
    family_resolution = (d.resolution if d is not None else None) or FORM_RESOLUTION
    values: dict[str, Any] = {
        "steps": recipe_steps(ctx, recipe, base_model, image_count, family),
        "learning_rate": learning_rate if recipe_changed or family_changed else None,
        "rank": ((d.rank if d is not None else None) or FORM_RANK) if family_changed else None,
        "resolution": DEMO_RESOLUTION if demo else (family_resolution if family_changed or back_from_demo else None),
    }
    out: list[dict[str, Any]] = []
    for name in RECIPE_FIELDS:
        kwargs: dict[str, Any] = {"visible": lists_field(info, name) or name in fixed, "interactive": name not in fixed}
        value = fixed.get(name, values[name])
        if value is not None:
            kwargs["value"] = value
        out.append(kwargs)
    note = ", ".join(f"{k.replace('_', ' ')} = {v}" for k, v in fixed.items())
    out.append({"value": f"_Set by this recipe: {note}._" if note else "", "visible": bool(note)})
    return out


def field_updates(ctx: AppContext, recipe: str, base_model: str | None, image_count: int, resolution: Any,
                  *, recipe_changed: bool = True, family: FamilyInfo | None = None, family_changed: bool = False,
                  keep: Collection[str] = ()) -> list[Any]:  # fmt: skip
    """``field_state`` as component updates (steps, learning rate, rank, resolution, note); the fields named in
    ``keep`` keep their value."""
    state = field_state(ctx, recipe, base_model, image_count, resolution, recipe_changed=recipe_changed,
                        family=family, family_changed=family_changed)  # fmt: skip
    for name, kwargs in zip(RECIPE_FIELDS, state, strict=False):
        if name in keep:
            kwargs.pop("value", None)
    steps, lr, rank, res, note = state
    res = {"choices": resolution_choices(ctx.local), **res}  # the same choices, so the value is known to be one
    return [gr.Number(**steps), gr.Number(**lr), gr.Number(**rank), gr.Dropdown(**res), gr.Markdown(**note)]


def values_set(updates: list[Any]) -> list[str]:
    """The fields (of ``RECIPE_FIELDS``) whose value ``field_updates``' ``updates`` set."""
    return [n for n, u in zip(RECIPE_FIELDS, updates, strict=False) if "value" in getattr(u, "constructor_args", {})]


@dataclass(frozen=True)
class HardwareChoice:
    """The hardware field's default (``gpu_default``) and offered flavors, for ``follow_base_model``."""

    gpu_default: str
    offered: Collection[str]


#: the fields a base model's defaults may set, in the order ``APPLY_DEFAULTS_JS`` receives them
FOLLOWED_FIELDS = (*RECIPE_FIELDS, "hardware")
#: The last step of a base-model change, run in the browser: each proposed default replaces a field's value only if
#: the field still shows what it showed when the base model changed (the user typed nothing meanwhile). Done there,
#: not in the server's reply, so no answer arriving late can overwrite what was just typed.
APPLY_DEFAULTS_JS = (
    "(proposal, snapshot, ...current) => " + json.dumps(list(FOLLOWED_FIELDS)) + ".map((name, i) =>"
    " (proposal && name in proposal && Array.isArray(snapshot) && snapshot[i] === current[i])"
    " ? proposal[name] : current[i])"
)
SNAPSHOT_JS = "(...values) => [values]"


def follow_base_model(ctx: AppContext, recipe: str, base_model: str | None, image_count: int, resolution: Any,
                      family: FamilyInfo | None, applied_family: str | None, touched: EditCounts | None,
                      applied: EditCounts | None, choice: HardwareChoice,
                      *, model_changed: bool = True) -> tuple[dict[str, Any], str | None, EditCounts]:  # fmt: skip
    """The defaults the form proposes for a base model of family ``family`` (None: unknown), as field name ->
    value (``FOLLOWED_FIELDS``), with the family whose defaults the fields then hold and the new ``applied`` counts.

    A family other than ``applied_family`` brings its defaults (hardware, resolution, learning rate, rank, steps);
    the same or an unknown family changes what a model change changed before (the auto steps, the demo model's
    size). A field the user edited since its last default (``touched`` / ``applied``) is left out.
    ``model_changed`` False (the page's first load): nothing but a new family's defaults."""
    changed = family is not None and family.name != applied_family
    if not model_changed and not changed:
        return {}, applied_family, dict(applied or {})
    state = field_state(ctx, recipe, base_model, image_count, resolution, recipe_changed=False, family=family,
                        family_changed=changed)  # fmt: skip
    proposal = {n: kw["value"] for n, kw in zip(RECIPE_FIELDS, state, strict=False) if "value" in kw}
    if proposal.get("resolution") not in [v for _, v in resolution_choices(ctx.local)]:
        proposal.pop("resolution", None)  # a family's size the form does not offer: the field keeps its own
    if changed:
        proposal["hardware"] = family_hardware(ctx.settings, family, choice.offered, choice.gpu_default)
    proposal = {n: v for n, v in proposal.items() if not edited(n, touched, applied)}
    return proposal, family.name if changed else applied_family, mark_applied(applied, touched, proposal)


def recipe_choices(ctx: AppContext) -> list[tuple[str, str]]:
    """(label, name) of the catalog's recipes, the default one first."""
    first = default_recipe(ctx.recipes)
    names = [first, *(n for n in ctx.recipes if n != first)]
    return [(ctx.recipes[n].label, n) for n in names]


def build_form(ctx: AppContext) -> FormParts:
    """Render the form inside the current Blocks and wire its events."""
    s = ctx.settings
    device = local_device(ctx.worker) if ctx.local else None
    first_model = default_base_model(ctx, device or LocalDevice(True, "GPU"))
    first_recipe = default_recipe(ctx.recipes)
    first = field_state(ctx, first_recipe, first_model, 0, None)
    demo = first_model == DEMO_MODEL
    jobs = uses_jobs(ctx)
    offered = JOBS_GPU_FLAVORS if jobs else GPU_FLAVORS
    gpu_default = s.train_hardware if s.train_hardware in offered else "t4-small"
    with gr.Column():
        files = gr.File(
            label=PHOTOS_LABEL,
            file_count="multiple",
            file_types=["image", ".txt"],  # .txt: per-image captions (ui.submission)
            type="filepath",
            elem_id="photos",
        )
        preview = gr.Gallery(label="Preview", columns=6, height=180, object_fit="cover", interactive=False, visible=False,
                             elem_id="photo-preview")  # fmt: skip
        editor = build_caption_editor(ctx.local)  # local mode: "Write captions now" and the table to edit them
        dataset = gr.Textbox(label="Or a Hub dataset", placeholder="user/my-photos", info=DATASET_HELP, elem_id="dataset")
        instance_prompt = gr.Textbox(label="Instance prompt", placeholder="a photo of sks dog", info=None)
        gr.Markdown(PROMPT_HELP)
        class_prompt = gr.Textbox(label="Class prompt (optional)", placeholder="a photo of a dog")
        gr.Markdown(CLASS_HELP)
        with gr.Row():
            base_model = gr.Dropdown(
                label="Base model",
                choices=base_model_choices(ctx),
                value=first_model,
                allow_custom_value=True,
                info=base_model_help(s, ctx.local),
                min_width=240,
            )
            recipe = gr.Radio(
                label="Recipe",
                choices=recipe_choices(ctx),
                value=first_recipe,
                min_width=240,
            )
        with gr.Row():
            steps = gr.Number(label="Steps (auto from the photo count; editable)", precision=0,
                              min_width=160, **first[0])  # fmt: skip
            hardware = gr.Dropdown(
                label="GPU (a Hugging Face Job)" if jobs else "GPU",
                choices=hardware_choices(jobs, ctx.worker.status.snapshot().job_prices if jobs else None),
                value=gpu_default,
                visible=not ctx.local,
                info=jobs_hardware_info(ctx) if jobs else None,
                min_width=200,
                elem_id="hardware-choice",
            )
            hw_note = gr.Markdown(visible=False, elem_id="hardware-note", min_height=0)
        adv = build_advanced(ctx.local, first[1:], DEMO_RESOLUTION if demo else FORM_RESOLUTION,
                             ctx.recipes.get(first_recipe))  # fmt: skip
        learning_rate, rank, resolution, fixed_note = adv.learning_rate, adv.rank, adv.resolution, adv.fixed_note
        with gr.Row():
            output_repo = gr.Textbox(
                label="Output model repo" if not ctx.local else "Output name (uploaded only when HF_TOKEN is set)",
                value=default_output_repo(None, local=ctx.local),
                min_width=240,
            )
            private = gr.Checkbox(label="Private repo", value=True, min_width=120)
        estimate_md = gr.Markdown(elem_id="estimate")
        with gr.Row():
            submit_button = gr.Button("Train", variant="primary")
            again = gr.Button("Queue it again", variant="secondary", visible=False, elem_id="queue-again")
        message = gr.Markdown(elem_id="submit-message")

    field_outputs = [steps, learning_rate, rank, resolution, fixed_note]
    # The base model's family (None: unknown), the family whose defaults the fields hold, and per field the count of
    # the user's edits (``.input``) and that count when a default was last set: an edited field keeps its value.
    family_state = gr.State(None)
    # What the followed fields showed when the base model changed, and the defaults proposed for it (browser-side).
    snapshot, proposal = gr.JSON(visible=False), gr.JSON(visible=False)
    applied_family = gr.State(SD_FAMILY)
    touched, applied = gr.State({}), gr.State({})
    choice = HardwareChoice(gpu_default, offered)

    def on_files(paths: Any, name: str, model: str, family: FamilyInfo | None, edits: EditCounts,
                 done: EditCounts, counted: list[str] | None, request: gr.Request) -> tuple[Any, ...]:  # fmt: skip
        found = [str(p) for p in image_paths(shown_uploads(ctx, request, paths))]  # this tab shows them (ui.uploads)
        if found == counted:  # the same photos, only their .txt changed (``ui.caption_editor``): the steps stay
            return gr.skip(), gr.skip(), done, counted
        steps_value = recipe_steps(ctx, name, model, training_image_count(found, family), family)
        gallery = gr.Gallery(value=found or None, visible=bool(found))
        return gallery, steps_value, mark_applied(done, edits, ["steps"]), found

    def on_recipe(name: str, model: str, paths: Any, res: Any, family: FamilyInfo | None, edits: EditCounts,
                  done: EditCounts) -> list[Any]:  # fmt: skip
        updates = field_updates(ctx, name, model, training_image_count(image_paths(paths), family), res, family=family)
        settings, done = advanced_updates(ctx.recipes.get(name), edits, done)  # the recipe's schedule and scoring
        return [*updates, *settings, mark_applied(done, edits, values_set(updates))]

    def on_family(model: str, profile: gr.OAuthProfile | None) -> FamilyInfo | None:  # Hub lookups: allowed callers
        return family_for(s, access_for(s, profile), model, warn=gr.Warning)

    def follow(model_changed: bool) -> Callable[..., tuple[Any, ...]]:
        def handle(name: str, model: str, paths: Any, res: Any, family: FamilyInfo | None, holds: str | None,
                   edits: EditCounts, done: EditCounts) -> tuple[Any, ...]:  # fmt: skip
            count = training_image_count(image_paths(paths), family)
            return follow_base_model(ctx, name, model, count, res, family, holds, edits, done, choice,
                                     model_changed=model_changed)  # fmt: skip

        return handle

    def on_hardware(model: str, flavor: str, profile: gr.OAuthProfile | None = None) -> Any:
        note = "" if ctx.local else hardware_note(s, model, flavor, access_for(s, profile))
        return gr.Markdown(value=note, visible=bool(note))

    def on_estimate(n_steps: Any, flavor: str, name: str, res: Any, klass: str, model: str, score: Any = True,
                    captions: Any = False, photos: Any = None, profile: gr.OAuthProfile | None = None) -> str:  # fmt: skip
        where = local_hardware(device) if device is not None else (flavor or s.train_hardware)
        family = other_family(family_for(s, access_for(s, profile), model, fetch=False))  # found by the model's change
        try:
            prior = bool((klass or "").strip())
            # the form's one validation prompt is the instance prompt: the count does not depend on its words
            images = len(scoring_prompts("x", klass.strip() if prior else None, ["x"])) if score is not False else 0
            images = 0 if family is not None and family.edits else images  # an edit: its validation loss only
            est = form_estimate(ctx, int(n_steps or 0), where, name, int(res or 512), prior, model,
                                family.name if family else None, scoring_images=images,
                                captioned_photos=photos_to_caption(captions, photos))  # fmt: skip
        except (TypeError, ValueError):
            return ""
        label = family.label if family else None
        if jobs:
            status = ctx.worker.status.snapshot()
            return describe(est, ctx.local, device, job_usd_per_hour=jobs_price(where, status.job_prices),
                            jobs_prices_source=status.job_prices_source, family_label=label)  # fmt: skip
        return describe(est, ctx.local, device, family_label=label)

    wire_caption_editor(ctx, editor, files, instance_prompt, class_prompt, "cuda" if device and device.gpu else "cpu")
    private_event = {"api_visibility": "private", "show_progress": "hidden"}
    # The page load's events (and the base model's change) compute for every tab at once, unqueued: a crowd opening
    # the page gets no queue-position message each (``ui.layout.REFRESH_EVENT``).
    load_event = {**private_event, "concurrency_limit": None}
    counted = gr.State(None)  # the photos the auto steps last counted
    files.change(on_files, [files, recipe, base_model, family_state, touched, applied, counted],
                 [preview, steps, applied, counted], **private_event)  # fmt: skip
    recipe.change(on_recipe, [recipe, base_model, files, resolution, family_state, touched, applied],
                  [*field_outputs, *adv.settings, applied], **private_event)  # fmt: skip
    est_inputs = [steps, hardware, recipe, resolution, class_prompt, base_model, adv.score, adv.captions, files]
    followed = [steps, learning_rate, rank, resolution, hardware]  # FOLLOWED_FIELDS
    follow_inputs = [base_model, recipe, files, resolution, applied_family, touched, applied]
    follow_outputs = [family_state, proposal, applied_family, applied]

    def family_then_follow(model_changed: bool) -> Callable[..., tuple[Any, ...]]:
        """One event: the base model's family (``on_family``) and the defaults it proposes (``follow``)."""
        follow_handle = follow(model_changed)

        def on_family_defaults(model: str, name: str, paths: Any, res: Any, holds: str | None, edits: EditCounts,
                               done: EditCounts, profile: gr.OAuthProfile | None) -> tuple[Any, ...]:  # fmt: skip
            family = on_family(model, profile)
            return (family, *follow_handle(name, model, paths, res, family, holds, edits, done))

        return on_family_defaults

    def after_defaults(model: str, flavor: str, family: FamilyInfo | None, n_steps: Any, name: str, res: Any,
                       klass: str, score: Any, captions: Any, photos: Any,
                       profile: gr.OAuthProfile | None) -> tuple[Any, ...]:  # fmt: skip
        """One event once the defaults are applied: the hardware note, the estimate and the upload box's label."""
        estimate_text = on_estimate(n_steps, flavor, name, res, klass, model, score, captions, photos, profile)
        return on_hardware(model, flavor, profile), estimate_text, photos_label(family)

    after_inputs = [base_model, hardware, family_state, steps, recipe, resolution, class_prompt, adv.score,
                    adv.captions, files]  # fmt: skip

    def then_defaults(event: Any, model_changed: bool) -> None:
        """After ``event`` (which set ``snapshot``): the family (a Hub request the first time) and the defaults it
        proposes (without the fields edited before), applied in the browser to the fields not edited meanwhile,
        then the hardware note, the estimate and the upload's label: two server events (a page load's are few)."""
        event.then(family_then_follow(model_changed), follow_inputs, follow_outputs, **load_event).then(
            None, [proposal, snapshot, *followed], followed, js=APPLY_DEFAULTS_JS, **private_event
        ).then(after_defaults, after_inputs, [hw_note, estimate_md, files], **load_event)

    then_defaults(base_model.change(None, followed, snapshot, js=SNAPSHOT_JS, **private_event), True)
    for name, comp in (("steps", steps), ("learning_rate", learning_rate), ("rank", rank), ("resolution", resolution),
                       ("hardware", hardware), *zip(ADVANCED_FIELDS, adv.settings, strict=True)):  # fmt: skip
        comp.input(toucher(name), touched, touched, **private_event)
    hardware.change(on_hardware, [base_model, hardware], hw_note, **private_event)
    for comp in est_inputs:
        comp.change(on_estimate, est_inputs, estimate_md, **private_event)
    initial = (steps.value, hardware.value, first_recipe, resolution.value, "", first_model, adv.score.value, False)
    estimate_md.value = on_estimate(*initial)
    # Again at each page load (once): the runs finished since the app started change it.
    if first_model != DEMO_MODEL:  # the first base model's family: its defaults when it is not the SD family's
        shown = json.dumps([c.value for c in followed])  # what the page shows at load: the snapshot, in the page
        then_defaults(gr.on(None, None, None, snapshot, js=f"() => [{shown}]", **private_event), False)
    else:
        gr.on(None, lambda: on_estimate(*initial), None, estimate_md, **load_event)

    def values_of(instance, klass, model, recipe_name, n_steps, flavor, lr, rank_value, res, out_repo, is_private) -> dict[str, Any]:  # fmt: skip
        return {
            "instance_prompt": instance or "",
            "class_prompt": klass or "",
            "base_model": model or "",
            "recipe": recipe_name,
            "steps": form_number(n_steps),
            "hardware": flavor,
            "learning_rate": form_number(lr, float),
            "rank": form_number(rank_value),
            "resolution": form_number(res),
            "output_repo": out_repo or "",
            "private": is_private,
        }

    def answer(files_value: Any, values: dict[str, Any], profile: gr.OAuthProfile | None, request: gr.Request, confirm: bool, token: gr.OAuthToken | None = None) -> tuple[Any, ...]:  # fmt: skip
        if getattr(s, "visitor_pays", False):  # the visitor's own token pays (``ui.visitor_submit``); never the Space's
            outcome = visitor_submit(ctx, files_value, values, profile, token, request)
        else:
            user = require_allowed(s, profile, request).user or ""
            outcome = submit(ctx, user, files_value, values, confirm=confirm, session=request.session_hash)
        if outcome.queued:  # the uploads are gone: clear the picker; Train waits for a change (no double task)
            return outcome.message, None, gr.Button(interactive=False), gr.Button(visible=False)
        return outcome.message, gr.skip(), gr.Button(interactive=True), gr.Button(visible=outcome.confirm)

    def submit_handler(confirm: bool) -> Callable[..., tuple[Any, ...]]:
        """The Train handler (``confirm``: the "Queue it again" one). Gradio fills ``profile``, ``request`` and ``token`` from
        the annotations, so the signature is written out once, here."""

        def handle(
            files_value, dataset_value, instance, klass, model, recipe_name, n_steps, flavor, lr, rank_value, res, out_repo,
            is_private, sched, warmup, gamma, score, captions, profile: gr.OAuthProfile | None, request: gr.Request,
            token: gr.OAuthToken | None,
        ) -> tuple[Any, ...]:  # fmt: skip
            args = (instance, klass, model, recipe_name, n_steps, flavor, lr, rank_value, res, out_repo, is_private)
            values = {**values_of(*args), **advanced_values(sched, warmup, gamma, score, captions), "dataset": dataset_value or ""}
            return answer(files_value, values, profile, request, confirm=confirm, token=token)

        return handle

    submit_inputs = [files, dataset, instance_prompt, class_prompt, base_model, recipe, steps, hardware, learning_rate, rank,
                     resolution, output_repo, private, *adv.settings]  # fmt: skip
    submit_outputs = [message, files, submit_button, again]
    submit_button.click(submit_handler(confirm=False), submit_inputs, submit_outputs, api_name="submit", api_visibility="private",
                        concurrency_limit=1, concurrency_id="submit")  # fmt: skip
    again.click(submit_handler(confirm=True), submit_inputs, submit_outputs, api_name="submit_again", api_visibility="private",
                concurrency_limit=1, concurrency_id="submit")  # fmt: skip

    def on_edit(profile: gr.OAuthProfile | None) -> tuple[Any, Any]:
        """Something changed after a submit: Train again (for those allowed), no pending "Queue it again"."""
        return gr.Button(interactive=may_submit(s, access_for(s, profile))), gr.Button(visible=False)

    edits = [files.upload, files.clear, files.delete, instance_prompt.input, class_prompt.input, base_model.input,
             recipe.input, steps.input, hardware.input, learning_rate.input, rank.input, resolution.input,
             output_repo.input, private.input, dataset.input, *(c.input for c in adv.settings)]  # fmt: skip
    for event in edits:  # in the submits' queue: an edit made before Train is answered before it, never after
        event(on_edit, None, [submit_button, again], api_visibility="private", show_progress="hidden",
              concurrency_limit=1, concurrency_id="submit")  # fmt: skip

    def on_prompt(prompt: str, klass: str, current: str, profile: gr.OAuthProfile | None) -> Any:
        user = access_for(s, profile).user
        ns = output_namespace(s, user)
        generated = {default_output_repo(user, "", ctx.local, ns), default_output_repo(None, "", ctx.local)}
        prefix = "dreambooth-" if ctx.local or not user else f"{ns or user}/dreambooth-"
        if current and current not in generated and not current.startswith(prefix):
            return gr.skip()
        return default_output_repo(user, prompt, ctx.local, ns, class_prompt=klass)

    for box in (instance_prompt, class_prompt):
        box.blur(on_prompt, [instance_prompt, class_prompt, output_repo], output_repo, api_visibility="private",
                 show_progress="hidden")  # fmt: skip
    return FormParts(submit=submit_button, output_repo=output_repo, message=message, hardware=hardware)

