"""The Train form's Advanced settings: learning rate, LoRA rank and resolution (which follow the recipe and the base
model's family: ``ui.form.field_state``), and the schedule: learning-rate schedule, warm-up steps, min-SNR gamma.

The schedule fields start at the recipe's values: those its ``fixed_params`` set, shown read-only and marked "set by
this recipe" (the trainer applies them over the task's params, so the recipe wins), else the trainer's defaults
(``contract.params.SCHEDULE_DEFAULTS``; an SNR gamma of 0 is off, as Gradio's number field shows "none"). A recipe
change sets them to the new recipe's values, except a field the user edited since that the new recipe does not fix.
Their bounds are the shared ones (``contract.params``), checked at submit (``scheduler.validation``) and by the
trainer (``training.spec``).

"Score checkpoints" (``params.score``, on by default) follows the same rules: the recipe's value, read-only when
its ``fixed_params`` set it. The task always carries it (``ui.submission.build_task``). "Write captions"
(``params.auto_captions``, off by default) is the user's alone: a recipe change leaves it as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr

from contract.params import LR_SCHEDULER_CHOICES, LR_SCHEDULER_LABEL, PARAMS, SCHEDULE_DEFAULTS
from scheduler.validation import CAPTIONS_LABEL, SCORE_LABEL
from training.demo import DEMO_RESOLUTION
from ui.model_family import FORM_RANK, EditCounts, edited, mark_applied
from ui.submission import CAPTIONS_FIELD, SCHEDULE_FIELDS, SCORE_DEFAULT, SCORE_FIELD

if TYPE_CHECKING:
    from contract.catalog import RecipeInfo

RESOLUTIONS = [256, 512, 768, 1024]
SCHEDULE_HELP = {
    "lr_scheduler": "How the rate changes: constant, or decaying to 0 by the last step (linear, cosine, polynomial).",
    "lr_warmup_steps": "The rate rises from 0 over these first steps (at most a fifth of all steps).",
    "snr_gamma": "Min-SNR loss weighting, e.g. 5; 0: off. Stable Diffusion models only (Flux ignores it).",
}
SCORE_HELP = (
    "Scores every sample point and the base model (subject and prompt fidelity), and gives you the best "
    "checkpoint. Adds a few images per sample point."
)
CAPTIONS_HELP = (
    "Before training, a vision-language model describes each photo that has no .txt caption of its own (the "
    "trigger word kept). The captions are shown in the Run and Results tabs and saved with the model as .txt files. "
    "Adds a few seconds per photo."
)
SET_BY_RECIPE = " Set by this recipe."
#: the Advanced settings the user may edit (the first ones a recipe may fix), in ``AdvancedParts.settings`` order
ADVANCED_FIELDS = (*SCHEDULE_FIELDS, SCORE_FIELD, CAPTIONS_FIELD)


@dataclass
class AdvancedParts:
    """The Advanced settings' components."""

    learning_rate: gr.Number
    rank: gr.Number
    resolution: gr.Dropdown
    fixed_note: gr.Markdown
    lr_scheduler: gr.Dropdown
    lr_warmup_steps: gr.Number
    snr_gamma: gr.Number
    score: gr.Checkbox
    captions: gr.Checkbox

    @property
    def schedule(self) -> list[Any]:
        """The schedule fields, in ``SCHEDULE_FIELDS`` order."""
        return [self.lr_scheduler, self.lr_warmup_steps, self.snr_gamma]

    @property
    def settings(self) -> list[Any]:
        """The schedule fields, the score box and the captions box, in ``ADVANCED_FIELDS`` order."""
        return [*self.schedule, self.score, self.captions]


def resolution_choices(local: bool) -> list[tuple[str, int]]:
    """The resolutions offered; locally the demo model's own first (the choices never change: a value outside the
    choices the server knows would be refused)."""
    demo = [(f"{DEMO_RESOLUTION} (demo model only)", DEMO_RESOLUTION)] if local else []
    return [*demo, *((str(r), r) for r in RESOLUTIONS)]


def schedule_state(info: RecipeInfo | None, keep: tuple[str, ...] | list[str] = ()) -> list[dict[str, Any]]:
    """Constructor arguments of the schedule fields (``SCHEDULE_FIELDS`` order) for recipe ``info``: the recipe's
    value, read-only where its ``fixed_params`` set it; a field named in ``keep`` keeps its value unless fixed."""
    fixed = dict(info.fixed_params) if info else {}
    out: list[dict[str, Any]] = []
    for name in SCHEDULE_FIELDS:
        kwargs: dict[str, Any] = {"interactive": name not in fixed,
                                  "info": SCHEDULE_HELP[name] + (SET_BY_RECIPE if name in fixed else "")}  # fmt: skip
        if name in fixed or name not in keep:
            value = fixed.get(name, SCHEDULE_DEFAULTS[name])
            kwargs["value"] = 0 if name == "snr_gamma" and value is None else value  # off, as the browser shows it
        out.append(kwargs)
    return out


def schedule_updates(info: RecipeInfo | None, touched: EditCounts | None,
                     applied: EditCounts | None) -> tuple[list[Any], EditCounts]:  # fmt: skip
    """The schedule fields' updates for a newly chosen recipe ``info`` (the fields the user edited keep their value
    where the recipe does not fix them), and the ``applied`` counts with the fields it set."""
    keep = [n for n in SCHEDULE_FIELDS if edited(n, touched, applied)]
    state = schedule_state(info, keep)
    done = mark_applied(applied, touched, [n for n, kw in zip(SCHEDULE_FIELDS, state, strict=True) if "value" in kw])
    scheduler, warmup, gamma = state
    choices = list(LR_SCHEDULER_CHOICES)  # the same choices, so the value is known to be one
    return [gr.Dropdown(choices=choices, **scheduler), gr.Number(**warmup), gr.Number(**gamma)], done


def score_state(info: RecipeInfo | None, keep: bool = False) -> dict[str, Any]:
    """Constructor arguments of the "Score checkpoints" box for recipe ``info``: the recipe's value, read-only where
    its ``fixed_params`` set it, else on (unless ``keep``: the user's value stays)."""
    fixed = dict(info.fixed_params) if info else {}
    is_fixed = SCORE_FIELD in fixed
    kwargs: dict[str, Any] = {"interactive": not is_fixed, "info": SCORE_HELP + (SET_BY_RECIPE if is_fixed else "")}
    if is_fixed or not keep:
        kwargs["value"] = fixed.get(SCORE_FIELD, SCORE_DEFAULT)
    return kwargs


def advanced_updates(info: RecipeInfo | None, touched: EditCounts | None,
                     applied: EditCounts | None) -> tuple[list[Any], EditCounts]:  # fmt: skip
    """``schedule_updates``, the score box's update and none for the captions box (``ADVANCED_FIELDS`` order) for a
    newly chosen recipe."""
    schedule, done = schedule_updates(info, touched, applied)
    score = score_state(info, keep=edited(SCORE_FIELD, touched, done))
    if "value" in score:
        done = mark_applied(done, touched, [SCORE_FIELD])
    return [*schedule, gr.Checkbox(**score), gr.skip()], done


def advanced_values(lr_scheduler: Any, warmup: Any, gamma: Any, score: Any, captions: Any = False) -> dict[str, Any]:
    """The Advanced settings' values as the submission's ``values`` (``schedule_values``, ``score`` and the captions
    box as sent: the validator names a value that is not true or false)."""
    return {**schedule_values(lr_scheduler, warmup, gamma), SCORE_FIELD: score, CAPTIONS_FIELD: captions}


def schedule_values(lr_scheduler: Any, warmup: Any, gamma: Any) -> dict[str, Any]:
    """The schedule fields' values as the submission's ``values`` (empty numbers, and an SNR gamma of 0 (off): None,
    the trainer's default)."""
    snr_gamma = form_number(gamma, float)
    return {"lr_scheduler": lr_scheduler or None, "lr_warmup_steps": form_number(warmup),
            "snr_gamma": None if snr_gamma == 0 else snr_gamma}  # fmt: skip


def build_advanced(local: bool, first: list[dict[str, Any]], resolution: int, info: RecipeInfo | None) -> AdvancedParts:
    """Render the Advanced accordion: ``first`` holds the constructor arguments of learning rate, rank, resolution
    and the recipe's note (``ui.form.field_state`` without the steps), ``resolution`` the default size, ``info`` the
    first recipe."""
    scheduler, warmup, gamma = schedule_state(info)
    with gr.Accordion("Advanced", open=False):
        with gr.Row():
            learning_rate = gr.Number(label="Learning rate", min_width=140, **first[0])
            rank = gr.Number(label="LoRA rank", precision=0, min_width=100, **{"value": FORM_RANK, **first[1]})
            res = gr.Dropdown(label="Resolution (px)", min_width=120, choices=resolution_choices(local),
                              **{"value": resolution, **first[2]})  # fmt: skip
        with gr.Row(elem_id="schedule-settings"):
            lr_scheduler = gr.Dropdown(label=LR_SCHEDULER_LABEL, choices=list(LR_SCHEDULER_CHOICES), min_width=160,
                                       **scheduler)  # fmt: skip
            lr_warmup_steps = gr.Number(label=PARAMS["lr_warmup_steps"].label, precision=0, min_width=140, **warmup)
            snr_gamma = gr.Number(label=PARAMS["snr_gamma"].label, min_width=140, **gamma)
        with gr.Row():
            score = gr.Checkbox(label=SCORE_LABEL, elem_id="score-checkpoints", **score_state(info))
            captions = gr.Checkbox(label=CAPTIONS_LABEL, value=False, info=CAPTIONS_HELP, elem_id="write-captions")
        fixed_note = gr.Markdown(**first[3])
    return AdvancedParts(learning_rate, rank, res, fixed_note, lr_scheduler, lr_warmup_steps, snr_gamma, score,
                         captions)  # fmt: skip


def form_number(value: Any, kind: type = int) -> Any:
    """Numbers from the form as ``kind``; other values pass through for the validator to name."""
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return value
    return int(number) if kind is int and number.is_integer() else number
