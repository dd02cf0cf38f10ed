"""feather-smol: LLaVA-1.5's layout on a real pretrained decoder, SmolLM2-135M-Instruct.

The paper's first finding is about a PRETRAINED language model's habit under RoPE, which the
decoders trained from scratch here (feather-tiny, feather-576) do not have. This preset joins
feather-576's vision tower (24x24 = 576 visual tokens, frozen), a new projector to width 576 and
SmolLM2's decoder, adapted with LoRA (lora.py), with SmolLM2's own tokenizer plus `<image>`.
Its bos and eos are SmolLM2's (`<|im_start|>`, `<|im_end|>`), as LLaVA-1.5 keeps Vicuna's.

The base comes from `python -m feather_mini fetch smollm2` (a Llama text checkpoint in the
cache); what training makes is saved as a delta (lora.py) that `fetch feather-smol` adds to it.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import AddedToken, Tokenizer

from . import lora
from .checkpoint import (CheckpointError, read_config, read_tensors, read_text_checkpoint, shipped_weights,
                         write_atomically, write_json)
from .model import LlavaConfig, LlavaForConditionalGeneration, TextConfig
from .processing import IMAGE_PLACEHOLDER, read_json

BASE_NAME = "smollm2"  # the folder `fetch smollm2` writes in the cache
VISION_FROM = "feather-576"  # the shipped model whose vision tower feather-smol reads through
TEXT_PREFIX = "language_model."  # a text checkpoint's model.* keys are the LLaVA decoder's language_model.model.*
ADDED_ROWS = TEXT_PREFIX + "model.embed_tokens.added_rows"  # the delta's embedding rows past the base vocabulary


def read_base(folder: Path) -> tuple[TextConfig, dict[str, torch.Tensor], dict]:
    """(config, tensors under the LLaVA model's keys 'language_model.model.*', source.json) of the
    text checkpoint `fetch smollm2` wrote, read strictly."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no base checkpoint in {folder}: run `python -m feather_mini fetch {BASE_NAME}` "
                                "(or pass its folder)")
    config, tensors, tied = read_text_checkpoint(folder)
    if not tied:
        raise CheckpointError(f"{folder / 'config.json'}: the smol preset needs tied embeddings (SmolLM2's)")
    return config, {TEXT_PREFIX + k: v for k, v in tensors.items()}, read_base_source(folder)


def vision_source() -> Path:
    return shipped_weights(VISION_FROM)


def smol_config(base: TextConfig) -> LlavaConfig:
    """feather-576's vision tower and projector input, the base decoder with one row added for <image>."""
    shipped = read_config(vision_source() / "config.json")
    return LlavaConfig(vision_config=shipped.vision_config, text_config=replace(base, vocab_size=base.vocab_size + 1),
                       image_token_index=base.vocab_size, vision_feature_layer=shipped.vision_feature_layer,
                       tie_word_embeddings=True)


def smol_tokenizer(base_folder: Path, image_token_index: int) -> Tokenizer:
    """The base's tokenizer.json with <image> added as a special token at `image_token_index`."""
    base_folder = Path(base_folder)
    tok = Tokenizer.from_file(str(base_folder / "tokenizer.json"))
    tok.add_special_tokens([AddedToken(IMAGE_PLACEHOLDER, special=True)])
    if tok.token_to_id(IMAGE_PLACEHOLDER) != image_token_index:
        raise ValueError(f"{base_folder / 'tokenizer.json'}: {IMAGE_PLACEHOLDER} became id "
                         f"{tok.token_to_id(IMAGE_PLACEHOLDER)}, expected {image_token_index} (the vocabulary's end)")
    return tok


def load_base_into(model: LlavaForConditionalGeneration, base_tensors: dict[str, torch.Tensor]) -> None:
    """Copy feather-576's vision tower and the base decoder into `model`. The <image> row of the (tied)
    embedding is the mean of the others: as an input it is never read (the visual tokens overwrite
    it), as an output row it gives <image> an unremarkable logit."""
    vision = {k: v for k, v in read_tensors(vision_source() / "model.safetensors").items()
              if k.startswith("vision_tower.")}
    embed_key = TEXT_PREFIX + "model.embed_tokens.weight"
    embed = base_tensors[embed_key]
    state = {**vision, **base_tensors, embed_key: torch.cat([embed, embed.mean(0, keepdim=True)])}
    missing, unexpected = model.load_state_dict(state, strict=False)
    left = [k for k in missing if not k.startswith(("multi_modal_projector.", TEXT_PREFIX + "lm_head."))]
    if left or unexpected:
        raise CheckpointError(f"the base does not fit the smol preset: {(left or unexpected)[0]}")


def build(base_folder: Path, seed: int, rank: int, alpha: float, init) -> tuple[LlavaForConditionalGeneration, Tokenizer]:
    """The model train's smol preset trains: `init(model, seed)` draws the projector, then the
    vision tower and decoder are read in and frozen, and the decoder gets LoRA adapters."""
    base, tensors, _ = read_base(base_folder)
    model = LlavaForConditionalGeneration(smol_config(base))
    init(model, seed)
    load_base_into(model, tensors)
    model.vision_tower.requires_grad_(False)  # feather-576's, already trained to read these scenes
    lora.add_adapters(model, rank, alpha, seed)
    return model, smol_tokenizer(base_folder, model.config.image_token_index)


def delta_tensors(model: LlavaForConditionalGeneration) -> dict[str, torch.Tensor]:
    """What training made or added: the vision tower (from feather-576), the projector, the
    adapters and the <image> embedding row."""
    embed = model.language_model.model.embed_tokens.weight
    out = {k: v for k, v in model.state_dict().items() if k.startswith(("vision_tower.", "multi_modal_projector."))}
    out.update(lora.adapter_tensors(model))
    out[ADDED_ROWS] = embed[model.config.image_token_index:]
    return {k: v.detach().float().contiguous().cpu() for k, v in out.items()}


def save_delta(model: LlavaForConditionalGeneration, tokenizer: Tokenizer, folder: Path, base_folder: Path,
               rank: int, alpha: float, save_files) -> None:
    """The delta folder: config.json, tokenizer.json, preprocessor_config.json (by `save_files`,
    train's writer of those), delta.safetensors and delta.json (the base's name and source hash)."""
    folder.mkdir(parents=True, exist_ok=True)
    save_files(model.config, tokenizer, folder)
    source = read_base_source(base_folder)
    tensors = delta_tensors(model)
    write_atomically(folder / lora.DELTA_FILE, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    write_json(folder / lora.DELTA_JSON, {"base": BASE_NAME, "base_sha256": source.get("sha256"), "rank": rank,
                                          "alpha": alpha, "targets": list(lora.TARGETS)})


def read_base_source(base_folder: Path) -> dict:
    file = Path(base_folder) / "source.json"
    return read_json(file) if file.is_file() else {}


def merged_state(base_folder: Path, delta_folder: Path) -> dict[str, torch.Tensor]:
    """The full LLaVA state dict (llava-hf keys) of base + delta, the adapters merged."""
    base_folder, delta_folder = Path(base_folder), Path(delta_folder)
    meta = lora.read_delta_json(delta_folder)
    _, base, source = read_base(base_folder)
    if meta["base_sha256"] != source.get("sha256"):
        raise ValueError(f"{delta_folder} was trained on a base of sha256 {meta['base_sha256']}, but "
                         f"{base_folder} was made from {source.get('sha256')}")
    delta = read_tensors(delta_folder / lora.DELTA_FILE)
    added = delta.pop(ADDED_ROWS, None)
    if added is None:
        raise CheckpointError(f"{delta_folder / lora.DELTA_FILE}: no '{ADDED_ROWS}' (the <image> embedding row)")
    embed_key = TEXT_PREFIX + "model.embed_tokens.weight"
    state = lora.merge(base, delta, meta["alpha"] / meta["rank"])
    state[embed_key] = torch.cat([base[embed_key], added])
    state.update({k: v for k, v in delta.items() if not k.endswith((lora.A_SUFFIX, lora.B_SUFFIX))})
    return state
