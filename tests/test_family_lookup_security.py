"""The form's base-model lookup (``on_family``) as an attacker drives it: over real HTTP against a Space-mode app
whose Hub is the emulator, counting the emulator's requests (issue 20, findings 1 and 2).

The app runs in-process as the Space ``alice/...`` with Gradio's mocked sign-in (opted in with the test-only
variable), so cookies for alice (the owner), bob (allowed) and carol (signed in, not allowed) are signed here as
in ``tests/test_security.py``. The worker is not started. The lookup's rate limiter gets a frozen clock (no sleeps).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from app import create_app
from contract.settings import load_settings
from tests.conftest import ALICE_TOKEN, MOCK_SIGNIN
from tests.polling import free_port
from tests.test_security import http, page_event
from ui import lookups, model_family

FLUX_INDEX = {
    "_class_name": "FluxPipeline",
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "T5EncoderModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "T5TokenizerFast"],
    "transformer": ["diffusers", "FluxTransformer2DModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


class FrozenClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def flux_repo(hub, repo_id: str, *, private: bool) -> str:
    """A FLUX.1-shaped repo on the emulator: its model_index.json and a weight file name per component."""
    files: dict[str, bytes] = {"model_index.json": json.dumps(FLUX_INDEX).encode()}
    for part in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        files[f"{part}/model.safetensors"] = b"not really weights"
    hub.commit_files(repo_id, files, author=repo_id.split("/")[0], private=private)
    return repo_id


@dataclass
class Space:
    url: str
    on_family: int  # the dependency id of the base model's lookup and the family's defaults it proposes
    offered: str  # the one offered base model: a public FLUX.1 repo
    clock: FrozenClock
    tag: str


@pytest.fixture
def space(hub, tmp_path, monkeypatch):
    """The app as the Space alice/fam-..., served on a free port."""
    clock = FrozenClock()
    monkeypatch.setattr(model_family, "PROBES", lookups.ProbeCache(clock=clock))
    monkeypatch.setattr(model_family, "LOOKUPS", lookups.RateLimiter(clock=clock))
    tag = uuid.uuid4().hex[:6]
    offered = flux_repo(hub, f"alice/offered-flux-{tag}", private=False)
    repo = f"alice/fam-{tag}"
    hub.create_space(repo, owner_token=ALICE_TOKEN)
    settings = load_settings({**MOCK_SIGNIN, "SPACE_ID": repo, "HF_TOKEN": ALICE_TOKEN, "HF_ENDPOINT": hub.url,
                              "ALLOWED_USERS": "alice,bob", "DATA_DIR": str(tmp_path / "data"),
                              "BASE_MODELS": offered})  # fmt: skip
    app = create_app(settings)
    assert not app.problems
    port = free_port()
    app.demo.launch(prevent_thread_lock=True, **{**app.launch_options(), "server_port": port})
    try:
        url = f"http://127.0.0.1:{port}/"
        deps = json.loads(http(f"{url}config").body)["dependencies"]
        lookup = next(d for d in deps if (d.get("api_name") or "").startswith("on_family"))
        yield Space(url, lookup["id"], offered, clock, tag)
    finally:
        app.close()


def in_session(url: str, fn_index: int, data: list, session: str, user: str | None) -> tuple[list, list[str]]:
    """Run event ``fn_index`` as the page does (``tests.test_security.page_event``): its outputs and the messages
    shown to the caller (toasts)."""
    msg, shown = page_event(url, fn_index, data, session, user)
    assert msg.get("success"), msg
    return msg["output"]["data"], shown


def pick(space: Space, model: str, user: str | None) -> tuple[dict, list[str]]:
    """Pick ``model`` in the base-model field as ``user`` (None: anonymous): the lookup, then the defaults the form
    proposes from what it found (what the page then shows), and the messages shown."""
    session = uuid.uuid4().hex
    data = [model, "dreambooth-lora", None, 512, "sd", {}, {}]  # the gr.State inputs come from the session
    (_family, proposal, *_), shown = in_session(space.url, space.on_family, data, session, user)
    return proposal, shown


def model_requests(hub) -> list[str]:
    """The Hub requests about model repos served since the last ``hub.clear_requests()``."""
    return [f"{r.method} {r.path}" for r in hub.requests() if not r.path.startswith(("/api/spaces", "/api/whoami"))]


@pytest.mark.slow
def test_visitors_who_may_not_train_make_no_hub_request_and_learn_nothing(space, hub):
    """Finding 1: any visitor's typed repo id was looked up with the owner's token (model_info, then the index), and
    the answer told the owner's private FLUX repo from a missing one (the proposed GPU became l4x1)."""
    private = flux_repo(hub, f"alice/secret-flux-{space.tag}", private=True)
    public = flux_repo(hub, f"bob/public-flux-{space.tag}", private=False)
    missing = f"alice/no-such-{space.tag}"
    for visitor in (None, "carol", "bob"):  # anonymous; signed in, not allowed; allowed, not the owner
        hub.clear_requests()
        answers = {model: pick(space, model, visitor) for model in (private, missing, public)}
        assert model_requests(hub) == [], (visitor, model_requests(hub))
        assert answers[private] == answers[missing] == answers[public], (visitor, answers)
        assert "hardware" not in answers[private][0], answers
    # The owner's lookups run as before: her private repo is a FLUX.1 model, on the family's GPU.
    hub.clear_requests()
    assert pick(space, private, "alice")[0]["hardware"] == "l4x1"
    assert model_requests(hub)
    # The offered model: looked up for the owner and allowed users; then known to every visitor, with no request.
    assert pick(space, space.offered, "bob")[0]["hardware"] == "l4x1"
    hub.clear_requests()
    for visitor in (None, "carol", "bob"):
        assert pick(space, space.offered, visitor)[0]["hardware"] == "l4x1", visitor
    assert model_requests(hub) == []
    # The owner's lookup of her private repo, now kept by the app, is not handed to others from the cache either.
    for visitor in (None, "carol", "bob"):
        assert pick(space, private, visitor) == answers[missing], visitor
    assert model_requests(hub) == []


@pytest.mark.slow
def test_the_owners_lookups_are_rate_limited_with_a_clear_message(space, hub):
    """Finding 1: 22 calls made 24 Hub requests in 0.3 s. Now a caller's lookups draw on a small token bucket: once
    it is empty the answer says so and no request is made; it refills with time (the test's clock)."""
    hub.clear_requests()
    for i in range(lookups.BURST):
        assert pick(space, f"alice/missing-{space.tag}-{i}", "alice")[1] == []
    made = len(model_requests(hub))
    assert made >= lookups.BURST  # each lookup asked the Hub
    _, shown = pick(space, f"alice/missing-{space.tag}-more", "alice")
    assert shown == ["Base model checked too often, try again in a moment."]
    assert len(model_requests(hub)) == made  # refused without a request
    assert pick(space, f"alice/missing-{space.tag}-more", "bob")[1] == []  # not offered: bob never looks it up
    space.clock.now += lookups.REFILL_S
    assert pick(space, f"alice/missing-{space.tag}-later", "alice")[1] == []
    assert len(model_requests(hub)) > made


def test_hub_checks_of_a_big_model_index_download_nothing(hub, tmp_path):
    """Finding 2: a model_index.json of any size was downloaded and read whole (48 MiB grew the cache by 96 MiB).
    Its size is in the repo's metadata, so an index over the limit is refused before any download."""
    from training.base_check import MAX_JSON_BYTES, probe_base_model

    repo = f"alice/big-index-{uuid.uuid4().hex[:6]}"
    big = tmp_path / "model_index.json"
    with big.open("wb") as f:  # valid JSON, 4 MiB of padding
        f.write(json.dumps(FLUX_INDEX)[:-1].encode() + b', "pad": "' + b"x" * (4 << 20) + b'"}')
    hub.commit_files(repo, {"model_index.json": big, "transformer/model.safetensors": b"w"}, author="alice")
    from huggingface_hub import constants

    cached = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
    hub.clear_requests()
    probe = probe_base_model(repo, token=ALICE_TOKEN, endpoint=hub.url)
    assert probe.problem is not None and probe.problem.kind == "not_a_pipeline", probe.problem
    assert "model_index.json" in probe.problem.message and "too big" in probe.problem.message
    assert f"{MAX_JSON_BYTES // 1024} KiB" in probe.problem.message
    assert [r.path for r in hub.requests()] == [f"/api/models/{repo}"]  # its metadata only: not even a HEAD of it
    assert sum(p.stat().st_size for p in cached.rglob("*") if p.is_file()) == 0  # nothing of it in the HF cache
    assert probe.index == {}
    # A local folder's index is refused the same way, without reading it.
    folder = tmp_path / "local-model"
    folder.mkdir()
    (folder / "model_index.json").write_bytes(big.read_bytes())
    local = probe_base_model(str(folder))
    assert local.problem is not None and "too big" in local.problem.message


# ---------------------------------------------------------------- the bounds, with a clock moved by hand
def test_the_lookup_cache_keeps_a_few_recent_lookups_for_a_while():
    clock = FrozenClock()
    cache: lookups.ProbeCache[str] = lookups.ProbeCache(size=3, ttl_s=60, clock=clock)
    for key in "abc":
        cache.put(key, key.upper())
    assert cache.get("a") == "A"  # now the most recently used
    cache.put("d", "D")
    assert len(cache) == 3 and cache.get("b") is None  # the least recently used went
    assert [cache.get(k) for k in "acd"] == ["A", "C", "D"]
    clock.now += 59
    cache.put("e", "E")
    clock.now += 1
    assert cache.get("a") is None and cache.get("e") == "E"  # a minute old: looked up again


def test_each_caller_draws_on_a_small_token_bucket():
    clock = FrozenClock()
    limiter = lookups.RateLimiter(burst=2, refill_s=10, clock=clock, callers=2)
    assert [limiter.take("alice") for _ in range(3)] == [True, True, False]
    assert limiter.take("bob")  # a bucket per caller
    clock.now += 5
    assert not limiter.take("alice")
    clock.now += 5
    assert [limiter.take("alice") for _ in range(2)] == [True, False]  # one more every 10 s
    clock.now += 3600
    assert [limiter.take("alice") for _ in range(3)] == [True, True, False]  # never more than the burst
    limiter.take("carol")
    assert len(limiter) == 2  # at most ``callers`` buckets are kept


def test_the_forms_lookups_keep_a_bounded_number_of_models(tmp_path, monkeypatch):
    """Finding 1: the cache of the form's lookups never evicted (a dict that every typed repo id could grow)."""
    monkeypatch.setattr(model_family, "PROBES", lookups.ProbeCache())  # the app's bound, in a cache of this test's
    settings = load_settings({"DATA_DIR": str(tmp_path / "d")})
    folders = []
    for i in range(lookups.CACHE_SIZE + 1):
        folder = tmp_path / f"m{i}"
        folder.mkdir()
        (folder / "model_index.json").write_text(json.dumps(FLUX_INDEX))
        folders.append(str(folder))
        assert model_family.cached_probe(settings, str(folder)) is not None
    assert model_family.cached_probe(settings, folders[-1], fetch=False) is not None
    assert model_family.cached_probe(settings, folders[0], fetch=False) is None  # the oldest went
    assert len(model_family.PROBES) <= lookups.CACHE_SIZE


def test_a_visitor_typing_a_path_on_the_spaces_disk_learns_nothing_of_it(tmp_path, monkeypatch):
    """A typed folder is read on the app's disk: only for the owner (or when offered), never for other visitors."""
    from ui.auth import Access

    monkeypatch.setattr(model_family, "PROBES", lookups.ProbeCache())
    folder = tmp_path / "on-disk"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps(FLUX_INDEX))
    settings = load_settings({**MOCK_SIGNIN, "SPACE_ID": "alice/s", "HF_TOKEN": ALICE_TOKEN,
                              "ALLOWED_USERS": "bob", "DATA_DIR": str(tmp_path / "d")})  # fmt: skip
    for visitor in (Access(None, False, False), Access("carol", False, False), Access("bob", True, False)):
        assert model_family.family_for(settings, visitor, str(folder)) is None, visitor
        assert len(model_family.PROBES) == 0  # not even read
    owner = model_family.family_for(settings, Access("alice", True, True), str(folder))
    assert owner is not None and owner.name == "flux1"
    bob = Access("bob", True, False)
    assert model_family.family_for(settings, bob, str(folder)) is None  # kept for the owner, not shown to bob
    assert model_family.hardware_note(settings, str(folder), "t4-small", bob) == ""
    assert "L4" in model_family.hardware_note(settings, str(folder), "t4-small", Access("alice", True, True))
