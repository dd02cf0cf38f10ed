"""LoRA (Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", 2021) for the decoder
of a model built on a pretrained text checkpoint (train's `smol` preset), and the delta it leaves.

A frozen matrix W (out, in) is trained as W + (alpha / r) * B @ A, with A (r, in) and B (out, r);
B starts at zero, so the adapted model starts as the pretrained one. It is written as a torch
parametrization of each Linear's weight, so model.py's forward runs unchanged and merging is
computing that sum once. The trained model is shipped as a delta (vision tower, projector, the
adapters' A and B, the added embedding rows, config and tokenizer), a few MB, which
`python -m feather_mini fetch feather-smol` adds to the pinned base checkpoint to make an
ordinary llava-hf folder.

Reference (read, not copied): peft's tuners/lora/layer.py (A initialized as kaiming-uniform
with a = sqrt(5), B zero, scaling alpha / r).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from .processing import json_object, read_json

# The decoder's Linear layers that get adapters: every matrix of attention and MLP, as QLoRA
# recommends (adapting attention alone fell short of full fine-tuning there).
TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
DELTA_FILE, DELTA_JSON = "delta.safetensors", "delta.json"
# Tensor names in the delta: the adapted Linear's key, then these.
A_SUFFIX, B_SUFFIX = ".lora_A.weight", ".lora_B.weight"


class LowRankDelta(nn.Module):
    """weight -> weight + scale * B @ A: the parametrization that adapts one frozen Linear."""

    def __init__(self, out_features: int, in_features: int, rank: int, alpha: float):
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scale = alpha / rank

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.scale * (self.lora_B @ self.lora_A).to(weight.dtype)


def add_adapters(model: nn.Module, rank: int, alpha: float, seed: int) -> None:
    """Freeze the decoder and give each target Linear of every layer an adapter (A drawn from `seed`)."""
    if rank < 1:
        raise ValueError(f"LoRA rank must be at least 1, got {rank}")
    model.language_model.requires_grad_(False)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    for layer in model.language_model.model.layers:
        for target in TARGETS:
            linear = layer.get_submodule(target)
            parametrize.register_parametrization(
                linear, "weight", LowRankDelta(linear.out_features, linear.in_features, rank, alpha))
    torch.random.set_rng_state(generator_state)


def adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """{'<linear key>.lora_A.weight': A, '<linear key>.lora_B.weight': B} for every adapter."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, LowRankDelta):
            linear = name.removesuffix(".parametrizations.weight.0")
            out[linear + A_SUFFIX], out[linear + B_SUFFIX] = module.lora_A, module.lora_B
    return out


def merge(weights: dict[str, torch.Tensor], delta: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """Base weights (llava keys) with each adapter folded in: W + scale * B @ A, in float32."""
    out = dict(weights)
    for key in delta:
        if key.endswith(A_SUFFIX):
            linear = key.removesuffix(A_SUFFIX)
            A, B = delta[key].float(), delta[linear + B_SUFFIX].float()
            out[linear + ".weight"] = weights[linear + ".weight"].float() + scale * (B @ A)
    return out


def read_delta_json(folder: Path) -> dict:
    """delta.json: which base the delta applies to (name, sha256 of its source) and the LoRA settings."""
    file = Path(folder) / DELTA_JSON
    if not file.is_file():
        raise FileNotFoundError(f"{folder}: no {DELTA_JSON} (a delta folder, as train --preset smol writes, has one)")
    raw = json_object(read_json(file), str(file))
    for key in ("base", "base_sha256", "rank", "alpha"):
        if key not in raw:
            raise ValueError(f"{file}: no '{key}'")
    return raw
