"""Issue 21 item 1 (at submit): an allowed non-owner's model goes to a repo the Space's token can write.

The Space uploads with its owner's token, which cannot write a visitor's own namespace: their models default to the
owner's account, named after them (``alice/bob-dreambooth-sks-dog``), and a repo in a namespace the token cannot
write is refused before anything is queued (it used to train, then fail the upload with 403 and train again).
Real emulator, real huggingface_hub, real queue; nothing is mocked.
"""

from __future__ import annotations

import uuid

import pytest
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError

from scheduler.output_names import default_output_repo, token_can_write, write_problem
from tests.conftest import ALICE_TOKEN
from tests.test_form import photos, space_ctx, values
from ui.limits import output_namespace
from ui.submission import submit


@pytest.fixture
def team(hub, tmp_path, tiny_sd, monkeypatch):
    """alice's Space, which bob may use, offering the tiny test model."""
    import ui.submission

    monkeypatch.setattr(ui.submission, "WORKER_REPLY_S", 0.1)  # the worker is not started: do not wait for it
    return space_ctx(hub, tmp_path, ALLOWED_USERS="alice,bob", BASE_MODELS=str(tiny_sd))


def bob_values(tiny_sd, prompt: str, **changes):
    return values(instance_prompt=prompt, base_model=str(tiny_sd), resolution=256, **changes)


def test_a_non_owners_default_repo_is_one_the_spaces_token_can_write(team, tmp_path, tiny_sd):
    prompt = f"a photo of sks{uuid.uuid4().hex[:4]} dog"
    repo = default_output_repo("bob", prompt, namespace=output_namespace(team.settings, "bob"))
    assert repo.startswith("alice/bob-dreambooth-sks"), repo  # the owner's account, the user's name in the repo's
    assert write_problem(team.api, repo) is None
    outcome = submit(team, "bob", photos(tmp_path), bob_values(tiny_sd, prompt, output_repo=repo))
    assert outcome.queued, outcome.message
    assert outcome.task.output_repo == repo
    HfApi(endpoint=team.settings.hf_endpoint, token=ALICE_TOKEN).create_repo(repo)  # the upload's first step works
    # Where it used to go, the owner's token cannot write: the upload of a trained model was refused (403).
    with pytest.raises(HfHubHTTPError) as refused:
        HfApi(endpoint=team.settings.hf_endpoint, token=ALICE_TOKEN).create_repo(f"bob/{repo.split('/')[1]}")
    assert refused.value.response.status_code == 403


def test_a_repo_the_spaces_token_cannot_write_is_refused_at_submit(team, tmp_path, tiny_sd):
    prompt = f"a photo of sks{uuid.uuid4().hex[:4]} dog"
    typed = submit(team, "bob", photos(tmp_path), bob_values(tiny_sd, prompt, output_repo="bob/my-model"))
    assert not typed.queued and "Nothing was queued" in typed.message
    assert "alice/bob-" in typed.message and "owner's token" in typed.message, typed.message
    # Another user's prefix in the owner's account is refused too.
    other = submit(team, "bob", photos(tmp_path), bob_values(tiny_sd, prompt, output_repo="alice/carol-model"))
    assert not other.queued and "named bob-..." in other.message, other.message
    # The owner typing a namespace the token cannot write is told before training, not after.
    owner = submit(team, "alice", photos(tmp_path), bob_values(tiny_sd, prompt, output_repo="bob/alices-model"))
    assert not owner.queued and "cannot create repos in bob/" in owner.message, owner.message
    assert team.queue.list() == []


def test_an_output_namespace_the_token_cannot_write_is_refused_with_the_fix(hub, tmp_path, tiny_sd, monkeypatch):
    import ui.submission

    monkeypatch.setattr(ui.submission, "WORKER_REPLY_S", 0.1)
    ctx = space_ctx(hub, tmp_path, ALLOWED_USERS="alice,bob", BASE_MODELS=str(tiny_sd), OUTPUT_NAMESPACE="bob-org")
    prompt = f"a photo of sks{uuid.uuid4().hex[:4]} dog"
    repo = default_output_repo("bob", prompt, namespace=output_namespace(ctx.settings, "bob"))
    assert repo.startswith("bob-org/bob-dreambooth-")
    outcome = submit(ctx, "bob", photos(tmp_path), bob_values(tiny_sd, prompt, output_repo=repo))
    assert not outcome.queued and "cannot create repos in bob-org/" in outcome.message
    assert "give the token write access to bob-org" in outcome.message
    # An organization the token may write is fine.
    ok = space_ctx(hub, tmp_path / "org", ALLOWED_USERS="alice,bob", BASE_MODELS=str(tiny_sd), OUTPUT_NAMESPACE="alice-org")
    repo = default_output_repo("bob", prompt, namespace=output_namespace(ok.settings, "bob"))
    assert submit(ok, "bob", photos(tmp_path), bob_values(tiny_sd, prompt, output_repo=repo)).queued


@pytest.mark.parametrize(
    ("access", "orgs", "namespace", "writable"),
    [
        ({"role": "write"}, [], "alice", True),
        ({"role": "read"}, [], "alice", False),
        ({"role": "write"}, [{"name": "team", "roleInOrg": "read"}], "team", False),
        ({"role": "write"}, [{"name": "team", "roleInOrg": "contributor"}], "team", True),
        ({"role": "write"}, [], "bob", False),
        ({"role": "fineGrained", "fineGrained": {"scoped": [{"entity": {"type": "user", "name": "alice"},
                                                             "permissions": ["repo.content.read"]}]}}, [], "alice", False),  # fmt: skip
        ({"role": "fineGrained", "fineGrained": {"scoped": [{"entity": {"type": "org", "name": "team"},
                                                             "permissions": ["repo.write"]}]}}, [], "team", True),  # fmt: skip
    ],
)
def test_what_a_token_may_write_is_read_from_whoami(access, orgs, namespace, writable):
    info = {"name": "alice", "orgs": orgs, "auth": {"type": "access_token", "accessToken": access}}
    assert token_can_write(info, namespace) is writable
