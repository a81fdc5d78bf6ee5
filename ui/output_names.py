"""Output repo names: made from the subject's trigger token and class, and never an existing repo of someone else.

``subject_name("a photo of sks dog")`` is ``dreambooth-sks-dog``. Before a task is queued, ``choose_output_repo``
checks that the repo does not exist, or that this app made it for the same subject (its model card, written by
``training/card.py``, carries the ``dreambooth`` tag and the same ``instance_prompt``; or a queued task names the
same repo and prompt); otherwise it picks the first free ``-2``, ``-3``, ... name and says so.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from scheduler.task import Task

# Words of a prompt that name neither the subject's token nor its class.
FILLER = frozenset(
    "a an the of in on at with and or by for to from photo photograph picture image portrait shot close up closeup "
    "style my our your this that sitting standing wearing high quality detailed".split()
)
MAX_WORD = 30
MAX_SUFFIX = 9  # -2 .. -9: beyond that the user picks a name
CARD_TAG = "dreambooth"  # training/card.py tags every card it writes with it


def _words(text: str | None) -> list[str]:
    return [w[:MAX_WORD] for w in re.findall(r"[a-z0-9]+", (text or "").lower()) if w not in FILLER]


def subject_words(instance_prompt: str, class_prompt: str | None = None) -> list[str]:
    """The trigger token and the class of a prompt: ``["sks", "dog"]`` for "a photo of sks dog". The class is the
    class prompt's last word when one is given, else the word after the token."""
    words = _words(instance_prompt)
    klass = _words(class_prompt)
    if klass:
        token = next((w for w in words if w not in klass), None)
        return [w for w in (token, klass[-1]) if w]
    return words[:2]


def subject_name(instance_prompt: str, class_prompt: str | None = None) -> str:
    """``dreambooth-sks-dog``; ``dreambooth-lora`` when the prompt names nothing."""
    words = subject_words(instance_prompt, class_prompt)
    return "dreambooth-" + "-".join(words) if words else "dreambooth-lora"


@dataclass(frozen=True)
class OutputChoice:
    """The repo a task will write and, when it differs from the one asked for, why."""

    repo_id: str
    note: str | None = None


def made_here(api: Any, repo_id: str, instance_prompt: str, tasks: Iterable[Task]) -> bool:
    """Whether this app made ``repo_id`` for this subject: a task of the queue names it with the same prompt, or its
    model card has the ``dreambooth`` tag and the same ``instance_prompt`` (one download of README.md)."""
    prompt = instance_prompt.strip()
    if any(t.output_repo == repo_id and t.instance_prompt.strip() == prompt for t in tasks):
        return True
    from huggingface_hub import ModelCard

    try:
        path = api.hf_hub_download(repo_id, "README.md", repo_type="model")
        data = ModelCard.load(path).data
    except Exception:  # noqa: BLE001 - no card (or an unreadable one): not made here
        return False
    tags = data.get("tags") or []
    return CARD_TAG in tags and str(data.get("instance_prompt") or "").strip() == prompt


def _with_suffix(repo_id: str, n: int) -> str:
    return f"{repo_id}-{n}"


def choose_output_repo(api: Any, repo_id: str, instance_prompt: str, tasks: Iterable[Task], *,
                       namespace: str | None = None) -> OutputChoice | str:  # fmt: skip
    """``repo_id`` if it is free or made here for this subject, else the first free ``-2`` .. ``-9`` name (with a
    note). A message (str) when none is free or the Hub cannot tell. ``namespace`` qualifies a bare local name
    (``dreambooth-sks-dog`` is uploaded to the token's account) for the checks; the answer keeps the form asked for.
    """
    tasks = list(tasks)
    for n in range(1, MAX_SUFFIX + 1):
        candidate = repo_id if n == 1 else _with_suffix(repo_id, n)
        full = candidate if "/" in candidate or not namespace else f"{namespace}/{candidate}"
        try:
            exists = api.repo_exists(full, repo_type="model")
        except Exception as exc:  # noqa: BLE001 - unknown is refused: never overwrite silently
            return f"Output model repo: could not check whether {full} exists ({type(exc).__name__}); try again."
        if not exists or made_here(api, full, instance_prompt, tasks):
            if n == 1:
                return OutputChoice(candidate)
            return OutputChoice(candidate, f"{repo_id} already exists and was not made by this app for this subject, "
                                           f"so this model goes to **{candidate}**.")  # fmt: skip
    return (f"Output model repo: {repo_id} and {repo_id}-2 to -{MAX_SUFFIX} already exist and were not made by this "
            "app for this subject; choose another name.")  # fmt: skip


def default_output_repo(user: str | None, prompt: str = "", local: bool = False, namespace: str | None = None,
                        class_prompt: str | None = None) -> str:  # fmt: skip
    """``alice/dreambooth-sks-dog`` from the trigger token and class (locally just the name; ``namespace``
    instead of the user when set)."""
    name = subject_name(prompt, class_prompt)  # "dreambooth-lora" when the prompt names nothing
    return name if local or not user else f"{namespace or user}/{name}"
