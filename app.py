"""Entry point of the self-upgrading DreamBooth Space (placeholder until the app lands)."""

import gradio as gr

with gr.Blocks(title="DreamBooth trainer") as demo:
    gr.Markdown("# DreamBooth trainer\nThe training form arrives with the app issue.")

if __name__ == "__main__":
    demo.launch()
