"""Train in the visitor-pays mode (``BILLING=visitor``, issue 25): the signed-in visitor's own token pays.

The form's values are checked as for any non-owner (``ui.submission.validate``: offered base models, photo limits)
and made into the same Task (``build_task``); the task goes to the visitor's private queue repo and runs as a Job in
their namespace (``scheduler.visitor_queue``). The Space's token, queue and worker are never used here, and the
visitor's token lives only for this request: it is never stored, logged or put into an answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from contract.text import md_code, md_text
from scheduler import visitor_queue as vq
from scheduler.retry import http_status
from scheduler.task import Task
from scheduler.validation import split_captions, uncaptioned_images
from scheduler.visitor_token import VisitorToken, VisitorTokenError, fix_for, missing_scopes, read_visitor_token
from training.base_check import probe_base_model
from ui.auth import Access, access_for, require_same_site
from ui.context import AppContext
from ui.estimate import format_duration
from ui.fit_check import check_fit
from ui.form_estimate import form_estimate
from ui.submission import (
    CAPTIONS_FIELD,
    SubmitOutcome,
    build_task,
    nothing_queued,
    pairs_problems,
    remove_uploads,
    uploaded_paths,
    validate,
)

PAYS = ("Each visitor trains on **their own** Hugging Face Jobs credit: the Job runs in your account and is billed "
        "to you, and your photos and model stay in private repos of your account.")  # fmt: skip

#: the form's hardware help when visitors pay
VISITOR_JOBS_INFO = ("Your task trains as a Hugging Face Job in your own account, billed per minute to your Jobs credit "
                     "(it needs a positive balance); this Space stays on CPU.")  # fmt: skip


def visitor_banner(settings: Any, access: Access, oauth: gr.OAuthToken | None) -> str:
    """The page's banner in the visitor-pays mode: who pays and, when the sign-in lacks a scope, what to do (one
    whoami request for a signed-in visitor)."""
    if access.user is None or oauth is None:
        return f"Sign in with Hugging Face to train. {PAYS}"
    head = f"Signed in as **{md_text(access.user)}**. {PAYS}"
    try:
        visitor = read_visitor_token(oauth, endpoint=settings.hf_endpoint)
    except VisitorTokenError as exc:
        return f"{head}\n\n**{exc.reason}** {exc.fix}"
    missing = missing_scopes(visitor)
    return f"{head}\n\n**Training is not possible yet.** {fix_for(missing)}" if missing else head


def _refused(problem: str) -> SubmitOutcome:
    return SubmitOutcome(nothing_queued([problem]))


def visitor_submit(ctx: AppContext, files: Any, values: dict[str, Any], profile: gr.OAuthProfile | None,
                   oauth: gr.OAuthToken | None, request: gr.Request | None = None) -> SubmitOutcome:  # fmt: skip
    """Queue the form's task in the visitor's own repo and start its Job with their token; the answer names the task,
    the Job (or why it waits, and the fix) and the model repo. Anonymous callers get a ``gr.Error``: nothing spends."""
    s = ctx.settings
    require_same_site(s, request)
    access = access_for(s, profile)
    token = getattr(oauth, "token", None)
    if access.user is None or not token:
        raise gr.Error("Sign in with Hugging Face first: each visitor trains on their own Jobs credit.",
                       title="Not signed in")  # fmt: skip
    try:
        visitor = read_visitor_token(oauth, endpoint=s.hf_endpoint)
    except VisitorTokenError as exc:
        return _refused(f"{exc.reason} {exc.fix}")
    if visitor.username != access.user:
        return _refused("Your sign-in's token belongs to another account. Sign out and sign in again.")
    if missing := missing_scopes(visitor):
        return _refused(fix_for(missing))
    uploads = uploaded_paths(files)
    images, captions = split_captions(uploads)
    if (values.get("dataset") or "").strip():
        return _refused("Training from a Hub dataset is not offered yet when visitors pay: upload the photos instead.")
    problems = validate(ctx, images, values, owner=False, captions=captions)
    if problems:
        return SubmitOutcome(nothing_queued(problems))
    try:
        probe = probe_base_model(values["base_model"], token=token, endpoint=s.hf_endpoint)
    except Exception as exc:  # noqa: BLE001 - "could not check" is an answer, never a crash
        return _refused(f"Base model: {values['base_model']!r} could not be checked ({_why(exc)}); try again.")
    if probe.problem is not None:
        return _refused(f"Base model: {probe.problem.message}")
    problems = pairs_problems(probe, images, values.get(CAPTIONS_FIELD))
    task = build_task(ctx, visitor.username, values)
    fits = check_fit(task, probe)
    if problems or fits.problem:
        return SubmitOutcome(nothing_queued([*problems, *([fits.problem] if fits.problem else [])]))
    try:
        task = vq.submit(token, visitor, s, task, uploads, needed_s=expected_s(ctx, task, uploads))
    except vq.VisitorRefused as exc:
        return _refused(f"{exc.reason} {exc.fix}")
    except Exception as exc:  # noqa: BLE001 - the Hub's failure is told; the message never holds the token
        return _refused(f"The Hub did not take your task ({_why(exc)}); nothing was started. Try again.")
    remove_uploads(ctx.uploads.take(getattr(request, "session_hash", None), uploads))
    return SubmitOutcome(queued_answer(task, visitor, _dispatch(token, visitor, ctx, task), s.deadline_s), task=task)


def expected_s(ctx: AppContext, task: Task, uploads: list[Path]) -> float:
    """The run's expected seconds as the form's estimate says them (training, start-up and upload, scoring, the
    captions of the ``uploads``' photos without a ``.txt``): a deadline shortened to fit the visitor's sign-in leaves
    it room (``fitted_deadline``)."""
    p = task.params
    captioned = len(uncaptioned_images(uploads)) if p.get(CAPTIONS_FIELD) else 0
    est = form_estimate(ctx, int(p.get("steps") or 0), task.hardware, task.recipe, int(p.get("resolution") or 512),
                        bool(task.class_prompt), task.base_model, captioned_photos=captioned)  # fmt: skip
    return est.total_s


def _why(exc: BaseException) -> str:
    """The kind of a failure and its HTTP status: never its message (it could quote a request)."""
    status = http_status(exc)
    return type(exc).__name__ + (f", HTTP {status}" if status else "")


def _dispatch(token: str, visitor: VisitorToken, ctx: AppContext, task: Task) -> vq.Dispatched:
    try:
        return vq.dispatch(token, visitor, ctx.settings, task.id)
    except vq.VisitorRefused as exc:
        return vq.Dispatched(task.id, note=f"{exc.reason} {exc.fix}")


def queued_answer(task: Task, visitor: VisitorToken, sent: vq.Dispatched, deadline_s: float) -> str:
    """What the visitor is told: their task, its Job (or why it waits and the fix), a deadline shortened from the
    Space's ``deadline_s`` to fit their sign-in, their model repo."""
    count = task.images.count if task.images else 0
    head = (f"**Task `{task.id}` queued** with {count} photo{'' if count == 1 else 's'} in your private repo "
            f"{md_code(vq.visitor_queue_repo(visitor.username))}.")  # fmt: skip
    if sent.job_id:
        job = f" It trains as Hugging Face Job `{sent.job_id}` in your account ({task.hardware}), billed to your credit."
    else:
        job = f" **Its Job was not started.** {sent.note or ''}"
    if task.deadline_s < deadline_s:
        job += (f" Its deadline is {format_duration(task.deadline_s)} instead of {format_duration(deadline_s)}, so that "
                "it ends before your sign-in expires.")  # fmt: skip
    return f"{head}{job}\n\nYour model goes to the private repo {md_code(task.output_repo)}."
