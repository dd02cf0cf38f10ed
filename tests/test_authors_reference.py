# python -m pytest -q tests/test_authors_reference.py
"""feather_mini's pruning against the FEATHER authors' algorithm, re-stated on transformers' own modules.

The authors' code (markendo/FEATHER at c2a09b2, prismatic-vlms/.../llm/llama2_models.py,
FastVLlamaModel.forward and calculate_attention_weight) runs the decoder layer by layer:
before a pruning layer it gathers hidden states and position ids by the kept rows; before
the layer that precedes one, it scores the visual tokens from that layer's normed input.
`authors_forward` below re-states that loop (not copied) with transformers 5's Llama modules,
so neither the scores nor the decoder come from feather_mini. It runs in float32 and, as the
authors ran it, in bfloat16 (and float16), where their cast of the softmax back to the model
dtype before the head mean decides which near-tied tokens make the cut.
"""
import math

import pytest
import torch
from PIL import Image, ImageDraw
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

import feather_mini
from feather_mini import pruning
from feather_mini.pruning import Schedule, Stage

# The authors' config.fastv_ratio per method; their code keeps a share of 1 - fastv_ratio.
FASTV_RATIO = {"fastv": 0.75, "fastv_norope": 0.75, "feather": 0.7}
STRIDE = 3  # FEATHER's "no_rope_s=3"


def picture() -> Image.Image:
    """Deterministic coloured rectangles at different places, so visual tokens differ by content."""
    image = Image.new("RGB", (160, 120), (30, 30, 30))
    draw = ImageDraw.Draw(image)
    for box, colour in [((5, 5, 60, 40), (220, 20, 20)), ((90, 10, 150, 50), (20, 200, 40)),
                        ((30, 70, 80, 115), (30, 60, 230)), ((100, 80, 130, 110), (240, 230, 30))]:
        draw.rectangle(box, fill=colour)
    return image


def hf_embeddings(hf, input_ids, pixel_values):
    """Decoder input as transformers' LlavaModel.forward builds it: token embeddings with the
    image features scattered over the image-token positions."""
    features = torch.cat(hf.model.get_image_features(pixel_values=pixel_values).pooler_output)
    embeds = hf.model.language_model.embed_tokens(input_ids)
    return embeds.masked_scatter((input_ids == hf.config.image_token_id)[..., None], features)


def visual_scores(layer, rotary, h, positions, visual_rows, rope: bool) -> torch.Tensor:
    """calculate_attention_weight: the last token's query against the visual keys, from the layer's
    normed INPUT; softmax over visual keys only (float32), mean over heads."""
    attn, x = layer.self_attn, layer.input_layernorm(h)
    q = attn.q_proj(x).view(1, h.shape[1], -1, attn.head_dim).transpose(1, 2)  # (1, nh, T, hs)
    k = attn.k_proj(x).view(1, h.shape[1], -1, attn.head_dim).transpose(1, 2)  # (1, n_kv, T, hs)
    if rope:  # at the CURRENT (original, possibly gathered) position ids
        q, k = apply_rotary_pos_emb(q, k, *rotary(x, positions))
    k = repeat_kv(k, attn.num_key_value_groups)
    w = q[:, :, -1:] @ k[:, :, visual_rows].transpose(2, 3) / math.sqrt(attn.head_dim)
    return w.softmax(dim=-1, dtype=torch.float32).to(q.dtype).mean(dim=1)[0, 0]  # (n,), the model's dtype


def topk(score: torch.Tensor, k: int) -> torch.Tensor:
    """torch.topk's indices, with its unspecified tie order fixed to the lower index (REFERENCE.md);
    ties are common once the scores are rounded to bfloat16."""
    return torch.sort(score, descending=True, stable=True).indices[:k]


@torch.no_grad()
def authors_forward(hf, input_ids, pixel_values, visual_start, stages=(), method="fastv"):
    """The authors' pruning loop: (kept original visual indices per stage layer, logits (1, T', vocab))."""
    lm = hf.model.language_model
    ratio = 1 - FASTV_RATIO[method]  # their self.fastV_ratio, with its float rounding kept
    h = hf_embeddings(hf, input_ids, pixel_values)
    positions = torch.arange(h.shape[1])[None]
    n = int((input_ids == hf.config.image_token_id).sum())  # visual tokens present, rows start..start+n
    original = torch.arange(n)  # their kept_tokens_original_positions
    kept, score = {}, None
    for i, layer in enumerate(lm.layers):
        if i in stages:
            if method == "feather" and i == stages[0]:  # top by phi_-R, united with the stride grid
                side = int(math.sqrt(n))
                grid = torch.arange(n).view(side, side)[::STRIDE, ::STRIDE].flatten()
                top = torch.unique(torch.cat([topk(score, int(n * ratio)), grid]))
            elif method == "feather":  # second stage: the ratio squared, of the tokens present
                top = topk(score, int(n * (ratio * ratio)))
            else:  # their FastV path: each stage keeps the ratio of the tokens present
                top = topk(score, int(n * ratio))
            top = top.sort().values
            original = original[top]
            kept[i] = original.tolist()
            T = h.shape[1]
            rows = torch.cat([torch.arange(visual_start), visual_start + top, torch.arange(visual_start + n, T)])
            h, positions, n = h[:, rows], positions[:, rows], len(top)
        if i + 1 in stages:
            score = visual_scores(layer, lm.rotary_emb, h, positions, torch.arange(visual_start, visual_start + n),
                                  rope=method == "fastv")
        # transformers 5's decoder layer: no mask + multi-token query = causal SDPA; no cache.
        h = layer(h, attention_mask=None, position_ids=positions, position_embeddings=lm.rotary_emb(h, positions))
    return kept, hf.lm_head(lm.norm(h)).float()


SCHEDULES = {  # (method, preset) on the 8-layer model; 32-layer K=3 and K=8 scale to 1 and 2
    "fastv_K3": ("fastv", lambda: pruning.fastv(layer=3, num_layers=8)),
    "fastv_K8": ("fastv", lambda: pruning.fastv(layer=8, num_layers=8)),
    "fastv_norope_K3": ("fastv_norope", lambda: pruning.fastv_norope(layer=3, num_layers=8)),
    "fastv_norope_K8": ("fastv_norope", lambda: pruning.fastv_norope(layer=8, num_layers=8)),
    "feather": ("feather", lambda: pruning.feather(num_layers=8)),
    # Their FastV code pruning at two layers, each keeping 25% of the tokens present: a second
    # stage scored WITH RoPE at the gathered original positions.
    "fastv_two_stages": ("fastv", lambda: Schedule([Stage(2, "phi_original", 0.25),
                                                    Stage(4, "phi_original", 0.25, of_present=True)], "two")),
}


@pytest.fixture(scope="module", params=["float32", "bfloat16", "float16"])
def setup(request, hf_grid24, grid24_dir):
    """Both models in one dtype: transformers' loaded as the authors would (from_pretrained keeps
    RoPE's inverse frequencies in float32), ours through load_pretrained."""
    from transformers import LlavaForConditionalGeneration
    dtype = getattr(torch, request.param)
    hf = hf_grid24 if dtype == torch.float32 else LlavaForConditionalGeneration.from_pretrained(grid24_dir, dtype=dtype)
    model, processor = feather_mini.load_pretrained(grid24_dir, dtype=dtype)
    inputs = processor(picture(), "What is in the picture?")
    inputs.pixel_values = inputs.pixel_values.to(dtype)
    return hf.eval(), model, inputs


@pytest.fixture(scope="module", params=list(SCHEDULES))
def run(request, setup):
    """One schedule run both ways: (schedule, feather_mini's output, authors' kept, authors' logits, dtype)."""
    hf, model, inputs = setup
    method, make = SCHEDULES[request.param]
    schedule = make()
    with torch.no_grad():
        out = model(inputs, schedule=schedule)
    kept, logits = authors_forward(hf, inputs.input_ids, inputs.pixel_values, inputs.visual_start,
                                   tuple(schedule.layers), method)
    return schedule, out, kept, logits, model.dtype


def test_kept_tokens_match_authors(run):
    """Every stage keeps exactly the visual tokens the authors' algorithm keeps."""
    schedule, out, kept, _, _ = run
    assert sorted(out.kept) == sorted(kept) == schedule.layers
    for layer in schedule.layers:
        ours, theirs = out.kept[layer].tolist(), kept[layer]
        assert ours == theirs, (f"{schedule.name} layer {layer}: {len(set(ours) ^ set(theirs))} indices differ "
                                f"(ours {len(ours)}, authors {len(theirs)}): only ours "
                                f"{sorted(set(ours) - set(theirs))}, only theirs {sorted(set(theirs) - set(ours))}")


def test_final_logits_match_authors(run):
    """The pruned forward's last-position logits equal the authors' loop's (1e-5 in float32, 1e-2 in half)."""
    schedule, out, _, logits, dtype = run
    assert out.logits.shape == logits.shape, f"{schedule.name}: rows {out.logits.shape} vs {logits.shape}"
    diff = (out.logits[0, -1] - logits[0, -1]).abs().max().item()
    limit = 1e-5 if dtype == torch.float32 else 1e-2
    assert diff <= limit, f"{schedule.name}: last-row logits differ by up to {diff:.3g}"


def test_reference_loop_without_pruning_is_transformers(setup):
    """With no pruning layers the reference loop reproduces the unpruned logits (the harness is sound)."""
    hf, model, inputs = setup
    with torch.no_grad():
        ours = model(inputs).logits
    kept, logits = authors_forward(hf, inputs.input_ids, inputs.pixel_values, inputs.visual_start)
    assert kept == {} and ours.shape == logits.shape
    diff = (ours - logits).abs().max().item()
    assert diff <= (1e-5 if model.dtype == torch.float32 else 1e-2), f"unpruned logits differ by up to {diff:.3g}"
