"""The downloads benchmark (``benchmarks/downloads.py``): its stand-in files and layouts are what they claim, and its
``--tiny`` run measures the real trainer (a subprocess: emulator, fresh caches, the previous and the new loading)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

from tests.tiny_models import add_hub_layout

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "downloads.py"
RECORD_KEYS = set("benchmark model_shape recipe bytes files preloaded variant device date phase".split())


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("downloads_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tensors(path: Path) -> list[tuple[str, str, list[int]]]:
    """(name, dtype as safetensors spells it, shape) of every tensor in a safetensors file."""
    with safe_open(str(path), "pt") as f:
        return [(k, f.get_slice(k).get_dtype(), list(f.get_slice(k).get_shape())) for k in f.keys()]


def test_the_header_builder_writes_what_safetensors_writes(bench, tiny_sd, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_sd, folder)
    add_hub_layout(folder, decoys=False)  # fp16 variants written by safetensors itself
    for rel in (
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.fp16.safetensors",
        "text_encoder/model.safetensors",
    ):
        path = folder / rel
        header, data = bench.safetensors_header(_tensors(path))
        raw = path.read_bytes()
        assert raw[: len(header)] == header and len(raw) == len(header) + data, rel


def test_meta_models_give_the_saved_tensors_and_the_stand_ins_are_sparse_loadable_files(bench, tiny_sd, tmp_path):
    config = json.loads((tiny_sd / "unet" / "config.json").read_text())
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    model = bench._model("diffusers", "UNet2DConditionModel", config)
    saved = sorted(_tensors(tiny_sd / "unet" / "diffusion_pytorch_model.safetensors"))
    assert sorted(bench.tensor_specs(model, "F32")) == saved
    header, data = bench.safetensors_header(bench.tensor_specs(model, "F16"))
    layout = {
        "models": {"unet": model},
        "files": [
            {
                "path": "unet/diffusion_pytorch_model.fp16.safetensors",
                "size": len(header) + data,
                "weights": {"model": "unet", "dtype": "F16"},
            },
            {"path": "unet/config.json", "size": 2, "text": "{}"},
            {"path": "big.ckpt", "size": 50_000_000},
        ],
    }
    files = bench.write_standins(layout, tmp_path / "standins")
    big = files["big.ckpt"].stat()
    assert big.st_size == 50_000_000 and big.st_blocks * 512 < 1_000_000  # a hole, not 50 MB of disk
    from diffusers import UNet2DConditionModel

    (tmp_path / "standins" / "unet" / "config.json").write_text(
        json.dumps({"_class_name": "UNet2DConditionModel", **config})
    )
    unet = UNet2DConditionModel.from_pretrained(str(tmp_path / "standins"), subfolder="unet", variant="fp16")
    assert all(int(p.detach().count_nonzero()) == 0 for p in unet.parameters())  # zeros, of the right shapes


@pytest.mark.parametrize("shape", ["sd15", "sdxl"])
def test_the_committed_layouts_hold_every_file_kind_and_computed_weight_sizes(bench, shape):
    layout = json.loads((ROOT / "benchmarks" / "layouts" / f"{shape}.json").read_text())
    paths = {f["path"] for f in layout["files"]}
    assert {
        "model_index.json",
        "unet/diffusion_pytorch_model.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_pytorch_model.fp16.safetensors",
    } <= paths
    assert any(p.count("/") == 0 and p.endswith((".ckpt", ".safetensors")) for p in paths)  # root checkpoints
    if shape == "sd15":
        assert {
            "unet/diffusion_pytorch_model.non_ema.safetensors",
            "safety_checker/model.safetensors",
            "unet/diffusion_pytorch_model.bin",
            "feature_extractor/preprocessor_config.json",
        } <= paths
    else:
        assert {
            "unet/model.onnx_data",
            "unet/openvino_model.bin",
            "unet/diffusion_flax_model.msgpack",
            "vae_1_0/diffusion_pytorch_model.safetensors",
            "vae_decoder/model.onnx",
        } <= paths
    assert layout["about"] and all(f["size"] > 0 and f["size_is"] for f in layout["files"])
    for f in (f for f in layout["files"] if f["size_is"] == "computed"):  # recomputed here from the meta models
        header, data = bench.safetensors_header(
            bench.tensor_specs(layout["models"][f["weights"]["model"]], f["weights"]["dtype"])
        )
        assert len(header) + data == f["size"], f["path"]
    fp32 = {f["path"]: f["size"] for f in layout["files"]}["unet/diffusion_pytorch_model.safetensors"]
    assert fp32 == pytest.approx({"sd15": 3_438_167_540, "sdxl": 10_270_077_736}[shape], abs=16)  # the Hub's sizes


#: the sizes published for Qwen-Image's transformer shards (the 2512 release, same architecture and names)
QWEN_IMAGE_SHARDS = [4989364312, 4984214160, 4946470000, 4984213736, 4946471896, 4946451560, 4908690520, 4984232856,
                     1170918840]  # fmt: skip
#: per flow shape: shards of (transformer, text encoder), the transformer's bytes per parameter, its parameters
FLOW = {"zimage": ((3, 3), 4, 6_154_908_736), "qwen-image": ((9, 4), 2, 20_430_401_088)}


@pytest.mark.parametrize("shape", sorted(FLOW))
def test_the_flow_layouts_are_the_real_repos_sharded_weights_and_the_rule_takes_only_what_trains(bench, shape):
    from benchmarks.layouts_flow import build_flow_layout
    from training.files import choose_files

    layout = json.loads((ROOT / "benchmarks" / "layouts" / f"{shape}.json").read_text())
    rebuilt = build_flow_layout(shape, bench.safetensors_header)  # from the meta modules, split as save_pretrained
    assert [(f["path"], f["size"]) for f in layout["files"]] == [(f["path"], f["size"]) for f in rebuilt["files"]]
    sizes = {f["path"]: f["size"] for f in layout["files"]}
    (n_transformer, n_text), width, params = FLOW[shape]
    for folder, stem, n in (
        ("transformer", "diffusion_pytorch_model", n_transformer),
        ("text_encoder", "model", n_text),
    ):
        shards = sorted(p for p in sizes if p.startswith(f"{folder}/{stem}-"))
        assert shards == [f"{folder}/{stem}-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
        index = json.loads(
            next(f["text"] for f in layout["files"] if f["path"] == f"{folder}/{stem}.safetensors.index.json")
        )
        assert sorted({f"{folder}/{v}" for v in index["weight_map"].values()}) == shards
        if folder == "transformer":  # the stored dtype's bytes, plus a header per shard
            assert index["metadata"]["total_size"] == width * params < sum(sizes[p] for p in shards)
    if shape == "qwen-image":
        assert [sizes[f"transformer/diffusion_pytorch_model-{i:05d}-of-00009.safetensors"] for i in range(1, 10)] == (
            QWEN_IMAGE_SHARDS
        )  # fmt: skip
    chosen = choose_files(list(sizes), layout["model_index"]).files
    assert {"model_index.json", "scheduler/scheduler_config.json", "vae/diffusion_pytorch_model.safetensors"} <= set(
        chosen
    )
    left = set(sizes) - set(chosen)  # the rest of the repo: documents, licence, generation config
    assert left and not [p for p in left if p.endswith((".safetensors", ".index.json")) or p.startswith("tokenizer/")]
    assert {"README.md", "text_encoder/generation_config.json"} <= left


def test_the_tiny_run_measures_the_previous_and_the_new_downloads(tmp_path):
    out = tmp_path / "downloads.jsonl"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--out", str(out), "--tmp", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(RECORD_KEYS <= set(r) and r["benchmark"] == "downloads" for r in records)
    by = {(r["phase"], r["recipe"], r["preloaded"]): r for r in records}
    before = by[("before", "dreambooth-lora", False)]
    lora = by[("after", "dreambooth-lora", False)]
    full = by[("after", "dreambooth-full", False)]
    preloaded = by[("after", "dreambooth-lora", True)]
    # the previous loading code fetched exactly the plain-file plan the full-size "before" runs download
    assert before["files"] == before["chosen_files"] and before["variant"] is None
    assert set(before["variants"].values()) == {None}
    assert lora["files"] == lora["chosen_files"] and set(lora["variants"].values()) == {"fp16"}
    assert full["variants"]["unet"] is None and full["variants"]["vae"] == "fp16"
    assert 0.4 * before["bytes"] < lora["bytes"] < 0.6 * before["bytes"]  # fp16 weights: about half
    assert lora["bytes"] < full["bytes"] < before["bytes"]
    assert all(r["cache_bytes_added"] == r["bytes"] for r in records)
    assert preloaded["bytes"] == 0 and preloaded["files"] == [] and preloaded["preload_list_bytes"] > 0
    fetched = {f for r in records for f in r["files"]}
    assert not [f for f in fetched if f.endswith((".bin", ".ckpt")) or ("/" not in f and f != "model_index.json")]


def _newest_full_size_records() -> dict[str, list[dict]]:
    """Per model shape, its records in the newest ``downloads-*-cpu.jsonl`` holding it."""
    results = sorted((ROOT / "benchmarks" / "results").glob("downloads-*-cpu.jsonl"))
    assert results, "run python benchmarks/downloads.py"
    newest: dict[str, list[dict]] = {}
    for path in results:
        records = [json.loads(line) for line in path.read_text().splitlines()]
        assert all(RECORD_KEYS <= set(r) for r in records)
        for shape in {r["model_shape"] for r in records}:
            newest[shape] = [r for r in records if r["model_shape"] == shape]
    return newest


def test_the_committed_full_size_figures_agree_with_the_current_file_choice():
    from training.files import choose_files
    from training.full import DreamBoothFull
    from training.spec import TrainParams

    newest = _newest_full_size_records()
    for shape in ("sd15", "sdxl"):
        files = [
            f["path"] for f in json.loads((ROOT / "benchmarks" / "layouts" / f"{shape}.json").read_text())["files"]
        ]
        index = json.loads((ROOT / "benchmarks" / "layouts" / f"{shape}.json").read_text())["model_index"]
        by = {(r["phase"], r["recipe"], r["preloaded"]): r for r in newest[shape]}
        before, lora = by[("before", "dreambooth-lora", False)], by[("after", "dreambooth-lora", False)]
        assert lora["chosen_files"] == choose_files(files, index).files
        assert before["chosen_files"] == choose_files(files, index, variant=None).files
        full = by[("after", "dreambooth-full", False)]
        assert (
            full["chosen_files"]
            == choose_files(files, index, trainable=DreamBoothFull.trainable_components(TrainParams())).files
        )
        assert 0.45 * before["bytes"] < lora["bytes"] < 0.55 * before["bytes"] and lora["bytes"] > 1e9
    preloaded = [r for r in newest["sd15"] if r["preloaded"]]
    assert preloaded and all(r["bytes"] == 0 and r["files"] == [] for r in preloaded)
    assert preloaded[0]["preload_list_bytes"] < 0.15 * preloaded[0]["whole_repo_bytes"]


@pytest.mark.parametrize("shape", sorted(FLOW))
def test_the_committed_flow_figures_download_the_files_that_train_once(shape):
    """Z-Image-Turbo and Qwen-Image: one copy of each component's weights, so the previous rule (plain files) and
    the trainer's fetch the same files, every one the rule picks; a Space whose preload list (``training.preload``)
    holds them downloads nothing."""
    from training.files import choose_files
    from training.preload import preload_files, recipe_trainable_sets
    from training.recipes import load_recipe_modules, registered_recipes

    layout = json.loads((ROOT / "benchmarks" / "layouts" / f"{shape}.json").read_text())
    sizes, index = {f["path"]: f["size"] for f in layout["files"]}, layout["model_index"]
    by = {(r["phase"], r["preloaded"]): r for r in _newest_full_size_records()[shape]}
    before, after, preloaded = by[("before", False)], by[("after", False)], by[("after", True)]
    chosen = choose_files(list(sizes), index).files
    assert before["chosen_files"] == after["chosen_files"] == chosen
    assert after["files"] == chosen and after["bytes"] == sum(sizes[f] for f in chosen) == before["bytes"]
    assert after["cache_bytes_added"] == after["bytes"] and after["variants"] == dict.fromkeys(after["variants"])
    load_recipe_modules()
    plist = preload_files(list(sizes), index, recipe_trainable_sets(registered_recipes()))
    assert plist == chosen and preloaded["preload_list_bytes"] == after["bytes"]
    assert preloaded["bytes"] == 0 and preloaded["files"] == [] and preloaded["whole_repo_bytes"] == sum(sizes.values())
