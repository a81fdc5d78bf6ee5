"""Is a base model usable? One torch-free check shared by the form (CPU Space, local mode) and the trainer.

A base model is untrusted input: an existing local folder or a valid Hub repo id; its ``model_index.json`` may only
name a pipeline class some model family trains and the component classes that family allows (the Stable Diffusion
family's lists are below; every family in ``training.families`` declares its own, torch-free); every weight-bearing component must ship ``.safetensors``
(``.bin``/``.ckpt`` pickles can run code). This module imports only the standard library and huggingface_hub, so
the control plane can call it before any hardware is requested. It is the one home of the checks and of the
safetensors rule; ``training.models`` imports them.

Offline mode (huggingface_hub's own ``HF_HUB_OFFLINE=1``) asks the Hub nothing: a Hub repo id is checked on its copy
in the Hugging Face cache (``cached_snapshot``), whose files alone are then used, and one that is not cached is
refused saying that offline mode is on.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contract.settings import hub_offline
from training.families.rules import (  # the model_index.json rules the families share (torch-free)
    ALLOWED_COMPONENTS,
    WEIGHT_COMPONENTS,
    BaseModelProblem,
    not_a_pipeline,
    sd_component_names,
)

#: the base-model value of the built-in demo model (see ``training.demo``; kept here so this module needs no torch)
DEMO_MODEL = "builtin:demo"
#: the largest JSON config read (a real model_index.json is about 1 KiB); a bigger one is refused before download
MAX_JSON_BYTES = 256 * 1024


@dataclass
class Probe:
    """What the check found: the parsed ``model_index.json``, the repo's file list (repo-relative paths, a local
    folder's files two levels deep) and, on the Hub, the commit they were listed at and each file's size in bytes
    (None where the Hub did not say; when it got that far)."""

    base_model: str
    local: bool
    index: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    problem: BaseModelProblem | None = None
    revision: str | None = None
    sizes: dict[str, int | None] = field(default_factory=dict)
    #: for people, when the check used something other than what was asked (offline mode: the cached copy)
    note: str | None = None


# ---------------------------------------------------------------- the model_index.json rules
def _family(index: dict[str, Any]):
    """The registered model family (``training.families``, torch-free) that trains this pipeline, or None."""
    from training.families import find_family

    return find_family(index) if isinstance(index, dict) else None


def component_names(index: dict[str, Any]) -> list[str]:
    """Every component the trainer loads for a pipeline with this ``model_index.json`` (its family's rule)."""
    family = _family(index)
    return family.component_names(index) if family is not None else sd_component_names(index)


def weight_components(index: dict[str, Any]) -> list[str]:
    """The weight-bearing components among ``component_names`` (not tokenizers or the scheduler)."""
    family = _family(index)
    if family is None:
        return [c for c in WEIGHT_COMPONENTS if c in component_names(index)]
    return family.weight_components(index)


def component_problem(base_model: str, index: dict[str, Any], name: str) -> BaseModelProblem | None:
    """None if ``model_index.json`` names an allow-listed class for component ``name``."""
    family = _family(index)
    library, allowed = (family.components if family is not None else ALLOWED_COMPONENTS)[name]
    entry = index.get(name)
    if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(x, str) for x in entry)):
        return not_a_pipeline(base_model, f"model_index.json has no usable {name!r} entry: {entry!r}")
    if entry[0] != library or entry[1] not in allowed:
        return BaseModelProblem(
            "not_allowed",
            f"base model {base_model!r}: component {name!r} is {entry[0]}.{entry[1]}, which is not allowed "
            f"(allowed: {', '.join(f'{library}.{c}' for c in sorted(allowed))})",
        )
    return None


def index_problem(base_model: str, index: dict[str, Any]) -> BaseModelProblem | None:
    """The pipeline class must be one a registered model family trains (``training.families``), and every
    component the trainer loads must be on that family's allow-list."""
    pipeline = index.get("_class_name")
    family = _family(index) if isinstance(pipeline, str) else None
    if family is None:
        from training.families import supported_pipelines

        return BaseModelProblem(
            "not_allowed",
            f"base model {base_model!r}: pipeline {pipeline!r} is not allowed (custom pipelines are refused; "
            f"supported model families and their pipelines: {supported_pipelines()})",
        )
    problem = family.index_problem(base_model, index)
    if problem is not None:
        return problem
    for name in component_names(index):
        problem = component_problem(base_model, index, name)
        if problem is not None:
            return problem
    return None


def safetensors_problem(base_model: str, index: dict[str, Any], files: Iterable[str]) -> BaseModelProblem | None:
    """Each weight-bearing component folder must hold ``.safetensors`` weights (others are never loaded).

    ``files`` are repo-relative paths ("unet/diffusion_pytorch_model.safetensors", ...)."""
    have = {f.split("/")[0] for f in files if f.count("/") == 1 and f.endswith(".safetensors")}
    for name in weight_components(index):
        if name not in have:
            return no_safetensors(base_model, name)
    return None


def no_safetensors(base_model: str, name: str) -> BaseModelProblem:
    """The problem of a weight-bearing component without usable ``.safetensors`` weights (also ``training.files``)."""
    return BaseModelProblem(
        "no_safetensors",
        f"base model {base_model!r}: component {name!r} has no .safetensors weights; safetensors are required "
        "(pickle-based .bin/.ckpt weights are never loaded)",
    )


def json_size_problem(base_model: str, filename: str, size: int | None) -> BaseModelProblem | None:
    """None if a JSON config of ``size`` bytes may be read (at most ``MAX_JSON_BYTES``; an unknown size is refused,
    so nothing of unknown size is downloaded)."""
    if size is not None and 0 <= size <= MAX_JSON_BYTES:
        return None
    return _too_big(base_model, filename, size)


def _too_big(base_model: str, filename: str, size: int | None) -> BaseModelProblem:
    what = f"{size // 1024} KiB" if size is not None else "its size is not listed"
    return BaseModelProblem(
        "not_a_pipeline",
        f"base model {base_model!r}: {filename} is too big to be a pipeline's config ({what}; at most "
        f"{MAX_JSON_BYTES // 1024} KiB is read), so it is not read",
    )


def read_json_text(base_model: str, filename: str, path: Path) -> str | BaseModelProblem:
    """The text of the JSON config ``filename`` at ``path``, reading at most ``MAX_JSON_BYTES`` (one byte more
    shows it is too big)."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_JSON_BYTES + 1)
    except OSError:
        return not_a_pipeline(base_model, f"{filename} cannot be read")
    if len(data) > MAX_JSON_BYTES:
        return _too_big(base_model, filename, max(path.stat().st_size, len(data)))
    try:
        return data.decode()
    except UnicodeDecodeError:
        return not_a_pipeline(base_model, f"{filename} is not valid JSON")


def parse_json_object(base_model: str, filename: str, text: str) -> dict[str, Any] | BaseModelProblem:
    try:
        data = json.loads(text)
    except ValueError:
        return not_a_pipeline(base_model, f"{filename} is not valid JSON")
    if not isinstance(data, dict):
        return not_a_pipeline(base_model, f"{filename} is not a JSON object")
    return data


# ---------------------------------------------------------------- the id
def id_problem(base_model: Any) -> BaseModelProblem | None:
    """None for an existing local folder or a valid Hub repo id (no request is made)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not isinstance(base_model, str) or not base_model.strip():
        return BaseModelProblem("invalid", "base model is empty: give a Hub repo id (namespace/name) or a local folder")
    if Path(base_model).is_dir():
        return None
    try:
        validate_repo_id(base_model)
    except HFValidationError as e:
        why = f"no such local folder, and not a valid Hub repo id (namespace/name): {e}"
        return BaseModelProblem("invalid", not_a_pipeline(base_model, why).message)
    return None


# ---------------------------------------------------------------- Hub errors
def endpoint_of(endpoint: str | None) -> str:
    from huggingface_hub import constants

    return (endpoint or constants.ENDPOINT).rstrip("/")


def is_network_error(exc: BaseException) -> bool:
    """A connection, DNS, TLS or timeout failure (not an HTTP answer), or offline mode."""
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    if isinstance(exc, HfHubHTTPError):
        return False
    if isinstance(exc, LocalEntryNotFoundError | OfflineModeIsEnabled | ConnectionError | TimeoutError):
        return True
    # huggingface_hub's HTTP client (httpx / httpx2) raises its own transport errors
    return any(c.__name__ in ("TransportError", "TimeoutException", "NetworkError") for c in type(exc).__mro__)


def hub_problem(base_model: str, exc: BaseException, endpoint: str | None = None) -> BaseModelProblem | None:
    """Classify an exception raised by a Hub call about ``base_model``; None if it is not a known Hub failure."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if hub_offline() and is_network_error(exc):
        return offline_problem(base_model, "needs a file that is not in the Hugging Face cache")
    where = endpoint_of(endpoint)
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, GatedRepoError):
        return BaseModelProblem(
            "gated",
            f"base model {base_model!r} is gated: open {where}/{base_model}, sign in with the account this app's "
            "token belongs to and accept its licence (that account must accept it, not just any), then submit again",
        )
    if isinstance(exc, RepositoryNotFoundError):
        if status == 401:
            return BaseModelProblem(
                "private",
                f"base model {base_model!r} was not found on {where}, or it is private and the token "
                "(HF_TOKEN) cannot read it: check the id, or use a token whose account can read that repo",
            )
        return BaseModelProblem("missing", f"base model {base_model!r}: no such model repo on {where}")
    if isinstance(exc, RevisionNotFoundError):
        return BaseModelProblem("missing", f"base model {base_model!r}: its main branch is missing on {where}")
    if isinstance(exc, RemoteEntryNotFoundError):
        return not_a_pipeline(base_model, "a file it needs is missing from the repo")
    if is_network_error(exc):
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        if "cannot find the requested files in the local cache" in reason:
            reason = "no connection"
        return BaseModelProblem(
            "unreachable",
            f"the Hub at {where} cannot be reached ({reason}), so base model {base_model!r} could not be checked; "
            "this is retryable: check the network connection (or HF_ENDPOINT) and try again",
            retryable=True,
        )
    if isinstance(exc, HfHubHTTPError) and status is not None and (status >= 500 or status == 429):
        return BaseModelProblem(
            "unreachable",
            f"the Hub at {where} answered HTTP {status} while checking base model {base_model!r}; "
            "this is retryable: try again in a minute",
            retryable=True,
        )
    if isinstance(exc, HfHubHTTPError) and status == 403:
        return BaseModelProblem(
            "private", f"base model {base_model!r}: the token (HF_TOKEN) is not allowed to read it on {where} (403)"
        )
    return None


# ---------------------------------------------------------------- the check
def probe_base_model(base_model: str, *, token: str | None = None, endpoint: str | None = None) -> Probe:
    """Check ``base_model`` (at most two Hub calls: the repo's file list, then ``model_index.json``)."""
    if base_model == DEMO_MODEL:
        return Probe(base_model, local=True)
    problem = id_problem(base_model)
    if problem is not None:
        return Probe(base_model, local=False, problem=problem)
    local = Path(base_model).is_dir()
    probe = Probe(base_model, local=local)
    if local:
        index_file = Path(base_model) / "model_index.json"
        if not index_file.is_file():
            probe.problem = BaseModelProblem(
                "missing", f"base model {base_model!r}: the folder has no model_index.json (not a diffusers pipeline)"
            )
            return probe
        text_or_problem = read_json_text(base_model, "model_index.json", index_file)
        if isinstance(text_or_problem, BaseModelProblem):
            probe.problem = text_or_problem
            return probe
        text = text_or_problem
        probe.files = _files_in(Path(base_model))
    else:
        text_or_problem = (_cached_index if hub_offline() else _hub_index)(base_model, probe, token, endpoint)
        if isinstance(text_or_problem, BaseModelProblem):
            probe.problem = text_or_problem
            return probe
        text = text_or_problem
    parsed = parse_json_object(base_model, "model_index.json", text)
    if isinstance(parsed, BaseModelProblem):
        probe.problem = parsed
        return probe
    probe.index = parsed
    probe.problem = index_problem(base_model, parsed) or safetensors_problem(base_model, parsed, probe.files)
    if probe.note and probe.problem is not None and probe.problem.kind == "no_safetensors":  # offline: a partial copy
        partly = f"is only partly in the Hugging Face cache ({probe.problem.message})"
        probe.problem = offline_problem(base_model, partly)
    return probe


def _files_in(root: Path) -> list[str]:
    """A pipeline folder's files two levels deep, as repo-relative paths."""
    return sorted(p.relative_to(root).as_posix() for g in ("*", "*/*") for p in root.glob(g) if p.is_file())


# ---------------------------------------------------------------- offline mode: the Hugging Face cache only
def offline_problem(base_model: str, why: str) -> BaseModelProblem:
    """A Hub base model offline mode cannot use (not retryable: the cache does not fill by itself)."""
    return BaseModelProblem(
        "missing",
        f"offline mode is on (HF_HUB_OFFLINE=1) and base model {base_model!r} {why}: download it while online "
        f"first (e.g. `hf download {base_model}`), or turn offline mode off",
    )


def cached_snapshot(repo_id: str) -> tuple[Path, str] | None:
    """The Hugging Face cache's copy of model repo ``repo_id`` (its snapshot folder and commit): the one ``main``
    points to (a ``snapshot_download``, e.g. a Space's ``preload_from_hub``), else the newest (the trainer
    downloads at a commit, which names no branch); None when the cache holds none."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        repos = scan_cache_dir().repos
    except CacheNotFound:
        return None
    revisions = [r for repo in repos if repo.repo_type == "model" and repo.repo_id == repo_id for r in repo.revisions]
    if not revisions:
        return None
    best = max(revisions, key=lambda r: ("main" in r.refs, r.last_modified))
    return Path(best.snapshot_path), best.commit_hash


def _cached_index(base_model: str, probe: Probe, token: str | None, endpoint: str | None) -> str | BaseModelProblem:
    """Offline: the text of ``model_index.json`` in the cached copy, whose files are the ones listed (and used)."""
    found = cached_snapshot(base_model)
    if found is None:
        return offline_problem(base_model, "is not in the Hugging Face cache")
    folder, probe.revision = found
    probe.files = _files_in(folder)
    probe.note = f"offline mode: using the cached copy of {base_model} at {probe.revision[:12]}"
    if "model_index.json" not in probe.files:
        return offline_problem(base_model, "has no model_index.json in its cached copy")
    return read_json_text(base_model, "model_index.json", folder / "model_index.json")


def _hub_index(base_model: str, probe: Probe, token: str | None, endpoint: str | None) -> str | BaseModelProblem:
    """The text of the repo's ``model_index.json``: its file list and sizes first (one request), then the file, only
    when it is small (``json_size_problem``)."""
    from huggingface_hub import HfApi, hf_hub_download

    try:
        info = HfApi(endpoint=endpoint, token=token).model_info(base_model, files_metadata=True)
    except Exception as e:  # noqa: BLE001 - classified, or re-raised
        problem = hub_problem(base_model, e, endpoint)
        if problem is None:
            raise
        return problem
    probe.files = [s.rfilename for s in info.siblings or []]
    probe.sizes = {s.rfilename: s.size for s in info.siblings or []}
    probe.revision = info.sha
    if "model_index.json" not in probe.files:
        return BaseModelProblem(
            "missing", f"base model {base_model!r} has no model_index.json: it is not a diffusers pipeline repo"
        )
    too_big = json_size_problem(base_model, "model_index.json", probe.sizes.get("model_index.json"))
    if too_big is not None:
        return too_big
    try:
        path = hf_hub_download(base_model, "model_index.json", revision=info.sha, token=token, endpoint=endpoint)
        return read_json_text(base_model, "model_index.json", Path(path))
    except Exception as e:  # noqa: BLE001
        problem = hub_problem(base_model, e, endpoint)
        if problem is None:
            raise
        return problem


def check_base_model(
    base_model: str, *, token: str | None = None, endpoint: str | None = None
) -> BaseModelProblem | None:
    """None if ``base_model`` (a Hub repo id, a local folder or ``DEMO_MODEL``) can be trained on, else the problem.

    Makes at most two Hub calls and downloads no weights; a local folder is checked on disk, and in offline mode a
    Hub repo id on its cached copy."""
    return probe_base_model(base_model, token=token, endpoint=endpoint).problem
