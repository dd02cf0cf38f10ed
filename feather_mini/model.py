"""LLaVA-1.5 in one file: CLIP vision tower, projector, Llama decoder, KV cache, generation.

LLaVA-1.5 (Liu et al., "Improved Baselines with Visual Instruction Tuning", 2023) turns an
image into N visual tokens with a CLIP ViT (Radford et al., 2021), maps them into the
decoder's embedding space with a Linear-GELU-Linear projector, splices them into the
prompt in place of one <image> placeholder, and decodes with Llama (Touvron et al., 2023).
Rotary position embeddings (RoPE, Su et al., 2021) are written out as two free functions,
`rope_cos_sin` and `apply_rope`, because the pruning criteria of "Feather the Throttle"
(Endo et al., ICCV 2025) score visual tokens both with and without them.

Module attribute names equal llava-hf's checkpoint keys (`language_model.model.layers.N.
self_attn.q_proj`, even CLIP's `pre_layrnorm`), so checkpoint.py's `load_pretrained` only
rewrites the other prefix layouts transformers has written and is otherwise strict. This file
is the network only: it imports nothing else of the package.

Batches are padded on the right, so each prompt keeps its own positions and causal attention
keeps every real token from the padding; each prompt is pruned by its own Pruner.
Left out: dropout and other training-only options, several images per prompt, LLaVA-NeXT's
any-resolution tiles, RoPE scaling variants.
References (read, not copied): transformers' modeling_clip.py, modeling_llama.py and
modeling_llava.py; tests/test_parity.py checks this file against them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# Configs: frozen dataclasses shaped like llava-hf's config.json; defaults = LLaVA-1.5-7B


@dataclass(frozen=True)
class VisionConfig:
    """CLIP ViT-L/14 at 336 px: a 24x24 grid of 14 px patches."""
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    image_size: int = 336
    patch_size: int = 14
    num_channels: int = 3
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"

    def __post_init__(self):
        _check_fields(self)
        if self.image_size < self.patch_size:
            raise ValueError(f"image_size {self.image_size} is smaller than patch_size {self.patch_size}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by "
                             f"num_attention_heads {self.num_attention_heads}")

    @property
    def grid_side(self) -> int:
        """Patches per side: the visual tokens form a grid_side x grid_side square in raster order."""
        return self.image_size // self.patch_size


@dataclass(frozen=True)
class TextConfig:
    """Vicuna-7B v1.5 (a Llama-2 7B)."""
    vocab_size: int = 32064
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None  # None: one per query head (no grouping)
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    hidden_act: str = "silu"
    attention_bias: bool = False
    mlp_bias: bool = False
    bos_token_id: int = 1
    eos_token_id: int | list[int] = 2

    def __post_init__(self):
        _check_fields(self)
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                             f"{self.num_attention_heads} (and no head_dim is given)")
        # Resolve the two derived sizes once, so every reader sees plain ints.
        if self.num_key_value_heads is None:
            object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads {self.num_attention_heads} is not divisible by "
                             f"num_key_value_heads {self.num_key_value_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} is odd; RoPE rotates pairs of dimensions")


@dataclass(frozen=True)
class LlavaConfig:
    vision_config: VisionConfig = field(default_factory=VisionConfig)
    text_config: TextConfig = field(default_factory=TextConfig)
    image_token_index: int = 32000
    vision_feature_layer: int = -2  # index into CLIP's hidden states: -2 = second-to-last layer
    vision_feature_select_strategy: str = "default"  # "default" drops CLS, "full" keeps it
    projector_hidden_act: str = "gelu"
    multimodal_projector_bias: bool = True
    tie_word_embeddings: bool = False

    @property
    def num_visual_tokens(self) -> int:
        """N: the length of the visual span that replaces the one <image> placeholder."""
        cls = 1 if self.vision_feature_select_strategy == "full" else 0
        return self.vision_config.grid_side ** 2 + cls

    def __post_init__(self):
        """Refuse, naming the field, settings this file does not implement."""
        layers = self.vision_config.num_hidden_layers
        if not is_int(self.vision_feature_layer):
            raise ValueError(f"vision_feature_layer={self.vision_feature_layer!r}: only a single int "
                             "layer is supported (LLaVA-1.5 uses -2)")
        _check_fields(self)
        if not -(layers + 1) <= self.vision_feature_layer <= layers:
            raise ValueError(f"vision_feature_layer={self.vision_feature_layer} is outside the "
                             f"{layers + 1} hidden states of a {layers}-layer vision tower")
        if self.vision_feature_select_strategy not in ("default", "full"):
            raise ValueError(f"vision_feature_select_strategy={self.vision_feature_select_strategy!r}: "
                             "expected 'default' or 'full'")
        for name, act in [("vision_config.hidden_act", self.vision_config.hidden_act),
                          ("projector_hidden_act", self.projector_hidden_act),
                          ("text_config.hidden_act", self.text_config.hidden_act)]:
            if act not in ACTIVATIONS:
                raise ValueError(f"{name}={act!r} is not one of {sorted(ACTIVATIONS)}")


# Layer counts beyond this are typos (Llama-3.1-405B has 126): building the modules of 100000
# layers, only to find that the checkpoint lacks them, would take minutes.
MAX_LAYERS = 1024


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # Python's True is an int; a config's is not


# What each kind of config field must be: (the error's wording, the test).
_FIELD_RULES = {
    "size": ("a positive int", lambda v: is_int(v) and v > 0),
    "layers": (f"a positive int up to {MAX_LAYERS}", lambda v: is_int(v) and 0 < v <= MAX_LAYERS),
    "id": ("an int >= 0", lambda v: is_int(v) and v >= 0),
    "float": ("a positive finite number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
              and math.isfinite(v) and v > 0),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "str": ("a string", lambda v: isinstance(v, str)),
}


def _check_fields(config) -> None:
    """Refuse, naming the field, a value of the wrong type or range for its dataclass field, by the
    field's declared type: every int is a size or count (positive) or a token id (>= 0), never a
    bool; every float (eps, rope_theta) is finite and positive. A list of ids is one id or more."""
    for f in fields(config):
        value = getattr(config, f.name)
        if f.name in ("vision_config", "text_config", "vision_feature_layer") or (value is None and "None" in f.type):
            continue  # nested configs check themselves, vision_feature_layer with its range; None: derived later
        if f.type in ("float", "bool", "str"):
            kind = f.type
        elif f.name.endswith(("_token_id", "_token_index")):
            kind = "id"
        else:
            kind = "layers" if f.name == "num_hidden_layers" else "size"
        want, ok = _FIELD_RULES[kind]
        several = "list" in f.type and isinstance(value, list) and value  # eos_token_id: [2, 32000]
        if not all(ok(v) for v in (value if several else [value])):
            raise ValueError(f"{f.name} must be {want}{' (or a list of them)' if 'list' in f.type else ''}, "
                             f"got {value!r}")


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)  # CLIP's sigmoid approximation of GELU


ACTIVATIONS = {
    "gelu": F.gelu,  # exact (erf) GELU: LLaVA's projector
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "quick_gelu": quick_gelu,  # CLIP
    "silu": F.silu,  # Llama's SwiGLU gate
}

# -----------------------------------------------------------------------------
# RoPE: two free functions, so a criterion can score q.k with or without rotation


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float,
                 dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (B, T, head_dim) for integer positions (B, T).

    Angle of pair i at position p: p * theta^(-2i/head_dim). The angles are computed in
    float32 (as transformers does) and only then cast, because p * freq for p in the
    thousands loses its phase in half precision.
    """
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim)
    angles = positions.float()[..., None] * inv_freq  # (B, T, head_dim/2)
    angles = torch.cat((angles, angles), dim=-1)  # half-split layout: pair i is (i, i + head_dim/2)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate q or k (B, nh, T, hs) by cos/sin (B, T, hs), in the half-split form of HF Llama
    weights: dims i and i + hs/2 form one 2-d pair (not adjacent dims as in the paper)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, n_kv, T, hs) -> (B, n_kv * n_rep, T, hs): each key/value head serves n_rep query heads."""
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)

# -----------------------------------------------------------------------------
# Vision tower: CLIP ViT. https://github.com/huggingface/transformers/blob/main/src/transformers/models/clip/modeling_clip.py


class CLIPAttention(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        d, self.n_head = cfg.hidden_size, cfg.num_attention_heads
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(d, d) for _ in range(3))
        self.out_proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, d = x.shape
        q, k, v = (proj(x).view(B, T, self.n_head, -1).transpose(1, 2)  # (B, nh, T, hs)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        y = F.scaled_dot_product_attention(q, k, v)  # every patch sees every patch: no mask
        return self.out_proj(y.transpose(1, 2).reshape(B, T, d))


class CLIPMLP(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.act = ACTIVATIONS[cfg.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.self_attn = CLIPAttention(cfg)
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = CLIPMLP(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPEmbeddings(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        d = cfg.hidden_size
        self.class_embedding = nn.Parameter(torch.randn(d) * d ** -0.5)
        self.patch_embedding = nn.Conv2d(cfg.num_channels, d, cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.position_embedding = nn.Embedding(cfg.grid_side ** 2 + 1, d)  # CLS + one per patch

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(pixel_values).flatten(2).transpose(1, 2)  # (B, N, d), raster order
        cls = self.class_embedding.expand(patches.shape[0], 1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding.weight


class CLIPVisionTower(nn.Module):
    """Pixels (B, 3, S, S) -> the hidden states after encoder layer `feature_layer` (B, 1 + N, d).

    `feature_layer` indexes CLIP's hidden states the way transformers does: 0 is the
    embedding output (after pre_layrnorm), i the output of layer i, -1 the last layer.
    Layers after the selected one are never run.
    """

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        self.vision_model = nn.ModuleDict(dict(
            embeddings=CLIPEmbeddings(cfg),
            pre_layrnorm=nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps),  # sic: the checkpoint's spelling
            encoder=nn.ModuleDict(dict(
                layers=nn.ModuleList(CLIPEncoderLayer(cfg) for _ in range(cfg.num_hidden_layers)))),
            # In the checkpoint, unused by LLaVA: its features are taken before this norm.
            post_layernorm=nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps),
        ))

    def forward(self, pixel_values: torch.Tensor, feature_layer: int) -> torch.Tensor:
        S = self.cfg.image_size
        if pixel_values.ndim != 4 or pixel_values.shape[1:] != (self.cfg.num_channels, S, S):
            raise ValueError(f"pixel_values has shape {tuple(pixel_values.shape)}, "
                             f"expected (B, {self.cfg.num_channels}, {S}, {S})")
        vm = self.vision_model
        x = vm.pre_layrnorm(vm.embeddings(pixel_values))
        n_layers = feature_layer % (len(vm.encoder.layers) + 1)  # hidden_states[-2] = output of layer L-1
        for layer in vm.encoder.layers[:n_layers]:
            x = layer(x)
        return x

# -----------------------------------------------------------------------------
# Projector: https://github.com/huggingface/transformers/blob/main/src/transformers/models/llava/modeling_llava.py


class LlavaMultiModalProjector(nn.Module):
    """Visual features (B, N, d_vision) -> decoder embeddings (B, N, d_text)."""

    def __init__(self, cfg: LlavaConfig):
        super().__init__()
        d_vis, d_txt, bias = cfg.vision_config.hidden_size, cfg.text_config.hidden_size, cfg.multimodal_projector_bias
        self.linear_1 = nn.Linear(d_vis, d_txt, bias=bias)
        self.act = ACTIVATIONS[cfg.projector_hidden_act]
        self.linear_2 = nn.Linear(d_txt, d_txt, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))

# -----------------------------------------------------------------------------
# Decoder: Llama. https://github.com/huggingface/transformers/blob/main/src/transformers/models/llama/modeling_llama.py


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalize in float32, cast back before the weight: the order transformers uses,
        # which matters for bit-level agreement in float16.
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class LlamaAttention(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        d, hs, bias = cfg.hidden_size, cfg.head_dim, cfg.attention_bias
        self.n_head, self.n_kv_head, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, hs
        self.q_proj = nn.Linear(d, self.n_head * hs, bias=bias)
        self.k_proj = nn.Linear(d, self.n_kv_head * hs, bias=bias)
        self.v_proj = nn.Linear(d, self.n_kv_head * hs, bias=bias)
        self.o_proj = nn.Linear(self.n_head * hs, d, bias=bias)

    def project_qk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normed hidden states (B, T, d) -> q (B, nh, T, hs) and k (B, n_kv, T, hs), before RoPE."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        return q, k

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None, layer: int,
                qk: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """qk: project_qk(x) when the caller already has it (a pruning score was computed from it)."""
        B, T, _ = x.shape
        q, k = qk if qk is not None else self.project_qk(x)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        mask = None
        if cache is not None:
            k, v = cache.update(layer, k, v)
            mask = cache.padding_mask(layer) if T == 1 else None
        n_rep = self.n_head // self.n_kv_head
        # T > 1 only in a prefill on an empty cache (the model checks), where the causal mask is the
        # triangle: a batch's padding comes after each prompt, so no real token sees it. One decoded
        # token attends to every cached token but, in a padded batch, the prompt's padding rows.
        y = F.scaled_dot_product_attention(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), attn_mask=mask,
                                           is_causal=T > 1)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class LlamaMLP(nn.Module):
    """SwiGLU: down(act(gate(x)) * up(x))."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        d, m, bias = cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias
        self.gate_proj = nn.Linear(d, m, bias=bias)
        self.up_proj = nn.Linear(d, m, bias=bias)
        self.down_proj = nn.Linear(m, d, bias=bias)
        self.act = ACTIVATIONS[cfg.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.self_attn = LlamaAttention(cfg)
        self.mlp = LlamaMLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, cache, layer, qk=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, layer, qk)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaForCausalLM(nn.Module):
    """Embeddings (B, T, d) at integer positions (B, T) -> next-token logits (B, T, vocab)."""

    def __init__(self, cfg: TextConfig, tie_word_embeddings: bool = False):
        super().__init__()
        self.cfg = cfg
        self.model = nn.ModuleDict(dict(
            embed_tokens=nn.Embedding(cfg.vocab_size, cfg.hidden_size),
            layers=nn.ModuleList(LlamaDecoderLayer(cfg) for _ in range(cfg.num_hidden_layers)),
            norm=RMSNorm(cfg.hidden_size, cfg.rms_norm_eps),
        ))
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cache: KVCache | None = None,
                pruners=None, logits_to_keep: int = 0, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """pruners (prefill only; see pruning.Pruner): one per sequence, each with `layers`, the set of
        layers before which it drops visual tokens, and `select(K, q, k, positions, x)` -> the rows of
        its sequence that layers K.. will see, decided from layer K-1's q and k (1, heads, T, hs)
        before RoPE and its input x.
        lengths (B,): a right-padded batch's real rows per sequence (None: every row is real). After
        a stage the sequences keep different numbers of rows; each is padded again at its end.
        logits_to_keep: 0 for every row's logits, k for the last k (real) rows' only (as transformers'
        argument of that name): generation needs one row, and the lm_head over a 32k vocabulary
        costs as much as a few decoder layers when applied to every row."""
        # cos/sin depend only on the positions: computed once, shared by every layer.
        cos, sin = rope_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta, x.dtype)
        stages = set().union(*(p.layers for p in pruners if p)) if pruners else set()
        padded = is_padded(lengths, x)  # read on the host once here and after each stage, not per layer
        for i, layer in enumerate(self.model.layers):
            rows = qk = None
            if i + 1 in stages:
                # Pruning at layer K is decided from layer K-1's normed input through its q and k
                # projections, before it runs; the layer then reuses them, so scoring costs no matmul.
                qk = layer.self_attn.project_qk(layer.input_layernorm(x))
                rows = [p.select(i + 1, qk[0][b:b + 1, :, :n], qk[1][b:b + 1, :, :n], positions[b:b + 1, :n],
                                 x[b:b + 1, :n]) if p and i + 1 in p.layers else torch.arange(n, device=x.device)
                        for b, (p, n) in enumerate(zip(pruners, real_rows(lengths, x)))]
            if cache is not None and lengths is not None:  # a batch's prefill (decoding reads the marks)
                cache.mark_padding(i, lengths if padded else None, x.shape[1])
            x = layer(x, cos, sin, cache, i, qk)
            if rows is not None:
                # Later layers see only these rows (text and kept visual tokens), at their ORIGINAL positions.
                if len(rows) == 1 and lengths is None:
                    x, positions, cos, sin = x[:, rows[0]], positions[:, rows[0]], cos[:, rows[0]], sin[:, rows[0]]
                else:
                    index, lengths = padded_rows(rows)
                    batch = torch.arange(len(rows), device=index.device)[:, None]
                    x, positions, cos, sin = (t[batch, index] for t in (x, positions, cos, sin))
                    padded = is_padded(lengths, x)
        if lengths is None or logits_to_keep == 0:
            return self.lm_head(self.model.norm(x[:, -logits_to_keep:]))
        last = lengths[:, None] - logits_to_keep + torch.arange(logits_to_keep, device=x.device)  # (B, k)
        return self.lm_head(self.model.norm(x[torch.arange(x.shape[0], device=x.device)[:, None], last]))


def is_padded(lengths: torch.Tensor | None, x: torch.Tensor) -> bool:
    """Whether some sequence of the batch x (B, T, d) has fewer than T real rows."""
    return lengths is not None and bool((lengths < x.shape[1]).any())


def real_rows(lengths: torch.Tensor | None, x: torch.Tensor) -> list[int]:
    return [x.shape[1]] * x.shape[0] if lengths is None else lengths.tolist()


def padded_rows(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sequence's kept rows, right-padded to the longest by repeating its last row (a copy no real
    row attends to, causally): the gather index (B, T') and each sequence's real rows (B,)."""
    T = max(len(r) for r in rows)
    index = torch.stack([torch.cat([r, r[-1:].expand(T - len(r))]) for r in rows])
    return index, torch.tensor([len(r) for r in rows], device=index.device)

# -----------------------------------------------------------------------------
# KV cache


class KVCache:
    """What each decoder layer has seen: keys (after RoPE, at the tokens' ORIGINAL positions) and
    values, (B, n_kv, T_l, hs) each.

    Every layer keeps its own T_l, so a layer that sees fewer tokens (after visual-token
    pruning) holds a shorter cache. `length` counts the positions of the original sequence
    consumed so far: the next token gets position `length`, whatever was dropped.
    A layer's first update (the prefill) allocates `reserve` rows beyond what it writes and
    later ones write into them in place, as gpt-fast preallocates; should they run out, the
    buffer doubles. So appending a token does not copy the whole cache (generate reserves one
    row for each token it may feed back, max_new_tokens - 1).
    """

    def __init__(self, num_layers: int, reserve: int = 0):
        if not is_int(reserve) or reserve < 0:
            raise ValueError(f"KVCache reserve={reserve!r} must be an int >= 0 (rows to spare for decoding)")
        self._keys: list[torch.Tensor | None] = [None] * num_layers  # buffers; rows past _seen are unused
        self._values: list[torch.Tensor | None] = [None] * num_layers
        self._seen = [0] * num_layers
        self.reserve, self.length = reserve, 0
        # A padded batch: per layer, each sample's real prefill rows (B,) and the prefill's row count;
        # the rows between are padding, which decoding must not attend to. None: no padding.
        self._real: list[tuple[torch.Tensor, int] | None] = [None] * num_layers
        self.positions: torch.Tensor | None = None  # a padded batch's next position per sample (B,)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's k, v (B, n_kv, T, hs) after `layer`'s cached rows; return all of them."""
        seen, end, buffer = self._seen[layer], self._seen[layer] + k.shape[2], self._keys[layer]
        # A buffer made under torch.inference_mode cannot be written outside it: copy it then.
        frozen = buffer is not None and buffer.is_inference() and not torch.is_inference_mode_enabled()
        if buffer is None or end > buffer.shape[2] or frozen:
            spare = self.reserve if buffer is None else buffer.shape[2]  # after the prefill's rows: double
            self._keys[layer] = _regrown(buffer, seen, end + spare, k)
            self._values[layer] = _regrown(self._values[layer], seen, end + spare, v)
        self._keys[layer][:, :, seen:end] = k
        self._values[layer][:, :, seen:end] = v
        self._seen[layer] = end
        if seen == 0:
            return k, v  # the prefill attends over its own k, v: the same tensors as without a cache
        return self._keys[layer][:, :, :end], self._values[layer][:, :, :end]

    @property
    def keys(self) -> list[torch.Tensor | None]:
        """Per layer, its cached keys (B, n_kv, T_l, hs); None for a layer that has seen nothing."""
        return [None if b is None else b[:, :, :n] for b, n in zip(self._keys, self._seen)]

    @property
    def values(self) -> list[torch.Tensor | None]:
        return [None if b is None else b[:, :, :n] for b, n in zip(self._values, self._seen)]

    def mark_padding(self, layer: int, real: torch.Tensor | None, rows: int) -> None:
        """The prefill wrote `rows` rows at `layer`, of which sample b's first real[b] are its own
        (real None: all of them)."""
        self._real[layer] = None if real is None else (real, rows)

    def padding_mask(self, layer: int) -> torch.Tensor | None:
        """(B, 1, 1, S) True where a decoded token may attend at `layer`; None when nothing is padding."""
        if self._real[layer] is None:
            return None
        real, rows = self._real[layer]
        index = torch.arange(self._seen[layer], device=real.device)
        return ((index < real[:, None]) | (index >= rows))[:, None, None]

    def seen(self, layer: int) -> int:
        """How many tokens `layer` holds."""
        return self._seen[layer]

    @property
    def num_layers(self) -> int:
        return len(self._seen)

    def nbytes(self) -> int:
        """Bytes of the cached rows (not of the spare ones)."""
        return sum(t.numel() * t.element_size() for t in self.keys + self.values if t is not None)


def _regrown(buffer: torch.Tensor | None, filled: int, rows: int, like: torch.Tensor) -> torch.Tensor:
    """A buffer of `rows` rows shaped and typed like `like`, holding `buffer`'s first `filled` rows."""
    grown = like.new_empty(like.shape[0], like.shape[1], rows, like.shape[3])
    if buffer is not None:
        grown[:, :, :filled] = buffer[:, :, :filled]
    return grown

# -----------------------------------------------------------------------------
# The LLaVA model


@dataclass
class Prefill:
    logits: torch.Tensor  # (B, T', vocab), float32: the last layer's rows (T' = T - visual tokens dropped)
    # For each pruning stage's layer, the ORIGINAL indices (0..N-1, raster order) of the
    # visual tokens that survive it, as CPU int64 tensors; empty without a schedule.
    kept: dict[int, torch.Tensor] = field(default_factory=dict)
    pruning_seconds: float = 0.0  # time spent choosing tokens, measured only when forward is given a clock
    loss: torch.Tensor | None = None  # 0-d: the next-token cross-entropy, when forward is given labels
    # A batch: each prompt's real rows of `logits` (its first ones; the rest pad); None for one prompt.
    # Its `kept` holds per stage a (B, k) tensor, rows padded with -1 where a prompt kept fewer.
    lengths: list[int] | None = None


@dataclass
class Generation:
    token_ids: list[int]  # the new tokens, the stopping eos included (a batch: its first prompt's)
    text: str | None  # decoded without special tokens; None when the inputs carry no tokenizer
    kept: dict[int, torch.Tensor] = field(default_factory=dict)  # as in Prefill
    sequences: list[list[int]] = field(default_factory=list)  # each prompt's new tokens
    texts: list[str | None] = field(default_factory=list)  # each prompt's answer


def batch_kept(pruners) -> dict[int, torch.Tensor]:
    """Per stage's layer, each prompt's kept original indices as the rows of one (B, k) tensor, padded
    with -1 (a ragged stage such as FEATHER's first keeps a different number per image; a prompt whose
    schedule has no stage there, all -1)."""
    kept = {}
    for layer in sorted(set().union(*(p.kept for p in pruners if p))):
        per = [p.kept.get(layer, torch.empty(0, dtype=torch.long)) if p else torch.empty(0, dtype=torch.long)
               for p in pruners]
        kept[layer] = torch.full((len(per), max(len(k) for k in per)), -1, dtype=torch.long)
        for b, k in enumerate(per):
            kept[layer][b, :len(k)] = k
    return kept


class LlavaForConditionalGeneration(nn.Module):
    def __init__(self, config: LlavaConfig):
        super().__init__()
        self.config = config
        self.vision_tower = CLIPVisionTower(config.vision_config)
        self.multi_modal_projector = LlavaMultiModalProjector(config)
        self.language_model = LlamaForCausalLM(config.text_config, config.tie_word_embeddings)

    @property
    def device(self) -> torch.device:
        return self.multi_modal_projector.linear_1.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.multi_modal_projector.linear_1.weight.dtype

    def patch_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pixels (B, 3, S, S) -> the vision tower's features (B, N, d_vision): the projector's
        input, and phi_KNN's."""
        feats = self.vision_tower(pixel_values, self.config.vision_feature_layer)
        if self.config.vision_feature_select_strategy == "default":
            feats = feats[:, 1:]  # drop CLS: N = grid * grid patches, raster order
        return feats

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pixels (B, 3, S, S) -> visual tokens in the decoder's space (B, N, d_text)."""
        return self.multi_modal_projector(self.patch_features(pixel_values))

    def embed(self, input_ids: torch.Tensor, visual_tokens: torch.Tensor) -> torch.Tensor:
        """Token embeddings (B, T, d) with each image's N visual tokens (B, N, d) written over its
        N placeholders."""
        self._check_input_ids(input_ids, visual_tokens.shape[0])
        return self._splice(input_ids, visual_tokens)

    def _splice(self, input_ids: torch.Tensor, visual_tokens: torch.Tensor) -> torch.Tensor:
        is_visual = input_ids == self.config.image_token_index
        # The placeholder id may lie outside the vocabulary; its embedding is overwritten anyway.
        h = self.language_model.model.embed_tokens(input_ids.masked_fill(is_visual, 0))
        return h.masked_scatter(is_visual[..., None], visual_tokens.to(h.dtype))

    def _check_input_ids(self, input_ids: torch.Tensor, num_images: int, visual_start: int | None = None) -> None:
        """Every id in the vocabulary (placeholders aside), N placeholders per image and, when pruning,
        all N in one span from `visual_start`. Run on the ids where they are (the processor's: on the
        CPU, before they move), so that it costs no wait for a GPU."""
        N, image = self.config.num_visual_tokens, self.config.image_token_index
        is_visual = input_ids == image
        self._check_vocabulary(input_ids[~is_visual])
        n_placeholders = int(is_visual.sum())
        if n_placeholders != num_images * N:
            raise ValueError(f"input_ids hold {n_placeholders} image tokens (id {image}) for {num_images} image(s) "
                             f"of {N} visual tokens each; expected {num_images * N}")
        # A start past the end would slice a short (even empty) span that passes .all(): bound it first.
        if visual_start is not None and not (0 <= visual_start <= input_ids.shape[1] - N
                                             and is_visual[:, visual_start:visual_start + N].all()):
            raise ValueError(f"pruning needs the {N} image tokens (id {image}) as one contiguous span from "
                             f"inputs.visual_start={visual_start}, as the processor writes them")

    def _check_vocabulary(self, token_ids: torch.Tensor) -> None:
        vocab = self.config.text_config.vocab_size
        if token_ids.numel():
            low, high = torch.aminmax(token_ids)
            if low < 0 or high >= vocab:
                bad = token_ids[(token_ids < 0) | (token_ids >= vocab)][0].item()
                raise ValueError(f"token id {bad} is outside the vocabulary of {vocab} (text_config.vocab_size)")

    def _check_cache(self, cache: KVCache) -> None:
        layers = self.config.text_config.num_hidden_layers
        if cache.num_layers != layers:
            raise ValueError(f"KVCache has {cache.num_layers} layers; the model has {layers}")

    def forward(self, inputs, cache: KVCache | None = None, schedule=None, logits_to_keep: int = 0,
                clock=None, labels: torch.Tensor | None = None) -> Prefill:
        """Prefill: full-sequence logits (B, T', vocab), float32, and the visual tokens kept; the one
        forward pass of training (with labels) and inference.

        `inputs` is what the processor returns (input_ids (B, T), pixel_values (B, 3, S, S) and,
        for pruning, visual_start). With a cache, it must be empty; it is filled.
        schedule (a pruning.Schedule, or for a batch one per prompt, None for a prompt not pruned):
        drops visual tokens before its stage layers; T' = T - dropped tokens, since the logits come
        from the last layer's rows (a batch: each prompt's first Prefill.lengths[b] rows).
        logits_to_keep=k > 0: only the last k rows' logits, (B, k, vocab).
        clock: a function returning seconds (the benchmark's); given, Prefill.pruning_seconds is
        the time spent choosing tokens.
        labels (B, T): the token each position should be followed by at the next one, -100 where
        nothing is learned (training: the prompt); Prefill.loss is their mean cross-entropy.
        """
        if logits_to_keep < 0:
            raise ValueError(f"logits_to_keep must be 0 (every row) or a positive count, got {logits_to_keep}")
        if cache is not None:
            self._check_cache(cache)
            if cache.length:
                raise ValueError(f"the prefill needs an empty KVCache; this one already holds {cache.length} positions")
        B, T = inputs.input_ids.shape
        self._check_context(T)
        text, side, N = self.config.text_config, self.config.vision_config.grid_side, self.config.num_visual_tokens
        lengths = getattr(inputs, "lengths", None)
        if lengths is None and B > 1:  # a batch built by hand, without padding
            lengths = [T] * B
        if lengths is not None and (len(lengths) != B or not all(is_int(n) and 0 < n <= T for n in lengths)):
            raise ValueError(f"inputs.lengths={lengths!r} must give each of the {B} prompts' length, 1 to {T}")
        schedules = (list(schedule) if isinstance(schedule, (list, tuple))
                     else None if schedule is None else [schedule] * B)
        if schedules is not None:
            if len(schedules) != B:
                raise ValueError(f"{len(schedules)} schedules for a batch of {B}: give one, or one per prompt "
                                 "(None for a prompt not pruned)")
            for s in (s for s in schedules if s is not None):
                if not hasattr(s, "pruner"):  # model.py does not import pruning.py: name the type wanted
                    raise TypeError(f"schedule must be a pruning.Schedule such as pruning.feather(num_layers=...), "
                                    f"not {type(s).__name__} {s!r}")
                s.check(text.num_hidden_layers, N, (side, side))  # before any compute
            visual_start = getattr(inputs, "visual_start", None)
            if not is_int(visual_start):
                raise TypeError(f"pruning needs inputs.visual_start, where the visual tokens begin (the processor's "
                                f"Inputs carry it); got {type(inputs).__name__} with visual_start={visual_start!r}")
        else:
            visual_start = None
        self._check_input_ids(inputs.input_ids, inputs.pixel_values.shape[0], visual_start)
        input_ids = inputs.input_ids.to(self.device)
        features = self.patch_features(inputs.pixel_values.to(self.device, self.dtype))
        visual_tokens = self.multi_modal_projector(features)
        pruners = None if schedules is None else [
            None if s is None else s.pruner(N, (side, side), visual_start, text.rope_theta, features[b], clock,
                                            visual_tokens[b])
            for b, s in enumerate(schedules)]
        positions = torch.arange(T, device=self.device).expand(B, T)
        h = self._splice(input_ids, visual_tokens)
        real = None if lengths is None else torch.tensor(lengths, device=self.device)
        logits = self.language_model(h, positions, cache, pruners, logits_to_keep, real)
        if cache is not None:
            cache.length = T
            cache.positions = real  # each prompt's next position: its own length
        loss = None
        if labels is not None:  # position t predicts token t + 1
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten().to(logits.device),
                                   ignore_index=-100)
        if pruners is None:
            return Prefill(logits.float(), loss=loss, lengths=lengths)
        if lengths is None:  # one prompt: kept as today, 1-d per stage
            return Prefill(logits.float(), pruners[0].kept, pruners[0].seconds, loss)
        # each prompt's real rows of the logits: its length less the visual tokens it dropped
        final = [n - N + len(p.present) if p else n for n, p in zip(lengths, pruners)]
        return Prefill(logits.float(), batch_kept(pruners), sum(p.seconds for p in pruners if p), loss, final)

    def decode_step(self, token_ids: torch.Tensor, cache: KVCache, check_ids: bool = True) -> torch.Tensor:
        """One new token per sequence (B, 1) after a prefill -> its logits (B, 1, vocab), float32.

        check_ids=False: the ids are the model's own choice (an argmax of its logits, as in generate
        and the benchmark), so the vocabulary check, which on a GPU makes every token wait for it,
        is skipped."""
        self._check_cache(cache)
        if token_ids.ndim != 2 or token_ids.shape[1] != 1:
            raise ValueError(f"decode_step takes token ids of shape (B, 1), got {tuple(token_ids.shape)}")
        if cache.length == 0:
            raise ValueError("decode_step needs a KVCache filled by a prefill (model(inputs, cache)); this one is empty")
        self._check_context(cache.length + 1)
        if check_ids:
            self._check_vocabulary(token_ids)
        if cache.positions is None:
            positions = torch.full((token_ids.shape[0], 1), cache.length, device=self.device)
        else:  # a padded batch: each prompt continues from its own length
            positions = cache.positions[:, None]
            cache.positions = cache.positions + 1
        h = self.language_model.model.embed_tokens(token_ids.to(self.device))
        logits = self.language_model(h, positions, cache)
        cache.length += 1
        return logits.float()

    @torch.inference_mode()
    def generate(self, inputs, max_new_tokens: int = 32, schedule=None) -> Generation:
        """Greedy decoding with the KV cache; each prompt stops at eos or after max_new_tokens.
        With a schedule (or one per prompt of a batch), the prefill prunes; decoding then reads the
        pruned caches and drops nothing."""
        B = inputs.input_ids.shape[0]
        if not is_int(max_new_tokens):
            raise TypeError(f"max_new_tokens must be an int, got {type(max_new_tokens).__name__} {max_new_tokens!r}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        T, limit = inputs.input_ids.shape[1], self.config.text_config.max_position_embeddings
        if T + max_new_tokens - 1 > limit:  # the last new token is never fed back
            raise ValueError(f"{'the prompt is too long' if T > limit else 'too long an answer allowed'}: the prompt "
                             f"takes {T} tokens with the image's {self.config.num_visual_tokens} visual tokens, plus "
                             f"max_new_tokens {max_new_tokens}, over the model's context of {limit}")
        eos = self.config.text_config.eos_token_id
        eos = set(eos) if isinstance(eos, list) else {eos}
        cache = KVCache(self.config.text_config.num_hidden_layers, reserve=max_new_tokens - 1)
        prefill = self(inputs, cache, schedule, logits_to_keep=1)
        logits = prefill.logits[:, -1]
        new, done = [[] for _ in range(B)], [False] * B
        while True:
            next_id = logits.argmax(-1)  # (B,); ties go to the lowest id
            # The tokens and whether their rows were finite come to the host together: one sync per token.
            # NaN logits would otherwise decode as a token and end as an empty answer.
            values = torch.cat((next_id, torch.isfinite(logits).all(-1))).tolist()
            for b in (b for b in range(B) if not done[b]):  # a finished prompt's row is computed, not read
                if not values[B + b]:
                    raise ValueError(f"non-finite logits at new token {len(new[b]) + 1} (NaN or inf): the weights "
                                     f"hold NaN/inf or the activations overflowed in {self.dtype}")
                new[b].append(values[b])
                done[b] = values[b] in eos or len(new[b]) == max_new_tokens
            if all(done):
                break  # the last token is never fed back: no decode step is wasted on it
            logits = self.decode_step(next_id[:, None], cache, check_ids=False)[:, -1]
        tokenizer = getattr(inputs, "tokenizer", None)
        texts = [tokenizer.decode(n, skip_special_tokens=True) if tokenizer is not None else None for n in new]
        return Generation(token_ids=new[0], text=texts[0], kept=prefill.kept, sequences=new, texts=texts)

    def _check_context(self, length: int) -> None:
        limit = self.config.text_config.max_position_embeddings
        if length > limit:
            raise ValueError(f"sequence of {length} tokens exceeds the model's context of {limit} "
                             "(text_config.max_position_embeddings)")
