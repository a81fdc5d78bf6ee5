"""Peak host RAM of the trainer's loading, caching and training start at full size (see ../shared/benchmarks/README.md).

Why: small Space flavors have 15 GB of host RAM (t4-small, a10g-small); a trainer that needs more is killed.

    python benchmarks/host_ram.py                # full-size SD 1.5, SDXL, FLUX.2 [klein] 4B, FLUX.1, klein 9B, Z-Image,
                                                 # Z-Image-Turbo's layout, Qwen-Image (58 GB disk; its 41 GB
                                                 # transformer needs more RAM than 23 GB: scheduler/host_ram.py
                                                 # derives its figure instead)
    python benchmarks/host_ram.py --only flux1   # one model shape (random weights, CPU, minutes; FLUX: 34 GB disk)
    python benchmarks/host_ram.py --tiny         # tiny models: checks every phase in seconds

Each model shape is measured in a fresh process, through the trainer's own code. SD shapes: with the dtypes of a T4
run (mixed precision fp16: frozen UNet and text encoders fp16, VAE fp32), in three phases, each with its own peak:

- ``load``: ``training.models.load_components`` as the training script (``training/train.py``) calls it for the
  LoRA recipe (``load_for_lora``: the one place this script calls the trainer's loading), then the UNet's move to
  the GPU that follows it in the script's loading phase;
- ``cache``: the family's ``encode_images`` (5 instance images at the native resolution, flips on, as by default)
  and ``training.utils.batches.text_cond``, then the VAE and text encoders go "back" to the CPU as the script does;
- ``first_step``: the LoRA adapters, optimizer (``training.train.make_optimizer``) and LR schedule on the
  device-resident UNet, then one batch (``batches.make_batch``) and its conditioning (``batches.conditioning``).

FLUX, Z-Image and Qwen-Image shapes (``benchmarks/full_size_flux.py``: bf16 files as the repos ship them, except
``zimage-turbo``: Tongyi-MAI/Z-Image-Turbo's fp32 transformer shards, recorded under ``model_shape`` "zimage" with a
``layout``; trained in
bf16 on their family's default flavor: l4x1, Z-Image and Qwen-Image l40sx1; Qwen-Image's 8-bit base there is not
applied, as bitsandbytes quantizes on a GPU only) load the way the trainer stages them, in four phases: ``load``
(VAE, text encoders, tokenizers), ``cache`` (latents and the instance prompt's conditioning, then the text encoders
freed: ``release_text_encoders``), ``load_denoiser`` (the transformer, then its move to the GPU) and
``first_step``.

There is no GPU here: reading every weight, then ``.to("meta")``, stands in for ``.to("cuda")`` (the copy reads the
weights, then the host storage is freed the same way); the VAE and text encoders stay on the host and compute on the
CPU, so they and their activations (GPU memory on a real run) count in ``cache``: that phase is an upper bound; their
``.to("cpu")`` after caching becomes fresh host copies. CUDA's own host memory (driver, cuBLAS/cuDNN) is not included
(not measured here).

Peak = the kernel's resident high-water mark (VmHWM, reset per phase through /proc/self/clear_refs), with VmRSS and
RssAnon (anonymous memory: what file-backed, reclaimable mmap pages of the weight files are not) sampled every 20 ms.
The weight files the loading opened are seen through inotify, so ``weights`` says which files the trainer chose:
"fp32 files" (the plain ones) or "fp16 variant" (``*.fp16.safetensors``).
Records are appended to ``benchmarks/results/host_ram-<date>-cpu[-tiny].jsonl``.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import datetime as dt
import functools
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PHASES = ("load", "cache", "first_step")
STAGED_PHASES = ("load", "cache", "load_denoiser", "first_step")
FULL_SHAPES = ("sd15", "sdxl", "klein4b", "flux1", "klein9b", "zimage", "zimage-turbo", "qwen-image")
TINY_SHAPES = ("tiny-sd", "tiny-sdxl", "tiny-flux1", "tiny-klein")
#: the shapes of ``benchmarks/full_size_flux.py`` (bf16 folders, staged loading): FLUX, Z-Image and Qwen-Image
FLUX_SHAPES = {"klein4b", "flux1", "klein9b", "zimage", "zimage-turbo", "qwen-image"}
#: repo layouts measured under their model's memory shape (the records' ``model_shape``; ``layout`` names them):
#: Z-Image-Turbo's repo stores the transformer in fp32 (24.6 GB of shards), the trainer casts it to bf16 on load
LAYOUTS = {"zimage-turbo": ("zimage", "Tongyi-MAI/Z-Image-Turbo: fp32 transformer shards, bf16 text encoder and VAE")}
RECIPE = "dreambooth-lora"
N_IMAGES = 5
PROMPT = "a photo of sks dog"
MIXED_PRECISION = "fp16"  # a T4 has no bf16 hardware
STAGED_PRECISION = "bf16"  # FLUX trains in bf16 (its default flavor, l4x1, has bf16 hardware)
TINY_STAGED_RESOLUTION = 64  # tiny FLUX models in --tiny runs (their 2-block VAEs: 32 x 32 latents)
DEFAULT_MODELS_DIR = Path(tempfile.gettempdir()) / "host_ram_models"
GIB_KB = 2**20  # /proc reports kB
NOTE = (
    "CPU-only machine: reading every weight then .to('meta') stands in for .to('cuda') (frees the host storage the "
    "same way); the UNet leaves the host at the end of 'load', as the trainer moves it to the GPU; the VAE and text "
    "encoders stay on the host and compute the cache on the CPU, so 'cache' counts them and their activations "
    "(GPU memory on a real run): an upper bound; their .to('cpu') after caching is simulated by fresh host copies; "
    "CUDA's own host memory (driver, libraries) is not included (not measured here)"
)
STAGED_NOTE = (
    "CPU-only machine, the trainer's staged loading (FLUX): 'load' = VAE + text encoders + tokenizers; 'cache' = "
    "latents and the instance prompt's conditioning computed on the CPU (on a GPU run the encoders and their "
    "activations are on the GPU: an upper bound), then the text encoders freed; 'load_denoiser' = the transformer "
    "loaded and moved to the device (reading every weight then .to('meta') stands in for .to('cuda')); bf16 weights "
    "as the repos ship them; no quantized base (bitsandbytes quantizes on a GPU only); CUDA's own host memory not "
    "included. The weights stay mapped from their files (RssFile, reclaimable page cache): a phase that maps more "
    "than this machine's RAM (machine_ram_gib) is bounded by it, FLUX.1's 22.2 GiB transformer file on a 23 GiB "
    "machine; a machine with more RAM may keep up to the file's size resident"
)


# ---------------------------------------------------------------------------------------------- the trainer's loading
def load_for_lora(info):
    """The trainer's loading for the LoRA recipe under mixed precision fp16, exactly as ``training.train.train``
    calls it (step 2). The one call into the trainer's loading: re-run this script after that code changes.

    Works with the trainer before ``training.files`` (``trains_unet_fully``, every plain file) and after it
    (``trainable_components``: frozen components from their fp16 variant files)."""
    import torch

    from training.lora import DreamBoothLoRA
    from training.models import load_components
    from training.precision import weight_dtype_for
    from training.spec import TrainParams

    wdtype = weight_dtype_for(MIXED_PRECISION)
    params = TrainParams(mixed_precision=MIXED_PRECISION)
    if not hasattr(DreamBoothLoRA, "trainable_components"):  # the trainer before training.files
        full = DreamBoothLoRA.trains_unet_fully
        return load_components(
            info,
            unet_dtype=torch.float32 if full else wdtype,
            text_dtype=torch.float32 if (params.train_text_encoder and full) else wdtype,
        )
    trainable = DreamBoothLoRA.trainable_components(params)
    return load_components(
        info,
        unet_dtype=torch.float32 if "unet" in trainable else wdtype,
        text_dtype=torch.float32 if trainable & set(info.text_encoder_names) else wdtype,
        trainable=trainable,
    )


# ---------------------------------------------------------------------------------------------- measuring
def _status_kb() -> dict[str, int]:
    out: dict[str, int] = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0])
    return out


def machine_ram_gib() -> float:
    """This machine's RAM (MemTotal): a phase that maps more weight files than fit is bounded by it (the kernel
    drops clean file pages it has read), so its peak is a lower bound of what a bigger machine shows."""
    with open("/proc/meminfo") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
    return round(kb / GIB_KB, 1)


def rss_gib() -> float:
    """This process's resident memory now, GiB."""
    return _status_kb()["VmRSS"] / GIB_KB


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # 5: reset the peak RSS (VmHWM) to the current RSS
        return True
    except OSError:
        return False


class OpenedFiles:
    """The files opened in some folders from now on (Linux inotify ``IN_OPEN``, queued by the kernel and read once
    at the end): which weight files a load read, whatever library opened them. Empty where inotify is missing."""

    IN_OPEN = 0x20

    def __init__(self, folders: list[Path]):
        self._fd, self._wd = -1, {}
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            self._fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
            for folder in folders:
                wd = libc.inotify_add_watch(self._fd, str(folder).encode(), self.IN_OPEN) if self._fd >= 0 else -1
                if wd >= 0:
                    self._wd[wd] = folder
        except (OSError, AttributeError):
            self._fd = -1

    def read(self) -> set[Path]:
        """The files opened since the start (the watch is closed)."""
        buf = b""
        while self._fd >= 0:
            try:
                chunk = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                break
            buf += chunk
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        found, off = set(), 0
        while off + 16 <= len(buf):  # struct inotify_event: int wd; u32 mask, cookie, len; char name[len]
            wd, _mask, _cookie, n = struct.unpack_from("iIII", buf, off)
            name = buf[off + 16 : off + 16 + n].rstrip(b"\0").decode(errors="replace")
            if wd in self._wd and name:
                found.add(self._wd[wd] / name)
            off += 16 + n
        return found


@dataclasses.dataclass
class PhasePeak:
    peak_rss_gib: float
    peak_rss_anon_gib: float
    end_rss_gib: float
    seconds: float
    method: str


class RssMeter:
    """Peak resident memory of this process over one phase at a time."""

    def __init__(self, interval_s: float = 0.02):
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.is_set():
            s = _status_kb()
            self._rss = max(self._rss, s["VmRSS"])
            self._anon = max(self._anon, s.get("RssAnon", 0))
            self._stop.wait(self.interval_s)

    def start(self) -> None:
        s = _status_kb()
        self._rss, self._anon = s["VmRSS"], s.get("RssAnon", 0)
        self._hwm_ok = _reset_hwm()
        self._t0 = time.perf_counter()
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def stop(self) -> PhasePeak:
        assert self._thread is not None
        self._stop.set()
        self._thread.join()
        s = _status_kb()
        rss = max(self._rss, s["VmRSS"])
        anon = max(self._anon, s.get("RssAnon", 0))
        method = "VmRSS sampled every 20 ms"
        if self._hwm_ok:
            rss, method = max(rss, s["VmHWM"]), "VmHWM reset per phase (/proc/self/clear_refs) and " + method
        return PhasePeak(rss / GIB_KB, anon / GIB_KB, s["VmRSS"] / GIB_KB, time.perf_counter() - self._t0, method)


def weights_label(opened: list[str]) -> str | None:
    """ "fp16 variant" when the loading read any ``*.fp16.safetensors`` file, "fp32 files" when it read only plain
    ones, None when no weight file was seen."""
    if not opened:
        return None
    return "fp16 variant" if any(Path(p).name.endswith(".fp16.safetensors") for p in opened) else "fp32 files"


def files_dtype(model: Path, opened: list[str]) -> str:
    """The floating-point dtype(s) stored in the opened safetensors files (their headers), e.g. "bf16"."""
    kinds = set()
    for rel in opened:
        with (model / rel).open("rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        kinds |= {v["dtype"] for k, v in header.items() if k != "__metadata__" and v["dtype"].startswith(("F", "BF"))}
    names = {"F64": "fp64", "F32": "fp32", "F16": "fp16", "BF16": "bf16"}
    return "+".join(sorted(names.get(k, k.lower()) for k in kinds)) or "unknown"


def default_flavor() -> str:
    """A task's default hardware (``scheduler.task.Task.hardware``): the flavor SD 1.5 and SDXL LoRA runs get."""
    from scheduler.task import Task

    return next(f.default for f in dataclasses.fields(Task) if f.name == "hardware")


def to_device(module) -> None:
    """Stand-in for the trainer's ``module.to("cuda")``: every weight is read once (the copy to the GPU reads it, so
    the pages of weights still mapped from their file become resident), then the host storage is released the same
    way (``.to("meta")``)."""
    import torch

    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            if t.numel():
                t.float().sum() if t.dtype == torch.bool else t.sum()
    module.to("meta")


def back_from_device(module) -> None:
    """Stand-in for the trainer's ``module.to("cpu")`` of a module that was on the GPU: fresh host copies of its
    weights (what the copy back allocates), releasing what they replace (e.g. pages mapped from the weight file)."""
    import torch

    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            t.data = t.data.clone()


# ---------------------------------------------------------------------------------------------- one model shape
def load_staged(info, parts: tuple[str, ...], into=None):
    """The trainer's loading of a staged family (FLUX.1, FLUX.2 [klein]) for the LoRA recipe in bf16, exactly as
    ``training.train.train`` calls ``load_components`` (step 2: the text side with ``parts``, the denoiser later)."""
    import torch

    from training.lora import DreamBoothLoRA
    from training.models import load_components
    from training.precision import weight_dtype_for
    from training.spec import TrainParams

    wdtype = weight_dtype_for(STAGED_PRECISION)
    trainable = DreamBoothLoRA.trainable_components(TrainParams(mixed_precision=STAGED_PRECISION), type(info.family))
    return load_components(
        info, trainable=trainable, weight_dtype=wdtype,
        unet_dtype=torch.float32 if info.family.denoiser_name in trainable else wdtype,
        text_dtype=torch.float32 if trainable & set(info.text_encoder_names) else wdtype, parts=parts, into=into,
    )  # fmt: skip


def measure(model: Path, shape: str, images_dir: Path, work: Path, trainer: str = "working tree") -> list[dict]:
    """Run the phases in this process; return their ``host_ram`` records (``trainer``: which trainer code).

    SD shapes: ``load``, ``cache``, ``first_step``. A staged family (``ModelFamily.staged_loading``: FLUX.1,
    FLUX.2 [klein]) loads as the trainer does it: ``load`` is the text side (VAE, text encoders, tokenizers),
    ``cache`` encodes and then frees the text encoders, ``load_denoiser`` loads the transformer and moves it to the
    "device", then ``first_step``."""
    from training.models import inspect_base_model

    if inspect_base_model(str(model)).family.staged_loading:
        return measure_staged(model, shape, images_dir, work, trainer)
    import torch

    from training import data
    from training.lora import DreamBoothLoRA
    from training.models import inspect_base_model
    from training.progress import Progress
    from training.recipe_base import RunContext
    from training.spec import TrainSpec
    from training.train import make_optimizer
    from training.utils import batches
    from training.utils.runtime import free_memory, trainable_named_parameters

    import_rss = rss_gib()
    spec = TrainSpec.from_dict({"task_id": f"host-ram-{shape}", "base_model": str(model), "instance_prompt": PROMPT,
                                "images": str(images_dir), "params": {"mixed_precision": MIXED_PRECISION, "score": False}})  # fmt: skip
    p = spec.params
    ctx = RunContext(spec, work, Progress(None))
    recipe = DreamBoothLoRA()
    info = inspect_base_model(str(model))  # validating_input
    resolution = p.resolution or info.native_resolution
    images = data.load_images(images_dir, resolution)
    meter = RssMeter()
    peaks: dict[str, PhasePeak] = {}

    watch = OpenedFiles([model, *(d for d in sorted(model.iterdir()) if d.is_dir())])
    meter.start()
    comps = load_for_lora(info)
    to_device(comps.denoiser)  # the trainer's comps.denoiser.to(device) right after loading; it stays there while training
    peaks["load"] = meter.stop()
    opened = sorted(str(f.relative_to(model)) for f in watch.read() if f.name.endswith(".safetensors"))
    dtypes = {"unet": str(comps.denoiser.dtype), "vae": str(comps.vae.dtype),
              "text_encoders": [str(te.dtype) for te in comps.text_encoders]}  # fmt: skip

    meter.start()
    # the trainer moves the VAE and text encoders to the GPU too and caches there; here they compute on the CPU
    inst_lat = comps.family.encode_images(comps, images, resolution, p.random_flip)
    inst_cond = batches.text_cond(comps, spec.instance_prompt, frozen=True)
    back_from_device(comps.vae)  # the trainer's comps.vae.to("cpu") after caching
    for te in comps.text_encoders:  # and te.to("cpu") for the frozen text encoders
        back_from_device(te)
    free_memory()
    peaks["cache"] = meter.stop()

    meter.start()
    torch.manual_seed(p.seed)
    modules = recipe.configure_trainable(comps, ctx)  # adapters are made where the UNet is: on the "device"
    params = [t for _, t in trainable_named_parameters(modules)]
    optimizer = make_optimizer([{"params": params}], 1e-4, use_8bit=False, device=torch.device("cpu"))
    from diffusers.optimization import get_scheduler

    get_scheduler(p.lr_scheduler, optimizer, num_warmup_steps=0, num_training_steps=10)
    draw_time = functools.partial(comps.family.draw_time, comps=comps, params=p)
    batch = batches.make_batch(0, p.batch_size, inst_lat, None, p, draw_time)
    embeds = batches.conditioning(comps, modules, inst_cond, None, p.batch_size, torch.device("cpu"), False)["embeds"]
    assert batch["latents"].shape[0] == p.batch_size and embeds.shape[0] == p.batch_size
    peaks["first_step"] = meter.stop()

    return phase_records(shape, peaks, opened=opened, trainer=trainer, flavor=default_flavor(), precision=MIXED_PRECISION,
                         dtypes=dtypes, resolution=resolution, images=len(images), random_flip=p.random_flip,
                         import_rss=import_rss, note=NOTE)  # fmt: skip


def phase_records(shape: str, peaks: dict[str, PhasePeak], *, opened: list[str], trainer: str, flavor: str,
                  precision: str, dtypes: dict, resolution: int, images: int, random_flip: bool, import_rss: float,
                  note: str, weights: str | None = None) -> list[dict]:  # fmt: skip
    """One ``host_ram`` record per phase (``weights``: default ``weights_label(opened)``)."""
    import diffusers
    import torch

    from contract.flavors import FLAVORS

    memory_shape, layout = LAYOUTS.get(shape, (shape, None))
    common = {
        "benchmark": "host_ram",
        "model_shape": memory_shape,
        **({"layout": layout} if layout else {}),
        "recipe": RECIPE,
        "weights": weights or weights_label(opened),
        "trainer": trainer,
        "weight_files": opened,
        "flavor": flavor,
        "flavor_ram_gib": FLAVORS[flavor].ram_gib,
        "precision": precision,
        "dtypes": dtypes,
        "resolution": resolution,
        "images": images,
        "random_flip": random_flip,
        "import_rss_gib": round(import_rss, 3),
        "machine_ram_gib": machine_ram_gib(),
        "device": "cpu",
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
        "date": dt.date.today().isoformat(),
        "note": note,
    }
    return [
        {
            **common,
            "phase": name,
            "peak_rss_gib": round(pk.peak_rss_gib, 3),
            "peak_rss_anon_gib": round(pk.peak_rss_anon_gib, 3),
            "end_rss_gib": round(pk.end_rss_gib, 3),
            "phase_s": round(pk.seconds, 1),
            "method": pk.method,
        }  # fmt: skip
        for name, pk in peaks.items()
    ]


def measure_staged(model: Path, shape: str, images_dir: Path, work: Path, trainer: str = "working tree") -> list[dict]:
    """The four phases of a staged family (``measure``), through the trainer's own loading and caching."""
    import torch

    from training import data
    from training.lora import DreamBoothLoRA
    from training.models import inspect_base_model
    from training.progress import Progress
    from training.recipe_base import RunContext
    from training.spec import TrainSpec
    from training.train import make_optimizer
    from training.utils import batches
    from training.utils.runtime import free_memory, trainable_named_parameters

    import_rss = rss_gib()
    params: dict = {"mixed_precision": STAGED_PRECISION}
    if shape.startswith("tiny-"):
        params["resolution"] = TINY_STAGED_RESOLUTION
    spec = TrainSpec.from_dict({"task_id": f"host-ram-{shape}", "base_model": str(model), "instance_prompt": PROMPT,
                                "images": str(images_dir), "params": params})  # fmt: skip
    p = spec.params
    ctx = RunContext(spec, work, Progress(None))
    recipe = DreamBoothLoRA()
    info = inspect_base_model(str(model))
    family = info.family
    resolution = p.resolution or family.defaults.resolution or info.native_resolution
    images = data.load_images(images_dir, resolution)
    meter = RssMeter()
    peaks: dict[str, PhasePeak] = {}
    watch = OpenedFiles([model, *(d for d in sorted(model.iterdir()) if d.is_dir())])

    meter.start()  # the text side; the trainer then moves the VAE and text encoders to the GPU (here: they stay)
    comps = load_staged(info, ("vae", "text", "scheduler"))
    peaks["load"] = meter.stop()
    dtypes = {"vae": str(comps.vae.dtype), "text_encoders": [str(te.dtype) for te in comps.text_encoders]}

    meter.start()  # caching on the CPU (an upper bound: on a GPU run the encoders and activations are on the GPU)
    inst_lat = comps.family.encode_images(comps, images, resolution, p.random_flip)
    inst_cond = batches.text_cond(comps, spec.instance_prompt, frozen=True)
    back_from_device(comps.vae)  # the trainer's comps.vae.to("cpu")
    family.release_text_encoders(comps)  # big encoders leave the host RAM too
    free_memory()
    peaks["cache"] = meter.stop()

    meter.start()  # the trainer's load(parts=("denoiser",), into=comps).denoiser.to(device)
    load_staged(info, ("denoiser",), into=comps)
    to_device(comps.denoiser)
    peaks["load_denoiser"] = meter.stop()
    opened = sorted(str(f.relative_to(model)) for f in watch.read() if f.name.endswith(".safetensors"))
    dtypes["denoiser"] = str(comps.denoiser.dtype)

    meter.start()
    torch.manual_seed(p.seed)
    modules = recipe.configure_trainable(comps, ctx)
    params = [t for _, t in trainable_named_parameters(modules)]
    optimizer = make_optimizer([{"params": params}], 1e-4, use_8bit=False, device=torch.device("cpu"))
    from diffusers.optimization import get_scheduler

    get_scheduler(p.lr_scheduler, optimizer, num_warmup_steps=0, num_training_steps=10)
    draw_time = functools.partial(family.draw_time, comps=comps, params=p)
    batch = batches.make_batch(0, p.batch_size, inst_lat, None, p, draw_time)
    cond = batches.conditioning(comps, modules, inst_cond, None, p.batch_size, torch.device("cpu"), False)
    assert batch["latents"].shape[0] == p.batch_size and cond["embeds"].shape[0] == p.batch_size
    peaks["first_step"] = meter.stop()
    return phase_records(shape, peaks, opened=opened, trainer=trainer, flavor=family.defaults.hardware,
                         weights=f"{files_dtype(model, opened)} files",
                         precision=STAGED_PRECISION, dtypes=dtypes, resolution=resolution, images=len(images),
                         random_flip=p.random_flip, import_rss=import_rss, note=STAGED_NOTE)  # fmt: skip


# ---------------------------------------------------------------------------------------------- models and driver
def build_model(shape: str, models_dir: Path) -> Path:
    """The model folder of ``shape`` (built once): SD with plain fp32 files and ``fp16`` variant files; FLUX in
    bf16 as its repos ship it."""
    from benchmarks.full_size import add_fp16_variants, build_full_size_with_variants

    path = models_dir / shape
    if shape in ("tiny-sd", "tiny-sdxl"):
        from tests.tiny_models import build_tiny_sd, build_tiny_sdxl

        done = path / ".variants"
        if not done.exists():
            shutil.rmtree(path, ignore_errors=True)
            (build_tiny_sd if shape == "tiny-sd" else build_tiny_sdxl)(path)
            add_fp16_variants(path)
            done.touch()
        return path
    if shape in ("tiny-flux1", "tiny-klein"):
        from tests.tiny_flux import build_tiny_flux1, build_tiny_flux2_klein

        return (build_tiny_flux1 if shape == "tiny-flux1" else build_tiny_flux2_klein)(path)
    if shape in LAYOUTS:
        import torch

        from benchmarks.full_size_flux import build_full_size_flux

        return build_full_size_flux(LAYOUTS[shape][0], path, transformer_dtype=torch.float32)
    if shape in FLUX_SHAPES:
        from benchmarks.full_size_flux import build_full_size_flux

        return build_full_size_flux(shape, path)
    return build_full_size_with_variants(shape, path)


def image_size(model: Path, shape: str) -> int:
    """The side of the test images: the model's native resolution (SD: UNet sample size x VAE scale); FLUX,
    Z-Image and Qwen-Image: their family's default (512 / 1024 px, ``training.memory.NATIVE_RESOLUTION``), 64 px for
    the tiny FLUX models (their resolution in ``--tiny`` runs)."""
    from training.memory import NATIVE_RESOLUTION

    if not (model / "unet").is_dir():
        shape = LAYOUTS.get(shape, (shape,))[0]
        return TINY_STAGED_RESOLUTION if shape.startswith("tiny-") else NATIVE_RESOLUTION.get(shape, 512)
    size = json.loads((model / "unet" / "config.json").read_text())["sample_size"]
    return size * 2 ** (len(json.loads((model / "vae" / "config.json").read_text())["block_out_channels"]) - 1)


def _child(args: list[str], timeout: int) -> tuple[list[dict], str]:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    recs = [json.loads(x[7:]) for x in proc.stdout.splitlines() if x.startswith("RECORD ")]
    return recs, "" if proc.returncode == 0 else (proc.stderr[-1500:] or f"exit code {proc.returncode}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny models (seconds): checks every phase, not a figure")
    ap.add_argument("--only", action="append", default=[], help=f"model shape(s) to measure ({', '.join(FULL_SHAPES)})")
    ap.add_argument("--models-dir", default=str(DEFAULT_MODELS_DIR), help="where the model folders are built (kept)")
    ap.add_argument("--delete-models", action="store_true", help="remove each model folder after measuring it")
    ap.add_argument("--out", default=None, help="results file (default benchmarks/results/host_ram-<date>-cpu.jsonl)")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per build and per measurement")
    ap.add_argument("--trainer-root", default=None,
                    help="import the `training` package from this folder instead (e.g. an older commit's, made with "
                         "`git archive REV training | tar -x -C DIR`): measures that trainer's loading")  # fmt: skip
    ap.add_argument("--trainer-label", default=None, help="what --trainer-root holds, for the records")
    ap.add_argument("--build", default=None, help=argparse.SUPPRESS)  # child mode: build SHAPE
    ap.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # child mode: JSON job
    args = ap.parse_args(argv)
    models_dir = Path(args.models_dir)

    if args.build:
        print(f"BUILT {build_model(args.build, models_dir)}", flush=True)
        return 0
    if args.measure:
        job = json.loads(args.measure)
        if job.get("trainer_root"):
            sys.path.insert(0, job["trainer_root"])
        for rec in measure(Path(job["model"]), job["shape"], Path(job["images"]), Path(job["work"]), job["trainer"]):
            print("RECORD " + json.dumps(rec), flush=True)
        return 0

    shapes = TINY_SHAPES if args.tiny else FULL_SHAPES
    if args.only:
        shapes = tuple(s for s in shapes if s in args.only)
    suffix = "-tiny" if args.tiny else ""
    out = Path(
        args.out or ROOT / "benchmarks" / "results" / f"host_ram-{dt.date.today().isoformat()}-cpu{suffix}.jsonl"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    trainer = args.trainer_label or (f"training from {args.trainer_root}" if args.trainer_root else "working tree")
    failures = 0
    for shape in shapes:
        recs, err = [], ""
        try:
            _, err = _child(["--build", shape, "--models-dir", str(models_dir)], args.timeout)
            if not err:
                model = models_dir / shape
                work = Path(tempfile.mkdtemp(prefix=f"host-ram-{shape}-"))
                from tests.tiny_models import make_images

                make_images(work / "instance", N_IMAGES, size=image_size(model, shape))
                job = {"model": str(model), "shape": shape, "images": str(work / "instance"), "work": str(work),
                       "trainer_root": args.trainer_root, "trainer": trainer}  # fmt: skip
                recs, err = _child(["--measure", json.dumps(job)], args.timeout)
                shutil.rmtree(work, ignore_errors=True)
        except subprocess.TimeoutExpired:
            err = f"timeout {args.timeout}s"
        if args.delete_models:
            shutil.rmtree(models_dir / shape, ignore_errors=True)
        if err or len(recs) not in (len(PHASES), len(STAGED_PHASES)):
            failures += 1
            recs = [{"benchmark": "host_ram", "model_shape": shape, "recipe": RECIPE, "error": err or "no records",
                     "device": "cpu", "date": dt.date.today().isoformat()}]  # fmt: skip
        if args.tiny:
            for rec in recs:
                rec["note"] = "tiny random models: checks the benchmark path only, not a figure; " + rec.get("note", "")
        with out.open("a") as f:
            for rec in recs:
                f.write(json.dumps(rec) + "\n")
        for rec in recs:
            keys = ("model_shape", "phase", "weights", "peak_rss_gib", "peak_rss_anon_gib", "phase_s", "error")
            print(json.dumps({k: rec[k] for k in keys if k in rec}), flush=True)
    print(f"wrote {out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
