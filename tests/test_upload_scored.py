"""What the upload sends to the model repo: the scored checkpoints' weights, never the resumable training state.
Against the Hub emulator with the real huggingface_hub client."""

from __future__ import annotations

from huggingface_hub import HfApi

from training.spec import OutputRepo
from training.upload import upload_outputs


def test_the_scored_checkpoints_are_uploaded_and_the_training_state_is_not(hub, tmp_path):
    out = tmp_path / "output"
    kept = out / "checkpoints" / "step-000100"
    kept.mkdir(parents=True)
    for path in (out / "pytorch_lora_weights.safetensors", kept / "pytorch_lora_weights.safetensors",
                 kept / "pytorch_lora_weights_kohya.safetensors", out / "scores.json"):  # fmt: skip
        path.write_bytes(b"weights")
    # resumable state that must never reach the model repo, wherever it lands in the output folder
    for path in (kept / "optimizer.safetensors", kept / "trainable.safetensors", out / "optimizer.json",
                 out / "state.json", out / "scores.tmp"):  # fmt: skip
        path.write_bytes(b"state")
    upload_outputs(out, OutputRepo(repo_id="alice/scored-upload"), attempts=1)
    files = set(HfApi().list_repo_files("alice/scored-upload"))
    assert {"pytorch_lora_weights.safetensors", "scores.json", "checkpoints/step-000100/pytorch_lora_weights.safetensors",
            "checkpoints/step-000100/pytorch_lora_weights_kohya.safetensors"} <= files  # fmt: skip
    assert not {f for f in files if f.rsplit("/", 1)[-1] in
                ("optimizer.safetensors", "trainable.safetensors", "optimizer.json", "state.json", "scores.tmp")}


def test_a_bare_name_is_uploaded_to_the_tokens_account_also_when_it_exists(hub, tmp_path):
    """A local run with HF_TOKEN keeps the form's bare name (``dreambooth-sks-dog``): the repo is created in the
    token's account and the files go there, the first time and again once it exists (the Hub's 409 answer)."""
    out = tmp_path / "output"
    out.mkdir()
    (out / "pytorch_lora_weights.safetensors").write_bytes(b"weights")
    for _ in range(2):
        url = upload_outputs(out, OutputRepo(repo_id="bare-upload"), attempts=1)
        assert url.endswith("/alice/bare-upload")
    assert "pytorch_lora_weights.safetensors" in HfApi().list_repo_files("alice/bare-upload")
