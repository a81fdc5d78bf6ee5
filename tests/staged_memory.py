"""The committed memory-table rows of a staged transformer family (Z-Image, Qwen-Image), as their memory tests read
and check them: one LoRA row by its settings, and the shape every family's rows must have."""

from __future__ import annotations

from training import memory

GIB = 2**30


def lora_row(shape: str, resolution: int = 1024, gradient_checkpointing: bool = True,
             quantized_base: str | None = None) -> dict:  # fmt: skip
    """The committed ``dreambooth-lora`` row of ``shape`` with these settings (it must exist)."""
    found = memory.table_row(shape, "dreambooth-lora", resolution=resolution, quantized_base=quantized_base,
                             gradient_checkpointing=gradient_checkpointing)  # fmt: skip
    assert found is not None, (shape, resolution, gradient_checkpointing, quantized_base)
    return found


def check_staged_lora_rows(shape: str, family, *, lora_params: int, text_encoder_params: int,
                           caching_margin_gib: float, quantized_saving_gib: float) -> None:  # fmt: skip
    """LoRA in bf16 at the family's rank, 512 and 1024 px, with and without gradient checkpointing, each also with an
    8-bit and a 4-bit base. Staged: the text encoder caches without the transformer (within ``caching_margin_gib``
    of its bf16 weights), the step holds the bf16 transformer and the adapters' fp32 weights, gradients and Adam
    moments; a quantized base's rows are derived from the bf16 one, with a training phase more than
    ``quantized_saving_gib`` smaller. Checkpointing and a smaller size each lower the peak."""
    transformer, text_encoder = family.denoiser_params * 2 / GIB, text_encoder_params * 2 / GIB
    for res in (512, 1024):
        for gc in (False, True):
            r = lora_row(shape, res, gc)
            assert (r["precision"], r["rank"], r["trainable_params"]) == ("bf16", family.defaults.rank, lora_params)
            assert text_encoder <= r["phases_gib"]["caching"] < text_encoder + caching_margin_gib
            assert transformer + lora_params * 16 / GIB <= r["phases_gib"]["training"] <= r["estimated_peak_gib"]
            assert transformer <= r["phases_gib"]["sampling"]
            for kind in memory.TABLE_QUANTIZED:  # derived from this row: the transformer's Linear weights smaller
                q = lora_row(shape, res, gc, kind)
                assert q["derived"] and q["phases_gib"]["caching"] == r["phases_gib"]["caching"]
                assert q["phases_gib"]["training"] < r["phases_gib"]["training"] - quantized_saving_gib
        assert lora_row(shape, res, True)["estimated_peak_gib"] < lora_row(shape, res, False)["estimated_peak_gib"]
    assert lora_row(shape, 512)["estimated_peak_gib"] < lora_row(shape, 1024)["estimated_peak_gib"]
