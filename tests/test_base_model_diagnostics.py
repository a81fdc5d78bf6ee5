"""The set-up diagnostics' check of the offered base models (``scheduler.diagnostics``), with the real
huggingface_hub client against the Hub emulator, and the owner's notice on the page (``ui.layout``).

Gated repos: the emulator has no gating of its own, so the Hub's gated answer (403 with ``X-Error-Code: GatedRepo``,
what huggingface.co sends for a file of a gated repo whose licence the token's account has not accepted) is
injected with the emulator's fault mechanism on the repo's file downloads, as in tests/test_base_check.py; clearing
the fault is the licence being accepted.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from huggingface_hub import HfApi

from contract.settings import load_settings
from scheduler.diagnostics import UNREACHABLE, OfferedModelsCheck, check_offered_base_models, offered_base_models
from tests.conftest import ALICE_TOKEN, BOB_TOKEN
from tests.polling import free_port
from ui.auth import Access
from ui.layout import offered_models_notice

REPO_ROOT = Path(__file__).resolve().parents[1]


def gate(hub, repo_id: str) -> None:
    """The Hub's answer to a token whose account has not accepted ``repo_id``'s licence."""
    hub.inject_fault("*", rf"^/{repo_id}/resolve/", status=403, count=20, headers={
        "X-Error-Code": "GatedRepo",
        "X-Error-Message": f"Access to model {repo_id} is restricted. You must have access to it and be authenticated to access it. Please log in.",
    })  # fmt: skip


@pytest.fixture(scope="module")
def offered(fakehub, tiny_sd) -> dict[str, str]:
    """A usable model of alice's and bob's public model (gated in the tests that say so), on the emulator."""
    suffix = uuid.uuid4().hex[:6]
    repos = {"usable": f"alice/diag-sd-{suffix}", "gated": f"bob/diag-gated-{suffix}"}
    for repo, token in ((repos["usable"], ALICE_TOKEN), (repos["gated"], BOB_TOKEN)):
        api = HfApi(token=token)
        api.create_repo(repo)
        api.upload_folder(repo_id=repo, folder_path=str(tiny_sd))
    return repos


def space_settings(hub, tmp_path: Path, models: list[str], default: str | None = None, **env: str):
    values = {"HF_ENDPOINT": hub.url, "HF_TOKEN": ALICE_TOKEN, "DATA_DIR": str(tmp_path / "data"),
              "BASE_MODELS": ",".join(models), **env}  # fmt: skip
    if default:
        values["DEFAULT_BASE_MODEL"] = default
    return load_settings(values)


def test_a_gated_offered_model_is_named_with_where_to_accept_its_licence_and_accepted_it_is_no_problem(hub, tmp_path,
                                                                                                        offered):  # fmt: skip
    settings = space_settings(hub, tmp_path, [offered["usable"], offered["gated"]], default=offered["gated"])
    assert offered_base_models(settings) == [offered["gated"], offered["usable"]]  # the default first
    gate(hub, offered["gated"])
    [problem] = check_offered_base_models(settings)
    url = f"{hub.url}/{offered['gated']}"
    assert (problem.base_model, problem.kind, problem.url, problem.checked) == (offered["gated"], "gated", url, True)
    assert url in problem.message and "accept" in problem.message

    check = OfferedModelsCheck(settings)
    notice = check.markdown()
    assert f"**{offered['gated']}** (the form's default) is gated" in notice
    assert f"[{url}]({url})" in notice and "accept the licence" in notice and "refused at submit" in notice
    assert offered["usable"] not in notice  # nothing to say about the usable one

    hub.clear_faults()  # the token's account accepted the licence
    assert check_offered_base_models(settings) == []
    assert check.markdown() == notice  # kept for ten minutes: the owner's page loads do not ask the Hub each time
    assert OfferedModelsCheck(settings, ttl_s=0).markdown() == ""


def test_a_private_and_a_missing_offered_model_are_reported_and_an_unreachable_hub_is_only_could_not_check(
    hub, tmp_path, offered
):
    private = f"bob/diag-private-{uuid.uuid4().hex[:6]}"
    HfApi(token=BOB_TOKEN).create_repo(private, private=True)
    missing = "alice/diag-no-such-model"
    settings = space_settings(hub, tmp_path, [offered["usable"], private, missing])
    problems = {p.base_model: p for p in check_offered_base_models(settings)}
    assert set(problems) == {private, missing}
    assert (problems[private].kind, problems[missing].kind) == ("private", "missing")
    notice = OfferedModelsCheck(settings).markdown()
    assert f"**{private}** cannot be used with this token" in notice and "no such model repo" in notice

    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    offline = space_settings(hub, tmp_path, [offered["usable"]], HF_ENDPOINT=closed)
    [problem] = check_offered_base_models(offline)
    assert problem.kind == UNREACHABLE and not problem.checked
    check = OfferedModelsCheck(offline)
    notice = check.markdown()
    assert notice.startswith("**Offered base models:**") and "Could not check" in notice
    assert "refused at submit" not in notice and "cannot be used" not in notice
    assert check._kept is None  # not kept: the next page load checks again


def test_only_the_owner_sees_the_notice(hub, tmp_path, offered):
    missing = "alice/diag-missing-too"
    check = OfferedModelsCheck(space_settings(hub, tmp_path, [offered["usable"], missing]))
    owner = offered_models_notice(check, Access("alice", allowed=True, owner=True))
    assert owner.visible is True and missing in owner.value
    for visitor in (Access("carol", allowed=True, owner=False), Access(None, allowed=False, owner=False)):
        shown = offered_models_notice(check, visitor)
        assert shown.visible is False and not shown.value
    assert offered_models_notice(None, Access("alice", allowed=True, owner=True)).visible is False


def test_the_check_imports_no_torch(hub):
    code = (
        "import sys\n"
        "from scheduler.diagnostics import check_offered_base_models\n"
        "from contract.settings import load_settings\n"
        f"s = load_settings({{'HF_ENDPOINT': {hub.url!r}, 'BASE_MODELS': 'alice/diag-no-such-model'}})\n"
        "[p] = check_offered_base_models(s)\n"
        "print(p.kind, sorted({'torch', 'diffusers', 'transformers'} & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "missing []"
