"""Conformance of the Hub emulator with the real huggingface_hub client (repos, commits, downloads, faults)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from tests.conftest import ALICE_TOKEN, BOB_TOKEN
from tests.fakehub.fixtures import FakeHub, run_fakehub

REPO_ROOT = Path(__file__).resolve().parents[1]


def unique(prefix: str = "r") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def alice(hub: FakeHub) -> HfApi:
    return HfApi(endpoint=hub.url, token=ALICE_TOKEN)


def test_whoami_maps_tokens_to_users(hub: FakeHub, alice: HfApi) -> None:
    me = alice.whoami()
    assert me["name"] == "alice" and me["type"] == "user"
    assert [o["name"] for o in me["orgs"]] == ["alice-org"]
    assert me["auth"]["accessToken"]["role"] == "write"
    assert HfApi(endpoint=hub.url, token=BOB_TOKEN).whoami()["name"] == "bob"
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(endpoint=hub.url, token="hf_fake_unknown").whoami()
    assert err.value.response.status_code == 401


@pytest.mark.parametrize("repo_type", ["model", "dataset", "space"])
def test_create_upload_list_download_each_repo_type(hub: FakeHub, alice: HfApi, tmp_path: Path, repo_type: str) -> None:
    repo_id = f"alice/{unique(repo_type)}"
    sdk = {"space_sdk": "gradio"} if repo_type == "space" else {}
    url = alice.create_repo(repo_id, repo_type=repo_type, **sdk)
    assert url.repo_id == repo_id and url.repo_type == repo_type
    info = alice.upload_file(
        path_or_fileobj=b"payload\n", path_in_repo="dir/data.txt", repo_id=repo_id, repo_type=repo_type
    )
    assert len(info.oid) == 40
    assert sorted(alice.list_repo_files(repo_id, repo_type=repo_type)) == [".gitattributes", "dir/data.txt"]
    path = hf_hub_download(repo_id, "dir/data.txt", repo_type=repo_type, cache_dir=tmp_path)
    assert Path(path).read_bytes() == b"payload\n"
    repo_info = alice.repo_info(repo_id, repo_type=repo_type)
    assert repo_info.sha == info.oid
    assert {s.rfilename for s in repo_info.siblings} == {".gitattributes", "dir/data.txt"}
    if repo_type == "space":
        assert repo_info.runtime is not None and repo_info.runtime.requested_hardware == "cpu-basic"
    # exist_ok: the 409 answer carries the URL
    assert alice.create_repo(repo_id, repo_type=repo_type, exist_ok=True, **sdk).repo_id == repo_id
    with pytest.raises(HfHubHTTPError) as err:
        alice.create_repo(repo_id, repo_type=repo_type, **sdk)
    assert err.value.response.status_code == 409


def test_snapshot_download_of_a_folder_and_request_trace(hub: FakeHub, alice: HfApi, tmp_path: Path) -> None:
    repo_id = f"alice/{unique()}"
    alice.create_repo(repo_id, repo_type="dataset")
    folder = tmp_path / "src"
    files = {"a.txt": b"A", "sub/b.bin": bytes(range(256)) * 10, "sub/deeper/c d.json": b'{"c": 1}', "empty.txt": b""}
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    alice.upload_folder(folder_path=folder, repo_id=repo_id, repo_type="dataset")
    hub.clear_requests()
    local = Path(snapshot_download(repo_id, repo_type="dataset", cache_dir=tmp_path / "cache"))
    for name, data in files.items():
        assert (local / name).read_bytes() == data, name
    assert (local / ".gitattributes").exists()
    n_files = len(files) + 1
    assert len(hub.requests("GET", rf"/{repo_id}/revision/main$")) == 1
    assert len(hub.requests("GET", rf"/{repo_id}/tree/")) == 1
    assert len(hub.requests("HEAD", rf"/{repo_id}/resolve/")) == n_files
    # the empty file needs no GET (its size is known from HEAD), every other one exactly one
    assert len(hub.requests("GET", rf"/{repo_id}/resolve/")) == n_files - 1


def test_redownload_is_served_from_cache_with_one_head(hub: FakeHub, alice: HfApi, tmp_path: Path) -> None:
    repo_id = f"alice/{unique()}"
    alice.create_repo(repo_id)
    alice.upload_file(path_or_fileobj=b"weights", path_in_repo="w.bin", repo_id=repo_id)
    first = hf_hub_download(repo_id, "w.bin", cache_dir=tmp_path)
    hub.clear_requests()
    second = hf_hub_download(repo_id, "w.bin", cache_dir=tmp_path)
    assert first == second
    # (filtered on the repo: Space processes of other tests may share the session's emulator)
    assert [(r.method, r.path) for r in hub.requests(path_regex=repo_id)] == [
        ("HEAD", f"/{repo_id}/resolve/main/w.bin")
    ]
    assert {k: n for k, n in hub.request_counts().items() if repo_id in k[1]} == {
        ("HEAD", f"/{repo_id}/resolve/main/w.bin"): 1
    }
    # a new commit changes the etag and commit: the next download fetches the new content
    alice.upload_file(path_or_fileobj=b"weights v2", path_in_repo="w.bin", repo_id=repo_id)
    assert Path(hf_hub_download(repo_id, "w.bin", cache_dir=tmp_path)).read_bytes() == b"weights v2"


def test_resolve_headers_and_error_codes(hub: FakeHub, alice: HfApi, tmp_path: Path) -> None:
    repo_id = f"alice/{unique()}"
    alice.create_repo(repo_id)
    name = "odd name/c#d?.txt"
    commit = alice.upload_file(path_or_fileobj=b"12345", path_in_repo=name, repo_id=repo_id).oid
    meta = alice.get_hf_file_metadata(url=f"{hub.url}/{repo_id}/resolve/{commit}/odd%20name/c%23d%3F.txt")
    assert meta.commit_hash == commit and meta.size == 5 and len(meta.etag) == 40
    assert Path(hf_hub_download(repo_id, name, revision=commit, cache_dir=tmp_path)).read_bytes() == b"12345"
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo_id, "missing.txt", cache_dir=tmp_path)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo_id, name, revision="no-such-branch", cache_dir=tmp_path)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(f"alice/{unique()}", name, cache_dir=tmp_path)
    assert alice.file_exists(repo_id, name) and not alice.file_exists(repo_id, "missing.txt")
    assert not alice.repo_exists(f"alice/{unique()}")


def test_stale_parent_commit_gets_412(hub: FakeHub, alice: HfApi) -> None:
    from huggingface_hub import CommitOperationAdd

    repo_id = f"alice/{unique()}"
    alice.create_repo(repo_id, repo_type="dataset")
    parent = alice.dataset_info(repo_id).sha
    alice.create_commit(
        repo_id, [CommitOperationAdd("a.txt", b"1")], commit_message="first", repo_type="dataset", parent_commit=parent
    )
    with pytest.raises(HfHubHTTPError) as err:
        alice.create_commit(
            repo_id,
            [CommitOperationAdd("b.txt", b"2")],
            commit_message="stale",
            repo_type="dataset",
            parent_commit=parent,
        )
    assert err.value.response.status_code == 412
    assert "b.txt" not in alice.list_repo_files(repo_id, repo_type="dataset")


def test_concurrent_compare_and_swap_has_exactly_one_winner(hub: FakeHub, alice: HfApi) -> None:
    from huggingface_hub import CommitOperationAdd

    repo_id = f"alice/{unique()}"
    alice.create_repo(repo_id, repo_type="dataset")
    parent = alice.dataset_info(repo_id).sha
    results: list[int] = []
    barrier = threading.Barrier(6)

    def contender(i: int) -> None:
        barrier.wait()
        try:
            alice.create_commit(
                repo_id,
                [CommitOperationAdd(f"t{i}.txt", b"x")],
                commit_message=f"c{i}",
                repo_type="dataset",
                parent_commit=parent,
            )
            results.append(200)
        except HfHubHTTPError as e:
            results.append(e.response.status_code)

    threads = [threading.Thread(target=contender, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [200] + [412] * 5
    commits = alice.list_repo_commits(repo_id, repo_type="dataset")
    assert len(commits) == 2 and len({c.commit_id for c in commits}) == 2


def test_private_repo_is_invisible_to_others(hub: FakeHub, alice: HfApi, tmp_path: Path) -> None:
    repo_id = f"alice/{unique()}"
    alice.create_repo(repo_id, repo_type="dataset", private=True)
    alice.upload_file(path_or_fileobj=b"secret-ish", path_in_repo="q.json", repo_id=repo_id, repo_type="dataset")
    bob = HfApi(endpoint=hub.url, token=BOB_TOKEN)
    anonymous = HfApi(endpoint=hub.url, token=False)
    for other in (bob, anonymous):
        with pytest.raises(RepositoryNotFoundError) as err:
            other.dataset_info(repo_id)
        assert err.value.response.status_code == 401
        assert not other.repo_exists(repo_id, repo_type="dataset")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(repo_id, "q.json", repo_type="dataset", token=BOB_TOKEN, cache_dir=tmp_path)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(repo_id, "q.json", repo_type="dataset", token=False, cache_dir=tmp_path)
    assert alice.dataset_info(repo_id).private is True
    # org membership: alice writes to alice-org, bob may not
    alice.create_repo(f"alice-org/{unique()}")
    with pytest.raises(HfHubHTTPError) as err:
        bob.create_repo(f"alice-org/{unique()}")
    assert err.value.response.status_code == 403


def test_read_token_cannot_write(hub: FakeHub, alice: HfApi) -> None:
    token = f"hf_fake_reader_{uuid.uuid4().hex[:6]}"
    hub.add_user("alice", token, role="read", orgs=["alice-org"])
    reader = HfApi(endpoint=hub.url, token=token)
    assert reader.whoami()["auth"]["accessToken"]["role"] == "read"
    repo_id = f"alice/{unique()}"
    alice.create_repo(repo_id, private=True)
    assert reader.model_info(repo_id).id == repo_id
    with pytest.raises(HfHubHTTPError) as err:
        reader.upload_file(path_or_fileobj=b"x", path_in_repo="x", repo_id=repo_id)
    assert err.value.response.status_code == 403
    hub.add_user("alice", ALICE_TOKEN, role="write", orgs=["alice-org"])  # unchanged, re-registered


def test_deletes_tree_pagination_and_paths_info(tmp_path: Path) -> None:
    with run_fakehub(tmp_path / "root", users={"carol": "tok-carol"}, tree_page_size=2) as hub:
        api = HfApi(endpoint=hub.url, token="tok-carol")
        repo_id = f"carol/{unique()}"
        api.create_repo(repo_id)
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        ops = [CommitOperationAdd(p, p.encode()) for p in ("a.txt", "d/1.txt", "d/2.txt", "d/e/3.txt", "f/4.txt")]
        api.create_commit(repo_id, ops, commit_message="files")
        hub.clear_requests()
        listed = sorted(api.list_repo_files(repo_id))
        assert listed == [".gitattributes", "a.txt", "d/1.txt", "d/2.txt", "d/e/3.txt", "f/4.txt"]
        assert len(hub.requests("GET", r"/tree/")) >= 4  # 6 files + 4 folders, 2 per page
        top = {(e.path, type(e).__name__) for e in api.list_repo_tree(repo_id)}
        assert top == {(".gitattributes", "RepoFile"), ("a.txt", "RepoFile"), ("d", "RepoFolder"), ("f", "RepoFolder")}
        assert {e.path for e in api.list_repo_tree(repo_id, path_in_repo="d")} == {"d/1.txt", "d/2.txt", "d/e"}
        infos = api.get_paths_info(repo_id, ["a.txt", "d", "nope"])
        assert {(i.path, type(i).__name__) for i in infos} == {("a.txt", "RepoFile"), ("d", "RepoFolder")}
        api.create_commit(
            repo_id, [CommitOperationDelete("a.txt"), CommitOperationDelete("d/", is_folder=True)], commit_message="rm"
        )
        assert sorted(api.list_repo_files(repo_id)) == [".gitattributes", "f/4.txt"]
        with pytest.raises(EntryNotFoundError):
            api.delete_file("a.txt", repo_id)
        api.delete_repo(repo_id)
        assert not api.repo_exists(repo_id)
        api.delete_repo(repo_id, missing_ok=True)


def test_branches(hub: FakeHub, alice: HfApi, tmp_path: Path) -> None:
    repo_id = f"alice/{unique()}"
    alice.create_repo(repo_id)
    alice.create_branch(repo_id, branch="dev/1")
    alice.create_branch(repo_id, branch="dev/1", exist_ok=True)
    on_dev = alice.upload_file(path_or_fileobj=b"d", path_in_repo="d.txt", repo_id=repo_id, revision="dev/1").oid
    refs = alice.list_repo_refs(repo_id)
    assert {b.name: b.target_commit for b in refs.branches}["dev/1"] == on_dev
    assert "d.txt" not in alice.list_repo_files(repo_id)
    assert Path(hf_hub_download(repo_id, "d.txt", revision="dev/1", cache_dir=tmp_path)).read_bytes() == b"d"
    alice.delete_branch(repo_id, branch="dev/1")
    assert [b.name for b in alice.list_repo_refs(repo_id).branches] == ["main"]


def test_faults_observed_by_the_client(hub: FakeHub, alice: HfApi) -> None:
    hub.inject_fault("POST", r"^/api/repos/create$", status=429, headers={"Retry-After": "7"})
    with pytest.raises(HfHubHTTPError) as err:
        alice.create_repo(f"alice/{unique()}")
    assert err.value.response.status_code == 429 and err.value.response.headers["Retry-After"] == "7"
    repo_id = f"alice/{unique()}"
    alice.create_repo(repo_id)  # the fault was used up
    hub.inject_fault("GET", rf"^/api/models/{repo_id}$", delay_s=0.4)
    started = time.monotonic()
    assert alice.model_info(repo_id).id == repo_id
    assert time.monotonic() - started >= 0.4
    hub.inject_fault("*", r"/api/models/.*/commit/", status=503, count=2)
    for _ in range(2):
        with pytest.raises(HfHubHTTPError) as err:
            alice.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id)
        assert err.value.response.status_code == 503
    alice.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id)
    statuses = [r.status for r in hub.requests("POST", rf"^/api/models/{repo_id}/commit/main$")]
    assert statuses == [503, 503, 200]


def test_land_then_fail_applies_the_commit(hub: FakeHub, alice: HfApi) -> None:
    repo_id = f"alice/{unique()}"
    alice.create_repo(repo_id, repo_type="dataset")
    before = alice.dataset_info(repo_id).sha
    hub.inject_fault("POST", r"/commit/main$", land_then_fail=True)
    with pytest.raises(HfHubHTTPError) as err:
        alice.upload_file(path_or_fileobj=b"task", path_in_repo="tasks/t1.json", repo_id=repo_id, repo_type="dataset")
    assert err.value.response.status_code == 500
    assert alice.dataset_info(repo_id).sha != before
    assert "tasks/t1.json" in alice.list_repo_files(repo_id, repo_type="dataset")


def test_http_control_endpoints(hub: FakeHub, alice: HfApi) -> None:
    repo_id = f"alice/{unique()}"
    alice.create_repo(repo_id)
    fault = {"method": "GET", "path_regex": f"^/api/models/{repo_id}$", "status": 502, "retry_after": 3}
    req = urllib.request.Request(f"{hub.url}/_emu/faults", data=json.dumps(fault).encode(), method="POST")
    assert json.loads(urllib.request.urlopen(req).read())[-1]["headers"] == {"Retry-After": "3"}
    with pytest.raises(HfHubHTTPError) as err:
        alice.model_info(repo_id)
    assert err.value.response.status_code == 502 and err.value.response.headers["Retry-After"] == "3"
    alice.model_info(repo_id)
    log = json.loads(urllib.request.urlopen(f"{hub.url}/_emu/requests?method=GET&path_regex={repo_id}").read())
    assert [(r["path"], r["status"]) for r in log] == [(f"/api/models/{repo_id}", 502), (f"/api/models/{repo_id}", 200)]


def test_restart_on_the_same_root_keeps_repos_and_commits(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with run_fakehub(root, users={"carol": "tok-carol"}) as hub:
        api = HfApi(endpoint=hub.url, token="tok-carol")
        api.create_repo("carol/keep", repo_type="dataset", private=True)
        first = api.upload_file(
            path_or_fileobj=b"v1", path_in_repo="f.txt", repo_id="carol/keep", repo_type="dataset"
        ).oid
    with run_fakehub(root, users={"carol": "tok-carol"}) as hub:
        api = HfApi(endpoint=hub.url, token="tok-carol")
        info = api.dataset_info("carol/keep")
        assert info.sha == first and info.private
        path = hf_hub_download(
            "carol/keep", "f.txt", repo_type="dataset", endpoint=hub.url, token="tok-carol", cache_dir=tmp_path / "c"
        )
        assert Path(path).read_bytes() == b"v1"
        second = api.upload_file(
            path_or_fileobj=b"v2", path_in_repo="f.txt", repo_id="carol/keep", repo_type="dataset"
        ).oid
        assert second != first
        assert [c.commit_id for c in api.list_repo_commits("carol/keep", repo_type="dataset")][:2] == [second, first]


def test_stored_bytes_lists_repo_content(hub: FakeHub, alice: HfApi) -> None:
    repo_id = f"alice/{unique()}"
    marker = uuid.uuid4().hex.encode()
    alice.create_repo(repo_id)
    alice.upload_file(
        path_or_fileobj=marker, path_in_repo="m.txt", repo_id=repo_id, commit_message="msg-" + marker.decode()[:6]
    )
    blobs = list(hub.stored_bytes())
    assert any(data == marker for _, data in blobs)
    assert any(label.startswith("commit ") and b"msg-" + marker[:6] in data for label, data in blobs)


def test_cli_entry_point_serves_whoami(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "tests.fakehub",
        "--port",
        str(port),
        "--root",
        str(tmp_path),
        "--user",
        "dave:tok-dave:write:dave-org",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/_emu/health", timeout=1).read()
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()
                assert time.monotonic() < deadline, "emulator did not start"
                time.sleep(0.1)
        me = HfApi(endpoint=f"http://127.0.0.1:{port}", token="tok-dave").whoami()
        assert me["name"] == "dave" and [o["name"] for o in me["orgs"]] == ["dave-org"]
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
