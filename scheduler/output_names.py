"""Output repo names: made from the subject's trigger token and class, and never an existing repo of someone else.

The form (``ui.form``, ``ui.submission``) and the CLI (``python -m scheduler submit``) name and check a task's output
repo here, so both give the same task the same repo; and both name local mode's submitter ``LOCAL_USER``.

``subject_name("a photo of sks dog")`` is ``dreambooth-sks-dog``. Before a task is queued, ``choose_output_repo``
checks that the repo does not exist, or that this app made it for the same subject (its model card, written by
``training/card.py``, carries the ``dreambooth`` tag and the same ``instance_prompt``; or a queued task names the
same repo and prompt); otherwise it picks the first free ``-2``, ``-3``, ... name and says so. ``write_problem``
checks at submit that the token that uploads (the Space's, the owner's) can create a repo in the chosen namespace, so
a model is never trained for a repo the upload cannot write.
"""

from __future__ import annotations

import re
import time
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from scheduler.task import Task

#: who submits in local mode, where nobody signs in (the person at the machine owns it): the form's user and the
#: CLI's submitter
LOCAL_USER = "local"
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
    """``alice/dreambooth-sks-dog`` from the trigger token and class (locally just the name). In another
    ``namespace`` than the user's own (a non-owner's models go to the owner's account, or ``OUTPUT_NAMESPACE``) the
    name starts with the user's: ``alice/bob-dreambooth-sks-dog``."""
    name = subject_name(prompt, class_prompt)  # "dreambooth-lora" when the prompt names nothing
    if local or not user:
        return name
    if namespace and namespace != user:
        return f"{namespace}/{user}-{name}"
    return f"{user}/{name}"


# ------------------------------------------------------------------------------ can the uploading token write it
WHOAMI_TTL_S = 300.0  # the Hub rate-limits whoami; a token's rights rarely change within minutes
_whoami_cache: weakref.WeakKeyDictionary[Any, tuple[float, dict]] = weakref.WeakKeyDictionary()


def token_can_write(info: Mapping[str, Any], namespace: str) -> bool:
    """Whether the token ``whoami()`` described as ``info`` can create a model repo in ``namespace``: a read token
    never; a fine-grained token where it has ``repo.write`` for that user or organization; else the token's own
    account and its organizations where its role is not "read"."""
    access = ((info.get("auth") or {}).get("accessToken")) or {}
    role = access.get("role")
    if role == "read":
        return False
    if role == "fineGrained":
        scoped = (access.get("fineGrained") or {}).get("scoped") or []
        return any((e.get("entity") or {}).get("name") == namespace and "repo.write" in (e.get("permissions") or [])
                   for e in scoped)  # fmt: skip
    if info.get("name") == namespace:
        return True
    return any(o.get("name") == namespace and o.get("roleInOrg", "write") != "read" for o in info.get("orgs") or [])


def whoami(api: Any, now: float | None = None) -> dict:
    """``api.whoami()``, remembered for ``WHOAMI_TTL_S`` per api object."""
    now = time.monotonic() if now is None else now
    try:
        cached = _whoami_cache.get(api)
    except TypeError:  # an api object that cannot be weakly referenced: no cache
        cached = None
    if cached is not None and now - cached[0] < WHOAMI_TTL_S:
        return cached[1]
    info = dict(api.whoami())
    try:
        _whoami_cache[api] = (now, info)
    except TypeError:
        pass
    return info


def write_problem(api: Any, repo_id: str, *, instead: str | None = None) -> str | None:
    """Why the token of ``api`` (the one that uploads: on a Space the owner's HF_TOKEN) cannot create ``repo_id``;
    None when it can (a bare name goes to the token's own account). ``instead``: a repo it can write, to suggest."""
    if "/" not in repo_id:
        return None
    namespace = repo_id.split("/")[0]
    try:
        info = whoami(api)
    except Exception as exc:  # noqa: BLE001 - unknown is refused: a model nobody can upload costs GPU time for nothing
        return f"Output model repo: could not ask the Hub what its token may write ({type(exc).__name__}); try again."
    if token_can_write(info, namespace):
        return None
    who = info.get("name") or "its owner"
    fix = f"use {instead}" if instead else f"choose a repo in {who}/ or in an organization the token can write"
    return (f"Output model repo: the token that uploads the model ({who}'s HF_TOKEN) cannot create repos in "
            f"{namespace}/, so the upload would be refused after training; {fix}, or give the token write access "
            f"to {namespace}.")  # fmt: skip
