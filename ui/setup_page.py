"""The page served instead of the app when the Space is not set up yet: what is wrong and exactly what to do.

It has no sign-in button and no handlers that write, so it builds and serves even with no token at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr


@dataclass(frozen=True)
class SetupProblem:
    """One thing that stops the app from working, and the steps that fix it."""

    title: str
    detail: str
    fix: str


def setup_markdown(problems: list[SetupProblem], space_id: str | None) -> str:
    """The setup instructions as Markdown."""
    where = f"https://huggingface.co/spaces/{space_id}/settings" if space_id else "the Space's Settings page"
    parts = [
        "# Setup needed",
        "This Space trains DreamBooth models on a GPU it rents for itself, so it needs a little configuration "
        f"first. Open [{where}]({where}) and fix the following; the Space restarts by itself after you save.",
    ]
    for i, p in enumerate(problems, 1):
        parts.append(f"## {i}. {p.title}\n{p.detail}\n\n**What to do:** {p.fix}")
    parts.append(
        "---\nWhy a token: the app commits your tasks to a private dataset repo, uploads the trained model, and "
        "moves its own Space between CPU and GPU. It never shows the token and never stores it in the queue."
    )
    return "\n\n".join(parts)


def build_setup_page(problems: list[SetupProblem], space_id: str | None) -> gr.Blocks:
    """A Blocks app that only explains the setup problems."""
    with gr.Blocks(title="DreamBooth trainer: setup needed") as demo:
        gr.Markdown(setup_markdown(problems, space_id), elem_id="setup")
    return demo
