"""The DreamBooth training loop shared by the LoRA and full fine-tune recipes, over any model family.

One linear ``run``: validate input -> load -> (class images) -> cache latents and text embeddings -> train ->
sample -> save. Everything model-specific (loading, latents, conditioning, noising and loss target, the forward
call, sampling, output formats) is the model family's (``training.families``, detected from the base model);
recipes subclass ``DreamBoothRecipe`` and decide what is trainable and how it is saved.

Speed by design: the VAE encodes every image once (latent distributions cached); frozen text encoders run once per
prompt; frozen modules leave the GPU during training; attention is PyTorch SDPA (diffusers' default); no image is
decoded in the loop; losses are read back from the GPU only at logging steps.

Exact resume: all per-sample randomness (which image, flip, timestep, noise) comes from a generator seeded by
(seed, global sample index), so a resumed run replays the same samples; checkpoints hold the trainable weights
and the optimizer / LR-scheduler / grad-scaler states.

Per-image captions (``training.data``): each instance sample is conditioned on the prompt of the image it drew (its
caption, or the instance prompt); a run without captions conditions every instance sample on the instance prompt.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from training import checkpoint as ckpt_mod
from training import data, memory
from training.demo import resolve_demo
from training.families.base import Components, LatentSet, TextCond
from training.families.sd import uniform_timestep
from training.metrics import RunMetrics
from training.models import choose_model_files, inspect_base_model, load_components
from training.precision import (
    QuantizationChoice,
    device_budget_gib,
    logical_numel,
    make_optimizer,
    plan_memory,
    plan_quantization,
    quantization_config,
    resolve_mixed_precision,
    torchao_available,
    weight_dtype_for,
)
from training.recipe_base import Recipe, RunContext, ensure_dirs
from training.recipe_base import clamp_steps as default_steps  # one steps policy, shared with the form
from training.stopping import Terminated, deferred_stop

log = logging.getLogger(__name__)


def sample_generator(seed: int, index: int) -> torch.Generator:
    """The generator for global sample ``index`` (independent of process count and of resume)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + index * 7_919 + 12_345) % (2**63 - 1))


#: with validation prompts and no ``validation_every``, samples are taken this many times per run (the last at the end)
SAMPLES_PER_RUN = 4
#: no sample before the end of a run shorter than SAMPLES_PER_RUN times this (a few-step test or smoke run pays for
#: one sampling pass, not one per step)
MIN_STEPS_BETWEEN_SAMPLES = 25


def sample_every(steps: int, validation_every: int | None) -> int | None:
    """Steps between samples during training: ``validation_every`` if set (0: only at the end), else a quarter of
    the run (``SAMPLES_PER_RUN`` samples in all, at least ``MIN_STEPS_BETWEEN_SAMPLES`` apart); None when no
    sample is taken before the end."""
    if validation_every is not None:
        return validation_every or None
    every = steps // SAMPLES_PER_RUN
    return every if every >= MIN_STEPS_BETWEEN_SAMPLES else None


class DreamBoothRecipe(Recipe):
    """Base of the DreamBooth recipes. Subclasses set what trains (``configure_trainable``) and how it saves."""

    #: checkpoints resume across recipes of the same family (e.g. a subclass adding hooks); set by subclasses
    checkpoint_family = "dreambooth"
    #: full fine-tune checkpoints are several GB (weights + Adam state): kept locally only, one at a time
    hub_checkpoints = True
    max_checkpoints_kept: int | None = None

    # ---- hooks for subclasses -------------------------------------------------------------------------------------
    def configure_trainable(self, comps: Components, ctx: RunContext) -> dict[str, torch.nn.Module]:
        """Make parameters trainable; return the modules holding them by name ("unet", "text_encoder", ...)."""
        raise NotImplementedError

    def save_outputs(self, comps: Components, modules: dict[str, torch.nn.Module], ctx: RunContext) -> list[str]:
        """Write the trained weights into ``ctx.output_dir``; return the written file names."""
        raise NotImplementedError

    def on_step(self, step: int, ctx: RunContext) -> None:
        """Called after every optimizer step (1-based); a plug-in point for extra logging or fault injection."""

    # ---- the run ---------------------------------------------------------------------------------------------------
    def run(self, ctx: RunContext) -> None:
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        spec, p, prog = ctx.spec, ctx.spec.params, ctx.progress
        ensure_dirs(ctx)
        from accelerate import PartialState

        device = PartialState(cpu=not torch.cuda.is_available()).device
        if device.type == "cuda":  # fixed shapes: let cuDNN pick the fastest kernels; TF32 for fp32 matmuls
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        mp = resolve_mixed_precision(p.mixed_precision, device)
        acc = Accelerator(mixed_precision=mp, cpu=device.type == "cpu")
        self.acc = acc
        wdtype = weight_dtype_for(mp)

        # 1. input, before any weights are loaded
        prog.phase("validating_input")
        info = inspect_base_model(resolve_demo(spec.base_model))  # the demo model is built here on first use
        self.model_info, family = info, info.family  # the model family, detected from model_index.json
        family.check_params(p)
        trainable = self.trainable_components(p, type(family))  # fp32 master weights from fp32 files; the rest fp16
        choose_model_files(info, trainable)  # every file training needs is there (no download yet)
        resolution = p.resolution or info.native_resolution
        with acc.main_process_first():
            folder = data.fetch_images(spec.images, ctx.workdir / "inputs" / "instance")
            images = data.load_images(folder, resolution)
            user_class = None
            if spec.class_images is not None:
                cfolder = data.fetch_images(spec.class_images, ctx.workdir / "inputs" / "class")
                user_class = data.load_images(cfolder, resolution, what="class")
        steps = p.steps or default_steps(len(images), self.steps_per_image, self.min_steps, self.max_steps)
        lr = p.learning_rate or self.default_learning_rate
        warmup = min(p.lr_warmup_steps, steps // 5)  # warm-up can never eat the run
        self.resolution, self.steps = resolution, steps

        # the frozen denoiser of a LoRA run may load quantized (QLoRA): decided before any weight is loaded
        self.quantization = quant = self.choose_quantization(info, p, trainable, device, wdtype, resolution)
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
            class_images = user_class or self._class_images(comps, ctx, resolution, acc)

        # 4. caching
        prog.phase("caching_latents")
        inst_lat = self._encode_images(comps, images, resolution, p.random_flip)
        cls_lat = self._encode_images(comps, class_images, resolution, p.random_flip) if class_images else None
        inst_cond = self._text_cond(comps, spec.instance_prompt, frozen=not train_te)
        image_conds = self._caption_conds(comps, images, spec, inst_cond, frozen=not train_te)  # None: no captions
        cls_cond = self._text_cond(comps, spec.class_prompt or "", frozen=not train_te) if class_images else None
        if family.free_text_encoders_after_caching and not train_te:  # samples then use cached conditioning
            self.sample_conds = {q: self._text_cond(comps, q, frozen=True) for q in p.validation_prompts}
        comps.vae.to("cpu")  # only needed again for samples
        if not train_te:
            family.release_text_encoders(comps)
        _free_memory()
        if staged:
            load(parts=("denoiser",), into=comps).denoiser.to(device)

        # 5. trainable parameters, optimizer, schedule
        set_seed(p.seed)
        modules = self.configure_trainable(comps, ctx)
        named = trainable_named_parameters(modules)
        params = [t for _, t in named]
        n_trainable = sum(t.numel() for t in params)
        n_frozen = sum(logical_numel(t) for m in modules.values() for t in m.parameters()) - n_trainable
        plan = plan_memory(
            device=device,
            frozen_params=n_frozen,
            trainable_params=n_trainable,
            unet_params=sum(logical_numel(t) for t in comps.denoiser.parameters()),
            latent_size=resolution // info.vae_scale_factor,
            samples_per_step=p.batch_size * (2 if class_images else 1),
            weight_bytes=torch.finfo(wdtype).bits // 8,
            gradient_checkpointing=p.gradient_checkpointing,
            use_8bit_adam=p.use_8bit_adam,
            budget_gib=device_budget_gib(device, p.memory_budget_gib),
            quantized_base=quant.kind,
            quantization_reason=quant.reason,
        )
        self.memory_plan = plan
        prog.emit("memory_plan", quantized_base=quant.kind, gradient_checkpointing=plan.gradient_checkpointing,
                  use_8bit_adam=plan.use_8bit_adam, estimate_gib=round(plan.estimate_gib, 2), source=plan.source)  # fmt: skip
        if plan.gradient_checkpointing:
            comps.denoiser.enable_gradient_checkpointing()
            if train_te:
                for te in comps.text_encoders:
                    te.gradient_checkpointing_enable()
        optimizer = make_optimizer([{"params": params}], lr, use_8bit=plan.use_8bit_adam, device=device)
        from diffusers.optimization import get_scheduler

        lr_sched = get_scheduler(p.lr_scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=steps)

        names = list(modules)
        # Only the modules go through accelerate (DDP when distributed). The optimizer stays ours: accelerate's
        # wrapper reads the loss scale back every step (a GPU sync); torch's GradScaler with fused AdamW does not.
        prepared = acc.prepare(*[modules[n] for n in names])
        wrapped = dict(zip(names, prepared if len(names) > 1 else [prepared], strict=True))
        self.scaler = torch.amp.GradScaler(device.type) if mp == "fp16" else None
        autocast = torch.autocast(device.type, dtype=wdtype, enabled=mp != "no")
        denoiser = wrapped[family.denoiser_name]
        if p.compile and device.type == "cuda":
            denoiser = torch.compile(denoiser)
        denoiser.train()

        # 6. resume
        start = self._resume(ctx, named, optimizer, lr_sched, acc)

        # 7. train
        prog.phase("training")
        prog.start_bar(steps, initial=start)
        world, rank, bs = acc.num_processes, acc.process_index, p.batch_size
        log_every = p.log_every or (1 if steps <= 100 else 10)
        # The Hub mirror is a commit to the queue repo: at most about four per run (plus the final one and a stop).
        hub_every = (p.checkpoint_every or 1) * max(1, math.ceil(steps / (4 * (p.checkpoint_every or steps))))
        draw_time = functools.partial(family.draw_time, comps=comps, params=p)
        loss_sum, loss_n, t_last, s_last = torch.zeros((), device=device), 0, time.perf_counter(), start
        every_sample = sample_every(steps, p.validation_every) if p.validation_prompts else None
        self.metrics = metrics = RunMetrics()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with deferred_stop(acc.num_processes == 1) as stop:
            for step in range(start, steps):
                base_index = (step * world + rank) * bs
                batch = self._make_batch(base_index, bs, inst_lat, cls_lat, p, draw_time)
                cond = inst_cond if image_conds is None else [image_conds[i] for i in batch["image_index"].tolist()]
                if device.type == "cuda":  # pinned: the copies below then never wait for the GPU queue to drain
                    batch = {k: v.pin_memory() for k, v in batch.items()}
                loss = self._step_loss(comps, denoiser, wrapped, batch, cond, cls_cond, device, autocast, p,
                                       prior=class_images != [])  # fmt: skip
                optimizer_step(loss, optimizer, params, self.scaler, device)
                lr_sched.step()
                optimizer.zero_grad(set_to_none=True)

                done = step + 1
                loss_sum += loss.detach()
                loss_n += 1
                self.on_step(done, ctx)
                if done % log_every == 0 or done == steps:
                    now = time.perf_counter()
                    rate = (done - s_last) / max(now - t_last, 1e-9)
                    mean_loss = acc.reduce(loss_sum, reduction="mean").item() / max(loss_n, 1)
                    prog.step(
                        step=done,
                        total=steps,
                        loss=mean_loss,
                        lr=lr_sched.get_last_lr()[0],
                        steps_per_s=rate,
                        eta_s=(steps - done) / max(rate, 1e-9),
                        peak_mem_gib=_peak_mem_gib(device),
                    )
                    loss_sum.zero_()
                    loss_n, t_last, s_last = 0, now, done
                    self.last_loss = mean_loss
                    metrics.log(done, mean_loss, now)
                    prog.advance_bar(0, loss=f"{mean_loss:.4f}")
                prog.advance_bar(1)
                pause_start = time.perf_counter()
                if p.checkpoint_every and done % p.checkpoint_every == 0 and done < steps:
                    self._checkpoint(ctx, done, named, optimizer, lr_sched, acc, mirror=done % hub_every == 0)
                if every_sample and done % every_sample == 0 and done < steps:
                    self._samples(comps, wrapped, ctx, done, acc)
                    denoiser.train()
                metrics.paused(time.perf_counter() - pause_start)
                if stop.requested:  # SIGTERM: keep this step's progress, then stop
                    self._checkpoint(ctx, done, named, optimizer, lr_sched, acc)
                    stop.requested = False
                    raise Terminated(f"stopped by SIGTERM after step {done}; checkpoint saved")

        # 8. final samples, outputs, final checkpoint (kept so a failed upload loses nothing)
        acc.wait_for_everyone()
        if p.validation_prompts:
            self._samples(comps, wrapped, ctx, steps, acc)
        prog.phase("saving")
        if acc.is_main_process:
            unwrapped = {n: acc.unwrap_model(m) for n, m in wrapped.items()}
            self.saved_files = self.save_outputs(comps, unwrapped, ctx)
            from training.card import write_model_card

            write_model_card(ctx, self, comps)
            metrics.write(ctx.output_dir, steps=steps, resolution=resolution, recipe=self.name, base_model=spec.base_model)
        if p.checkpoint_every or spec.checkpoint is not None or spec.output is not None:
            self._checkpoint(ctx, steps, named, optimizer, lr_sched, acc)
        acc.wait_for_everyone()

    # ---- pieces ----------------------------------------------------------------------------------------------------
    def choose_quantization(self, info, p, trainable: frozenset[str], device: torch.device, wdtype: torch.dtype,
                            resolution: int) -> QuantizationChoice:  # fmt: skip
        """``plan_quantization`` for this run: a LoRA run when the recipe trains no denoiser weight in place, the
        device budget (the task's ``memory_budget_gib`` or the GPU's memory; none without a GPU, where diffusers
        cannot quantize, so "auto" stays unquantized), the GPU's compute capability and the family's denoiser size
        (``denoiser_param_count``)."""
        family = info.family
        cuda = device.type == "cuda"
        return plan_quantization(
            p.quantize_base,
            lora=family.denoiser_name not in trainable,
            denoiser_params=denoiser_param_count(info),
            budget_gib=device_budget_gib(device, p.memory_budget_gib) if cuda else None,
            compute_capability=tuple(torch.cuda.get_device_capability(device)) if cuda else None,
            fp8_available=torchao_available(),
            weight_bytes=torch.finfo(wdtype).bits // 8,
            resolution=resolution,
            samples_per_step=p.batch_size * (2 if p.prior_preservation else 1),
            gradient_checkpointing=p.gradient_checkpointing,
            model_shape=memory.shape_for_unet_params(denoiser_param_count(info)),  # the memory table's, if any
        )  # fmt: skip

    def _encode_images(self, comps: Components, images: list[data.PreparedImage], resolution: int, flip: bool) -> LatentSet:
        return comps.family.encode_images(comps, images, resolution, flip)

    @torch.no_grad()
    def _text_cond(self, comps: Components, prompt: str, frozen: bool) -> TextCond:
        family = comps.family
        ids = family.tokenize(comps, prompt)
        if not frozen:
            return TextCond(ids)
        out = family.encode_prompt(comps, comps.text_encoders, ids)
        return TextCond(ids, {k: v.detach() for k, v in out.items() if v is not None})

    def _caption_conds(self, comps: Components, images: list[data.PreparedImage], spec, inst: TextCond,
                       frozen: bool) -> list[TextCond] | None:  # fmt: skip
        """Each instance image's conditioning (``data.caption_prompt``; one ``_text_cond`` per distinct prompt, the
        instance prompt's is ``inst``) when any image has a caption; None when none has (every sample: ``inst``)."""
        self.captioned = (sum(im.caption is not None for im in images), len(images))  # (with a caption, all): the card
        self.caption_digest = None
        if not self.captioned[0]:
            return None
        prompts = [data.caption_prompt(im.caption, spec.instance_prompt, spec.class_prompt) for im in images]
        self.caption_digest = hashlib.sha256("\0".join(prompts).encode()).hexdigest()[:16]
        conds = {spec.instance_prompt: inst}
        for prompt in prompts:
            if prompt not in conds:
                conds[prompt] = self._text_cond(comps, prompt, frozen)
        return [conds[prompt] for prompt in prompts]

    def _conditioning(self, comps, wrapped, inst: TextCond | list[TextCond], cls: TextCond | None, bs: int, device,
                      train_te: bool):  # fmt: skip
        """The batch's conditioning tensors: instance block then class block, each repeated ``bs`` times; ``inst``
        may instead be one TextCond per instance sample (per-image captions)."""
        conds = [inst] + ([cls] if cls is not None else [])
        if isinstance(inst, list):  # one per instance sample, then the class prompt once per class sample
            conds, bs = inst + [cls] * len(inst) * (cls is not None), 1
        if train_te:  # one forward per encoder for all prompts (a DDP module may run only once per step)
            encs = [wrapped.get(n, te) for n, te in zip(comps.info.text_encoder_names, comps.text_encoders, strict=True)]
            ids = [torch.cat([c.token_ids[i] for c in conds]) for i in range(len(encs))]
            tensors = {k: v for k, v in comps.family.encode_prompt(comps, encs, ids).items() if v is not None}
        else:
            tensors = {k: torch.cat([c.tensors[k] for c in conds]) for k in conds[0].tensors}
        return {k: v.repeat_interleave(bs, dim=0).to(device) for k, v in tensors.items()}

    def _make_batch(self, base_index: int, bs: int, inst: LatentSet, cls: LatentSet | None, p, draw_time):
        """Per-sample draws from ``sample_generator``; instance samples first, then class samples (prior).
        ``draw_time(g)`` draws a sample's time (the family's ``draw_time``); an int n draws uniform DDPM timesteps
        in [0, n)."""
        if isinstance(draw_time, int):
            draw_time = functools.partial(uniform_timestep, n_timesteps=draw_time)
        lat, noise, ts, tids = [], [], [], []
        groups = [inst] + ([cls] if cls is not None else [])
        draws = []
        for i in range(bs):
            g = sample_generator(p.seed, base_index + i)
            draws.append([_draw(g, s, p, draw_time) for s in groups])
        for gi in range(len(groups)):  # instance block, then class block (loss splits the batch in halves)
            for d in draws:
                lat.append(d[gi][0])
                noise.append(d[gi][1])
                ts.append(d[gi][2])
                tids.append(d[gi][3])
        return {
            "latents": torch.stack(lat),
            "noise": torch.stack(noise),
            "timesteps": torch.tensor(ts),  # int64 for integer timesteps, float32 for sigmas
            "time_ids": torch.stack(tids),
            "image_index": torch.tensor([d[0][4] for d in draws]),  # each instance sample's image (its caption)
        }

    def _step_loss(self, comps: Components, denoiser, modules, batch: dict[str, torch.Tensor],
                   inst_cond: TextCond | list[TextCond], cls_cond: TextCond | None, device: torch.device, autocast, p,
                   *, prior: bool) -> torch.Tensor:  # fmt: skip
        """The loss of one batch (from ``_make_batch``): the family's noisy input and target, its denoiser
        prediction under ``autocast`` and the recipe's loss with the family's per-sample weights. ``inst_cond``:
        the instance prompt's conditioning, or one per instance sample (``_conditioning``).
        ``training.memory`` runs this very step on fake CUDA tensors."""
        family = comps.family
        latents = batch["latents"].to(device, non_blocking=True)
        noise = batch["noise"].to(device, non_blocking=True)
        times = batch["timesteps"].to(device, non_blocking=True)
        noisy, target = family.noisy_and_target(comps, latents, noise, times)
        with autocast:
            cond = self._conditioning(comps, modules, inst_cond, cls_cond, p.batch_size, device, p.train_text_encoder)
            pred = family.predict(comps, denoiser, noisy, times, cond, batch["time_ids"])
        return self._loss(pred.float(), target.float(), family.loss_weights(comps, times, p), p, prior)

    def _loss(self, pred, target, weights, p, prior: bool) -> torch.Tensor:
        """Mean squared error per sample, times the family's weights; with prior preservation the class half is
        weighted by ``prior_loss_weight``."""
        per_sample = F.mse_loss(pred, target, reduction="none").mean(dim=tuple(range(1, pred.ndim)))
        if weights is not None:
            per_sample = per_sample * weights
        bs = p.batch_size
        if prior:
            return per_sample[:bs].mean() + p.prior_loss_weight * per_sample[bs:].mean()
        return per_sample.mean()

    def _class_images(self, comps: Components, ctx: RunContext, resolution: int, acc) -> list[data.PreparedImage]:
        """Generate (once, cached in DIR/class_images) the class images for prior preservation."""
        spec, p = ctx.spec, ctx.spec.params
        key = hashlib.sha256(f"{spec.base_model}|{spec.class_prompt}|{resolution}".encode()).hexdigest()[:16]
        folder = ctx.class_images_dir / key
        folder.mkdir(parents=True, exist_ok=True)
        have = len(data.list_image_files(folder))
        if have < p.num_class_images:
            ctx.progress.phase("generating_class_images")
            if acc.is_main_process:
                pipe = comps.family.build_pipeline(comps)
                batch = 4
                for start in range(have, p.num_class_images, batch):
                    n = min(batch, p.num_class_images - start)
                    g = torch.Generator().manual_seed(p.seed + 7 + start)
                    imgs = comps.family.generate(pipe, comps, [spec.class_prompt] * n, resolution, p, g, acc)
                    for j, im in enumerate(imgs):
                        im.save(folder / f"class_{start + j:05d}.png")
                del pipe
                _free_memory()
            acc.wait_for_everyone()
        files = data.list_image_files(folder)[: p.num_class_images]
        return [data._resize_crop(_open_rgb(f), resolution, f) for f in files]

    def _samples(self, comps: Components, wrapped, ctx: RunContext, step: int, acc) -> None:
        p, family = ctx.spec.params, comps.family
        ctx.progress.phase("sampling")
        if acc.is_main_process:
            comps.vae.to(acc.device)
            for te in comps.text_encoders:
                if te is not None:  # None: freed after caching (the family samples from cached conditioning)
                    te.to(acc.device)
            denoiser = acc.unwrap_model(wrapped[family.denoiser_name])
            tes = [te if te is None else acc.unwrap_model(wrapped.get(n, te))
                   for n, te in zip(comps.info.text_encoder_names, comps.text_encoders, strict=True)]  # fmt: skip
            pipe = family.build_pipeline(comps, denoiser=denoiser, text_encoders=tes)
            out = ctx.output_dir / "samples"
            out.mkdir(parents=True, exist_ok=True)
            paths = []
            denoiser.eval()
            cached = getattr(self, "sample_conds", None)
            for i, prompt in enumerate(p.validation_prompts):
                g = torch.Generator().manual_seed(p.seed + i)
                conds = [cached[prompt]] if cached else None
                (img,) = family.generate(pipe, comps, [prompt], self.resolution, p, g, acc, conds=conds)
                path = out / f"step{step}_{i}.png"
                img.save(path)
                paths.append(str(path.resolve()))
            denoiser.train()
            del pipe
            if not ctx.spec.params.train_text_encoder:
                for te in comps.text_encoders:
                    if te is not None:
                        te.to("cpu")
            comps.vae.to("cpu")
            _free_memory()
            ctx.progress.emit("sample", step=step, paths=paths)
            self.sample_paths = getattr(self, "sample_paths", {})
            self.sample_paths.update({prompt: path for prompt, path in zip(p.validation_prompts, paths, strict=True)})
        acc.wait_for_everyone()
        if step < self.steps:
            ctx.progress.phase("training")

    def _checkpoint(self, ctx, step, named, optimizer, lr_sched, acc, mirror: bool = True) -> None:
        acc.wait_for_everyone()
        if acc.is_main_process:
            weights = {n: t.detach() for n, t in named}
            states = {"optimizer": optimizer.state_dict(), "lr_scheduler": lr_sched.state_dict()}
            if self.scaler is not None:
                states["scaler"] = self.scaler.state_dict()
            path = ckpt_mod.save_checkpoint(
                ctx.checkpoint_dir, step, weights, states, {"fingerprint": self._fingerprint(ctx)},
                keep=min(ctx.spec.params.checkpoints_to_keep, self.max_checkpoints_kept or 10**9),
            )  # fmt: skip
            ctx.progress.emit("checkpoint", step=step, path=str(path.resolve()))
            if ctx.spec.checkpoint is not None and mirror and self.hub_checkpoints:
                try:
                    ckpt_mod.upload_checkpoint(ckpt_mod.Checkpoint(path, step), ctx.spec.checkpoint)
                except Exception as e:  # noqa: BLE001 - a failed mirror must not stop training
                    log.warning("could not mirror checkpoint %s to the Hub: %s", step, e)
        acc.wait_for_everyone()

    def _fingerprint(self, ctx: RunContext) -> str:
        p = ctx.spec.params
        parts = (self.checkpoint_family, ctx.spec.base_model, ctx.spec.instance_prompt, p.rank, p.alpha, p.seed, p.batch_size,
                 p.train_text_encoder, p.prior_preservation, self.resolution)  # fmt: skip  (steps may change: extend a run)
        if getattr(self, "caption_digest", None):  # the images' prompts (unchanged fingerprint without captions)
            parts += (self.caption_digest,)
        return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]

    def _resume(self, ctx: RunContext, named, optimizer, lr_sched, acc) -> int:
        found = ckpt_mod.latest_checkpoint(ctx.checkpoint_dir)
        if found is None and ctx.spec.checkpoint is not None:
            with acc.main_process_first():
                found = ckpt_mod.latest_checkpoint(ctx.checkpoint_dir) or ckpt_mod.download_latest_checkpoint(
                    ctx.spec.checkpoint, ctx.checkpoint_dir
                )
        if found is None:
            return 0
        try:  # state.json first: a checkpoint of other settings is ignored before any tensor file is read
            if found.meta().get("fingerprint") != self._fingerprint(ctx):
                log.warning("ignoring checkpoint %s: it belongs to different settings", found.path)
                return 0
            ckpt_mod.restore(found, named, optimizer, lr_sched, self.scaler)
        except ckpt_mod.CheckpointError as e:
            log.warning("ignoring checkpoint %s: %s", found.path, e)
            return 0
        ctx.progress.emit("resumed", step=found.step)
        return min(found.step, self.steps)


def denoiser_param_count(info) -> int:
    """The family's denoiser size: its ``denoiser_params`` class attribute, or, where that is 0 (a family whose
    size varies, e.g. FLUX.2 [klein] 4B / 9B), the parameters of the denoiser built from the model's config on the
    meta device (no memory, no weights read)."""
    family = info.family
    if family.denoiser_params:
        return int(family.denoiser_params)
    from accelerate import init_empty_weights

    cls = family.component_class(family.denoiser_name, info.index[family.denoiser_name][1])
    with init_empty_weights():
        model = cls.from_config(info.denoiser_config)
    return sum(t.numel() for t in model.parameters())


def _draw(g: torch.Generator, s: LatentSet, p, draw_time):
    idx = int(torch.randint(len(s), (1,), generator=g))
    flip = p.random_flip and s.flip_mean is not None and bool(torch.rand((), generator=g) < 0.5)
    mean, std = (s.flip_mean, s.flip_std) if flip else (s.mean, s.std)
    t = draw_time(g)
    eps = torch.randn(mean.shape[1:], generator=g)
    latent = mean[idx] + std[idx] * eps
    noise = torch.randn(mean.shape[1:], generator=g)
    if p.noise_offset:
        noise = noise + p.noise_offset * torch.randn((mean.shape[1], 1, 1), generator=g)
    return latent, noise, t, s.time_ids[idx], idx


def _open_rgb(path: Path):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


def trainable_named_parameters(modules: dict[str, torch.nn.Module]) -> list[tuple[str, torch.Tensor]]:
    """(prefixed name, parameter) for every parameter that requires grad, in a stable order."""
    return [(f"{mn}.{pn}", t) for mn, m in modules.items() for pn, t in m.named_parameters() if t.requires_grad]


def _peak_mem_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)
    except Exception:  # noqa: BLE001
        return 0.0


def optimizer_step(loss: torch.Tensor, optimizer, params: list[torch.Tensor], scaler, device: torch.device) -> None:
    """Backward (through the fp16 loss scaler when there is one), unscale, clip the gradient norm to 1, step.
    Gradients stay until the caller's ``zero_grad``."""
    (scaler.scale(loss) if scaler else loss).backward()
    if scaler:
        scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=device.type == "cuda")
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

