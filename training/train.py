"""DreamBooth training: THE FILE TO CUSTOMIZE. Read it top to bottom; change it; every run follows it.

``train(ctx, recipe)`` is one linear loop over any model family: set-up -> validate input -> load -> class images
-> cache latents and text conditioning -> optimizer -> resume -> train -> samples -> save. Two functions at module
level are the usual places to change:

- ``compute_loss``: the loss of one batch (noised input and target, the denoiser's prediction, per-sample
  weighting, the prior-preservation term);
- ``make_optimizer``: the optimizer and its parameter groups;
- ``validation_loss``: the held-out measure of the loss that the scores record (``contract.scores``).

To run a changed copy everywhere (the app in local mode and on a Space, Hugging Face Jobs, ``python -m training``):
copy this file (``cp training/train.py my_train.py``), edit the copy, and set ``TRAINING_SCRIPT=my_train.py``
(``python -m training --script my_train.py`` by hand). A copy must keep ``train(ctx, recipe) -> RunResult``.

What is model-specific (loading, latents, conditioning, noise and target, the forward call, sampling, output files)
is the model family's (``training/families/``); what trains (LoRA adapters or every weight) and how it is saved is
the recipe's (``training/lora.py``, ``training/full.py``); the helpers in ``training/utils/`` hold no state.

Speed by design: every image is encoded once (latent distributions cached), frozen text encoders run once per
prompt, frozen modules leave the GPU while training, no image is decoded in the loop, and losses are read back from
the GPU only at logging steps. Exact resume: all per-sample randomness comes from a generator seeded by (seed,
global sample index) (``utils.batches``), and checkpoints hold the trainable weights and optimizer states.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time

import torch
import torch.nn.functional as F

from contract.events import Captions, MemoryPlan
from training import data
from training.checkpoint import resume_run, save_run_checkpoint, settings_fingerprint
from training.demo import resolve_demo
from training.metrics import RunMetrics
from training.models import choose_model_files, inspect_base_model, load_components
from training.precision import (
    device_budget_gib,
    logical_numel,
    plan_memory,
    quantization_config,
    resolve_mixed_precision,
    weight_dtype_for,
)
from training.recipe_base import clamp_steps, ensure_dirs
from training.stopping import Terminated, deferred_stop
from training.utils import batches, sampling
from training.utils.auto_captions import caption_photos
from training.utils.evaluation import ScoreBook, adapters_off, point_prompts, scores_images, scoring_gib
from training.utils.results import RunResult
from training.utils.runtime import (
    choose_quantization,
    free_memory,
    peak_mem_gib,
    trainable_named_parameters,
    training_device,
)

log = logging.getLogger(__name__)

#: gradients are clipped to this total norm before each optimizer step
MAX_GRAD_NORM = 1.0
#: the validation loss's fixed draws (image, flip, noise, time): this many samples from a global sample index that
#: training never reaches, so every call sees the same ones
VALIDATION_SAMPLES, VALIDATION_INDEX = 8, 2**40


def compute_loss(comps, denoiser, batch: dict[str, torch.Tensor], cond: dict[str, torch.Tensor], params, *,
                 prior: bool, autocast) -> torch.Tensor:  # fmt: skip
    """The loss of one batch (``utils.batches.make_batch``; tensors on the training device): the family noises the
    latents and names the target (noise, velocity or flow), the denoiser predicts it under ``autocast``, and the
    loss is the mean squared error per sample times the family's weights (min-SNR for SD with ``snr_gamma``).
    With prior preservation (``prior``) the batch's second half are class samples, weighted by
    ``prior_loss_weight``."""
    family = comps.family
    times = batch["timesteps"]
    noisy, target = family.noisy_and_target(comps, batch["latents"], batch["noise"], times)
    with autocast:
        pred = family.predict(comps, denoiser, noisy, times, cond, batch["time_ids"])
    pred, target = pred.float(), target.float()
    per_sample = F.mse_loss(pred, target, reduction="none").mean(dim=tuple(range(1, pred.ndim)))
    weights = family.loss_weights(comps, times, params)
    if weights is not None:
        per_sample = per_sample * weights
    bs = params.batch_size
    if prior:
        return per_sample[:bs].mean() + params.prior_loss_weight * per_sample[bs:].mean()
    return per_sample.mean()


def make_optimizer(params: list[dict], lr: float, *, use_8bit: bool, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over the parameter groups ``params`` (fused on CUDA), or bitsandbytes' 8-bit AdamW when the memory
    plan asks for it (CUDA only; without bitsandbytes, transformers' Adafactor, whose second moments are factored).
    """
    kwargs = dict(lr=lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    if use_8bit and device.type == "cuda":
        try:
            import bitsandbytes as bnb

            return bnb.optim.AdamW8bit(params, **kwargs)
        except ImportError:
            log.warning("bitsandbytes is not installed; using Adafactor to save optimizer memory instead of 8-bit Adam")
            from transformers.optimization import Adafactor

            return Adafactor(params, lr=lr, scale_parameter=False, relative_step=False, warmup_init=False)
    if device.type == "cuda":
        return torch.optim.AdamW(params, fused=True, **kwargs)
    return torch.optim.AdamW(params, foreach=True, **kwargs)


@torch.no_grad()
def validation_loss(comps, modules: dict, inst_lat, inst_cond, captions, params, draw_time, autocast,
                    device: torch.device) -> float:  # fmt: skip
    """``compute_loss`` (no prior term) over ``VALIDATION_SAMPLES`` fixed draws from the photos' cached latents, in
    batches of ``params.batch_size``; ``modules``: the unwrapped trained modules. The same draws at every call, so
    points of one run compare: a loss that rises while training's falls is overfitting."""
    denoiser = modules[comps.family.denoiser_name]
    was_training = denoiser.training
    denoiser.eval()
    total = 0.0
    for start in range(0, VALIDATION_SAMPLES, params.batch_size):
        bs = min(params.batch_size, VALIDATION_SAMPLES - start)
        batch = batches.make_batch(VALIDATION_INDEX + start, bs, inst_lat, None, params, draw_time)
        inst = inst_cond if captions.conds is None else [captions.conds[i] for i in batch["image_index"].tolist()]
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast:
            cond = batches.conditioning(comps, modules, inst, None, bs, device, params.train_text_encoder)
        total += compute_loss(comps, denoiser, batch, cond, params, prior=False, autocast=autocast).item() * bs
    denoiser.train(was_training)
    return total / VALIDATION_SAMPLES


def optimizer_step(loss: torch.Tensor, optimizer, params: list[torch.Tensor], scaler, device: torch.device) -> None:
    """Backward (through the fp16 loss scaler when there is one), unscale, clip the gradient norm to
    ``MAX_GRAD_NORM``, step. Gradients stay until the caller's ``zero_grad``."""
    (scaler.scale(loss) if scaler else loss).backward()
    if scaler:
        scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM, foreach=device.type == "cuda")
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


def train(ctx, recipe) -> RunResult:
    """Train ``ctx.spec`` with ``recipe`` (what trains and how it is saved) and write ``ctx.output_dir``."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from diffusers.optimization import get_scheduler

    spec, p, prog = ctx.spec, ctx.spec.params, ctx.progress
    ensure_dirs(ctx)
    device = training_device()
    mp = resolve_mixed_precision(p.mixed_precision, device)
    acc = Accelerator(mixed_precision=mp, cpu=device.type == "cpu")
    wdtype = weight_dtype_for(mp)

    # 1. input, before any weights are loaded
    prog.phase("validating_input")
    info = inspect_base_model(resolve_demo(spec.base_model))  # the demo model is built here on first use
    family = info.family  # the model family, detected from model_index.json
    family.check_params(p)
    trainable = recipe.trainable_components(p, type(family))  # fp32 master weights from fp32 files; the rest fp16
    choose_model_files(info, trainable)  # every file training needs is there (no download yet)
    resolution = p.resolution or info.native_resolution
    with acc.main_process_first():
        folder = data.fetch_images(spec.images, ctx.workdir / "inputs" / "instance")
        # the photos; an edit model's pairs (``training.pairs``): the targets, each with its source, and held-out ones
        images, held_out = data.load_training_images(folder, resolution, edits=family.edits, label=family.label)
        user_class = None
        if spec.class_images is not None:
            cfolder = data.fetch_images(spec.class_images, ctx.workdir / "inputs" / "class")
            user_class = data.load_images(cfolder, resolution, what="class")
    steps = p.steps or clamp_steps(len(images), recipe.steps_per_image, recipe.min_steps, recipe.max_steps)
    lr = p.learning_rate or recipe.default_learning_rate
    warmup = min(p.lr_warmup_steps, steps // 5)  # warm-up can never eat the run
    result = RunResult(recipe.name, steps, resolution, lr, warmup, mp, model_info=info)
    if p.auto_captions:  # photos without their own .txt are described by a vision-language model, on this device
        prog.phase("captioning")
        result.captions = caption_photos(images, spec, ctx.output_dir, device=device, dtype=wdtype)
        prog.emit(Captions(captions=result.captions.captions, written=result.captions.written))

    # the frozen denoiser of a LoRA run may load quantized (QLoRA): decided before any weight is loaded
    result.quantization = quant = choose_quantization(info, p, trainable, device, wdtype, resolution)
    log.info("base model weights: %s (%s)", quant.kind, quant.reason)

    # 2. models (a staged family loads its denoiser only after caching, when the text encoders are gone)
    prog.phase("loading")
    train_te = p.train_text_encoder
    staged = family.staged_loading and not train_te and not (p.prior_preservation and user_class is None)
    load = functools.partial(
        load_components, info, trainable=trainable, weight_dtype=wdtype,
        unet_dtype=torch.float32 if family.denoiser_name in trainable else wdtype,
        text_dtype=torch.float32 if trainable & set(info.text_encoder_names) else wdtype,
        quantization_config=quantization_config(quant.kind, wdtype),
    )  # fmt: skip
    comps = load(parts=("vae", "text", "scheduler") if staged else None)
    for module in family.training_device_modules(comps):
        module.to(device)

    # 3. class images for prior preservation
    class_images: list[data.PreparedImage] = []
    if p.prior_preservation:
        class_images = user_class or sampling.class_images(comps, ctx, resolution, acc)

    # 4. cache latents and (frozen) text conditioning
    prog.phase("caching_latents")
    inst_lat = family.encode_images(comps, images, resolution, p.random_flip)
    cls_lat = family.encode_images(comps, class_images, resolution, p.random_flip) if class_images else None
    inst_cond = batches.text_cond(comps, spec.instance_prompt, frozen=not train_te)
    captions = batches.caption_conds(comps, images, spec, inst_cond, frozen=not train_te)  # .conds None: no captions
    result.captioned = captions.captioned
    cls_cond = batches.text_cond(comps, spec.class_prompt or "", frozen=not train_te) if class_images else None
    sample_prompts = point_prompts(spec)  # the validation prompts, and with a scoring model the built-in ones too
    own_samples = [q for q in sample_prompts if q in p.validation_prompts]  # the run's samples (first), shown
    image_scores = scores_images(spec) and not family.edits  # an edit is scored by its validation loss only
    sample_conds = None
    if family.edits:  # the samples edit the held-out sources (else the first pair's), by label
        first = dataclasses.replace(images[0].control, caption=images[0].caption)
        sample_conds = family.sample_conds(comps, held_out or [first], spec.instance_prompt)
        sample_prompts = own_samples = list(sample_conds)
    elif family.free_text_encoders_after_caching and not train_te:  # samples then use cached conditioning
        sample_conds = {q: batches.text_cond(comps, q, frozen=True) for q in sample_prompts}
    comps.vae.to("cpu")  # only needed again for samples
    if not train_te:
        family.release_text_encoders(comps)
    free_memory()
    if staged:
        load(parts=("denoiser",), into=comps).denoiser.to(device)

    # 5. trainable parameters, memory plan, optimizer, LR schedule
    set_seed(p.seed)
    modules = recipe.configure_trainable(comps, ctx)
    named = trainable_named_parameters(modules)
    params = [t for _, t in named]
    n_trainable = sum(t.numel() for t in params)
    n_frozen = sum(logical_numel(t) for m in modules.values() for t in m.parameters()) - n_trainable
    result.memory_plan = plan = plan_memory(
        device=device, frozen_params=n_frozen, trainable_params=n_trainable,
        unet_params=sum(logical_numel(t) for t in comps.denoiser.parameters()),
        latent_size=resolution // info.vae_scale_factor, samples_per_step=p.batch_size * (2 if class_images else 1),
        weight_bytes=torch.finfo(wdtype).bits // 8, gradient_checkpointing=p.gradient_checkpointing,
        use_8bit_adam=p.use_8bit_adam, budget_gib=device_budget_gib(device, p.memory_budget_gib),
        quantized_base=quant.kind, quantization_reason=quant.reason,
    )  # fmt: skip
    prog.emit(MemoryPlan(quantized_base=quant.kind, gradient_checkpointing=plan.gradient_checkpointing,
                         use_8bit_adam=plan.use_8bit_adam, estimate_gib=round(plan.estimate_gib, 2), source=plan.source,
                         device=device.type, scoring_gib=scoring_gib(spec, device)))  # fmt: skip
    if plan.gradient_checkpointing:
        comps.denoiser.enable_gradient_checkpointing()
        if train_te:
            for te in comps.text_encoders:
                te.gradient_checkpointing_enable()
    optimizer = make_optimizer([{"params": params}], lr, use_8bit=plan.use_8bit_adam, device=device)
    # diffusers' "constant" ignores a warm-up: with one, the rate rises over it, then stays
    schedule = "constant_with_warmup" if p.lr_scheduler == "constant" and warmup else p.lr_scheduler
    lr_sched = get_scheduler(schedule, optimizer, num_warmup_steps=warmup, num_training_steps=steps)

    # Only the modules go through accelerate (DDP when distributed). The optimizer stays ours: accelerate's wrapper
    # reads the loss scale back every step (a GPU sync); torch's GradScaler with fused AdamW does not.
    names = list(modules)
    prepared = acc.prepare(*[modules[n] for n in names])
    wrapped = dict(zip(names, prepared if len(names) > 1 else [prepared], strict=True))
    scaler = torch.amp.GradScaler(device.type) if mp == "fp16" else None
    autocast = torch.autocast(device.type, dtype=wdtype, enabled=mp != "no")
    denoiser = wrapped[family.denoiser_name]
    if p.compile and device.type == "cuda":
        denoiser = torch.compile(denoiser)
    denoiser.train()

    # 6. resume (only from a checkpoint of the same settings)
    fingerprint = settings_fingerprint(recipe, spec, resolution, captions.digest)
    checkpoint = functools.partial(save_run_checkpoint, ctx, named=named, optimizer=optimizer, lr_sched=lr_sched,
                                   scaler=scaler, acc=acc, recipe=recipe, fingerprint=fingerprint)  # fmt: skip
    start = resume_run(ctx, named, optimizer, lr_sched, scaler, acc, fingerprint=fingerprint, steps=steps)
    samples = functools.partial(sampling.take_samples, comps, wrapped, ctx, acc=acc, resolution=resolution,
                                cached=sample_conds, prompts=sample_prompts)  # fmt: skip
    draw_time = functools.partial(family.draw_time, comps=comps, params=p)

    # 6b. scores (``contract.scores``): each sampling point's images against the photos and prompts, its validation
    # loss and (LoRA) its weights; the base model first: the same prompts and seeds without the fine-tune
    book = ScoreBook(ctx, images, sample_prompts, keep_weights=recipe.keeps_scored_weights, start=start,
                     device=device, images_scored=not family.edits) if p.score and acc.is_main_process else None  # fmt: skip

    def unwrapped() -> dict:
        return {n: acc.unwrap_model(m) for n, m in wrapped.items()}

    def sample_point(step: int, *, base: bool = False) -> None:
        if base:  # the base model's images only feed the image scores (none without a scoring model)
            shots = samples(step, shown=0) if image_scores else {}
        else:
            shots = samples(step, shown=len(own_samples))
            result.sample_paths.update({q: shots[q] for q in own_samples if q in shots})
        if book is not None:
            loss = validation_loss(comps, unwrapped(), inst_lat, inst_cond, captions, p, draw_time, autocast, device)
            book.score(step, shots, loss, base=base)
            if not base:
                book.keep(step, lambda folder: recipe.save_outputs(
                    comps, unwrapped(), dataclasses.replace(ctx, output_override=folder)))  # fmt: skip

    if p.score:
        with adapters_off(wrapped.values()) as off:  # a LoRA's base is its adapters turned off
            if off or start == 0:  # (a resumed full fine-tune keeps the base it scored before, if any)
                sample_point(0, base=True)

    # 7. train
    prog.phase("training")
    prog.start_bar(steps, initial=start)
    world, rank, bs = acc.num_processes, acc.process_index, p.batch_size
    log_every = p.log_every or (1 if steps <= 100 else 10)
    # The Hub mirror is a commit to the queue repo: at most about four per run (plus the final one and a stop).
    hub_every = (p.checkpoint_every or 1) * max(1, math.ceil(steps / (4 * (p.checkpoint_every or steps))))
    loss_sum, loss_n, t_last, s_last = torch.zeros((), device=device), 0, time.perf_counter(), start
    every_sample = sampling.sample_every(steps, p.validation_every) if sample_prompts else None
    result.metrics = metrics = RunMetrics()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with deferred_stop(acc.num_processes == 1) as stop:
        for step in range(start, steps):
            batch = batches.make_batch((step * world + rank) * bs, bs, inst_lat, cls_lat, p, draw_time)
            inst = inst_cond if captions.conds is None else [captions.conds[i] for i in batch["image_index"].tolist()]
            if device.type == "cuda":  # pinned: the copies below then never wait for the GPU queue to drain
                batch = {k: v.pin_memory() for k, v in batch.items()}
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with autocast:
                cond = batches.conditioning(comps, wrapped, inst, cls_cond, bs, device, train_te)
            loss = compute_loss(comps, denoiser, batch, cond, p, prior=cls_lat is not None, autocast=autocast)
            optimizer_step(loss, optimizer, params, scaler, device)
            lr_sched.step()
            optimizer.zero_grad(set_to_none=True)

            done = step + 1
            loss_sum += loss.detach()
            loss_n += 1
            recipe.on_step(done, ctx)
            if done % log_every == 0 or done == steps:
                now = time.perf_counter()
                rate = (done - s_last) / max(now - t_last, 1e-9)
                mean_loss = acc.reduce(loss_sum, reduction="mean").item() / max(loss_n, 1)
                prog.step(step=done, total=steps, loss=mean_loss, lr=lr_sched.get_last_lr()[0], steps_per_s=rate,
                          eta_s=(steps - done) / max(rate, 1e-9), peak_mem_gib=peak_mem_gib(device))  # fmt: skip
                loss_sum.zero_()
                loss_n, t_last, s_last = 0, now, done
                result.last_loss = mean_loss
                metrics.log(done, mean_loss, now)
                prog.advance_bar(0, loss=f"{mean_loss:.4f}")
            prog.advance_bar(1)
            pause_start = time.perf_counter()
            if p.checkpoint_every and done % p.checkpoint_every == 0 and done < steps:
                checkpoint(done, mirror=done % hub_every == 0)
            if every_sample and done % every_sample == 0 and done < steps:
                sample_point(done)
                prog.phase("training")
                denoiser.train()
            metrics.paused(time.perf_counter() - pause_start)
            if stop.requested:  # SIGTERM: keep this step's progress, then stop
                checkpoint(done)
                stop.requested = False
                raise Terminated(f"stopped by SIGTERM after step {done}; checkpoint saved")

    # 8. final samples, outputs, final checkpoint (kept so that a failed upload loses nothing)
    acc.wait_for_everyone()
    if sample_prompts:
        sample_point(steps)
    prog.phase("saving")
    if acc.is_main_process:
        result.saved_files = recipe.save_outputs(comps, unwrapped(), ctx)
        if book is not None:  # the picked checkpoint becomes the main weights
            result.scores = book.finish(result.saved_files)
        from training.card import write_model_card

        write_model_card(ctx, result, comps)
        metrics.write(
            ctx.output_dir, steps=steps, resolution=resolution, recipe=recipe.name, base_model=spec.base_model
        )
    if p.checkpoint_every or spec.checkpoint is not None or spec.output is not None:
        checkpoint(steps)
    acc.wait_for_everyone()
    return result
