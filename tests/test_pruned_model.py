# python -m pytest tests/test_pruned_model.py -q
"""The model running a schedule: what each layer sees and caches, the positions kept tokens
keep, and equivalence with running the later layers on only the kept tokens."""
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from PIL import Image, ImageDraw

import feather_mini as fm
from feather_mini.model import LlavaConfig, TextConfig, VisionConfig, apply_rope, rope_cos_sin
from feather_mini.pruning import Schedule, Stage, feather, phi_uniform, uniform
from feather_mini.processing import Inputs

T, START, N = 584, 2, 576  # <s> USER: [576 visual tokens] What is in the picture? ASSISTANT:
FASTV_AT_3 = Schedule([Stage(3, "phi_original", 0.25)], "fastv@3")


@pytest.fixture(scope="module")
def loaded(grid24_dir):
    """The 8-layer, 24x24-grid checkpoint and a picture with three coloured boxes."""
    model, processor = fm.load_pretrained(grid24_dir)
    image = Image.new("RGB", (192, 192), (240, 240, 240))
    draw = ImageDraw.Draw(image)
    draw.rectangle((10, 10, 60, 50), fill=(220, 20, 20))
    draw.rectangle((120, 30, 180, 90), fill=(20, 160, 40))
    draw.ellipse((40, 130, 110, 185), fill=(30, 40, 200))
    inputs = processor(image, "What is in the picture?")
    assert inputs.input_ids.shape == (1, T) and inputs.visual_start == START
    return model, inputs


def rows_seen(kept: torch.Tensor, length: int = T) -> list[int]:
    """Rows (= original positions) a layer after a stage sees: the text and the kept visual tokens."""
    return list(range(START)) + (START + kept).tolist() + list(range(START + N, length))


def run_on_rows(model, input_ids, pixel_values, rows_from: dict[int, list[int]]) -> torch.Tensor:
    """The decoder written out without a Pruner: layer i runs on the rows of rows_from's last
    entry at or before i (all rows before the first), at their original positions."""
    h = model.embed(input_ids, model.image_features(pixel_values))
    positions = torch.arange(input_ids.shape[1])[None]
    text = model.config.text_config
    for i, layer in enumerate(model.language_model.model.layers):
        if i in rows_from:
            keep = torch.isin(positions[0], torch.tensor(rows_from[i]))
            h, positions = h[:, keep], positions[:, keep]
        cos, sin = rope_cos_sin(positions, text.head_dim, text.rope_theta)
        h = layer(h, cos, sin, None, i)
    return model.language_model.lm_head(model.language_model.model.norm(h))


@torch.no_grad()
def test_each_layer_caches_exactly_what_it_saw(loaded):
    """Pruning 75% before layer 3: layers 0-2 hold all 584 tokens, layers 3-7 the 8 text + 144 kept."""
    model, inputs = loaded
    cache = fm.KVCache(8)
    out = model(inputs, cache, schedule=FASTV_AT_3)
    assert [cache.seen(layer) for layer in range(8)] == [584] * 3 + [152] * 5
    assert out.logits.shape == (1, 152, 64)  # rows of the last layer
    assert cache.length == 584  # the next token gets position 584, whatever was dropped


@torch.no_grad()
def test_kept_tokens_keep_their_original_positions(loaded):
    """Layer 3's cached keys are its keys of the rows seen (0, 1, 2 + each kept index, the question at
    578..583) rotated at those ORIGINAL positions, not at 0..151."""
    model, inputs = loaded
    cache = fm.KVCache(8)
    kept = model(inputs, cache, schedule=FASTV_AT_3).kept[3]
    rows = torch.tensor(rows_seen(kept))
    assert rows[-6:].tolist() == [578, 579, 580, 581, 582, 583]
    text = model.config.text_config
    h = model.embed(inputs.input_ids, model.image_features(inputs.pixel_values))
    everything = torch.arange(T)[None]
    cos, sin = rope_cos_sin(everything, text.head_dim, text.rope_theta)
    for layer in model.language_model.model.layers[:3]:
        h = layer(h, cos, sin, None, 0)
    attention = model.language_model.model.layers[3]
    _, k = attention.self_attn.project_qk(attention.input_layernorm(h[:, rows]))
    for positions, match in ((rows[None], True), (torch.arange(len(rows))[None], False)):
        cos, sin = rope_cos_sin(positions, text.head_dim, text.rope_theta)
        diff = (apply_rope(k, cos, sin) - cache.keys[3]).abs().max().item()
        assert (diff <= 1e-5) == match, f"keys at positions {positions[0, -3:].tolist()}: max difference {diff:.2e}"


@torch.no_grad()
def test_kept_indices_are_sorted_original_indices(loaded):
    """kept: for each stage layer, sorted int64 indices into the full 24x24 grid, each stage a subset of the last."""
    model, inputs = loaded
    kept = model(inputs, schedule=feather(num_layers=8)).kept
    assert list(kept) == [2, 4]
    for indices in kept.values():
        assert indices.dtype == torch.int64
        assert indices.tolist() == sorted(set(indices.tolist()))
        assert 0 <= indices.min().item() and indices.max().item() < N
    assert set(kept[4].tolist()) <= set(kept[2].tolist())


@torch.no_grad()
def test_feather_on_24x24_keeps_the_counts_of_reference_md(loaded):
    """Layer 2: top int(0.3 * 576) = 172 by phi_-R united with the 64-token stride-3 grid (M tokens);
    layer 4: top int(0.09 * M) of those M."""
    model, inputs = loaded
    kept = model(inputs, schedule=feather(num_layers=8)).kept
    M = len(kept[2])
    assert set(phi_uniform(24, 24, 3).tolist()) <= set(kept[2].tolist())
    assert 172 <= M <= 236
    assert len(kept[4]) == int(0.09 * M)


@torch.no_grad()
@pytest.mark.parametrize("schedule", [FASTV_AT_3, feather(num_layers=8), uniform(num_layers=8),
                                      Schedule([Stage(1, "phi_knn", 0.1), Stage(5, "phi_original", 0.02)])])
def test_pruned_forward_equals_later_layers_on_only_the_kept_tokens(loaded, schedule):
    """Our prefill's logits equal the decoder run by hand on a sequence cut down to the kept tokens."""
    model, inputs = loaded
    out = model(inputs, schedule=schedule)
    by_hand = run_on_rows(model, inputs.input_ids, inputs.pixel_values,
                          {layer: rows_seen(kept) for layer, kept in out.kept.items()})
    diff = (out.logits - by_hand).abs().max().item()
    assert diff <= 1e-5, f"pruned prefill and hand-built sequence differ by {diff:.2e}"


@torch.no_grad()
def test_decoding_after_a_pruned_prefill_equals_recomputation(loaded):
    """3 decoded tokens read the pruned caches; recomputing with the same kept rows plus the new
    tokens gives the same logits, and nothing more is pruned."""
    model, inputs = loaded
    cache = fm.KVCache(8)
    schedule = feather(num_layers=8)
    out = model(inputs, cache, schedule=schedule)
    ids = inputs.input_ids
    logits = out.logits[:, -1]
    for step in range(3):
        next_id = logits.argmax(-1, keepdim=True)
        ids = torch.cat([ids, next_id], dim=1)
        logits = model.decode_step(next_id, cache)[:, -1]
        rows = {layer: rows_seen(kept, ids.shape[1]) for layer, kept in out.kept.items()}
        recomputed = run_on_rows(model, ids, inputs.pixel_values, rows)[:, -1]
        diff = (logits - recomputed).abs().max().item()
        assert diff <= 1e-5, f"step {step}: decoded and recomputed logits differ by {diff:.2e}"
    assert cache.seen(7) == START + len(out.kept[4]) + 6 + 3


@torch.no_grad()
def test_keeping_every_token_equals_no_pruning(loaded):
    """A stage that keeps 100% changes nothing: same logits, bit for bit."""
    model, inputs = loaded
    out = model(inputs, schedule=Schedule([Stage(2, "phi_no_rope", 1.0)]))
    assert out.kept[2].tolist() == list(range(N))
    assert torch.equal(out.logits, model(inputs).logits)


def test_generate_reports_the_prefill_kept_tokens(loaded):
    """generate(schedule=...) returns the same kept indices as the prefill, and the same first token."""
    model, inputs = loaded
    schedule = feather(num_layers=8)
    generation = model.generate(inputs, max_new_tokens=3, schedule=schedule)
    with torch.no_grad():
        out = model(inputs, schedule=schedule)
    assert {k: v.tolist() for k, v in generation.kept.items()} == {k: v.tolist() for k, v in out.kept.items()}
    assert generation.token_ids[0] == out.logits[0, -1].argmax().item()
    assert model.generate(inputs, max_new_tokens=1).kept == {}


def test_selection_is_deterministic(loaded):
    """The same inputs select the same tokens on every run."""
    model, inputs = loaded
    with torch.no_grad():
        first = model(inputs, schedule=feather(num_layers=8)).kept
        second = model(inputs, schedule=feather(num_layers=8)).kept
    assert all(torch.equal(first[layer], second[layer]) for layer in first)


def test_bad_schedule_fails_before_any_compute(loaded):
    """A stage past the model's depth raises before the vision tower runs."""
    model, inputs = loaded
    calls = []
    hook = model.vision_tower.register_forward_hook(lambda *args: calls.append(1))
    try:
        with pytest.raises(ValueError, match=r"layer 8 is not below the model's depth of 8 layers"):
            model(inputs, schedule=Schedule([Stage(8, "phi_original", 0.25)]))
    finally:
        hook.remove()
    assert calls == []


def test_a_batch_built_by_hand_prunes_each_prompt(loaded):
    """A batch of 2 equal prompts (no padding, no lengths given) prunes each as alone: kept is (2, k), each
    row the single prompt's kept indices (this was refused before batches were supported)."""
    model, inputs = loaded
    batch = Inputs(inputs.input_ids.repeat(2, 1), inputs.pixel_values.repeat(2, 1, 1, 1), START, N, (24, 24))
    alone, both = model(inputs, schedule=FASTV_AT_3).kept[3], model(batch, schedule=FASTV_AT_3).kept[3]
    assert both.shape == (2, len(alone)) and torch.equal(both[0], alone) and torch.equal(both[1], alone)


@pytest.mark.parametrize("start", [START - 1, START + 1, T - N + 1, T])
def test_pruning_reads_the_visual_span_from_the_inputs(loaded, start):
    """visual_start must point at the N image tokens: one too early or late, or past the end (where
    a slice would come out short and pass unseen), is refused before any compute."""
    model, inputs = loaded
    with pytest.raises(ValueError, match=rf"as one contiguous span from inputs.visual_start={start}, "):
        model(replace(inputs, visual_start=start), schedule=FASTV_AT_3)


def test_pruning_needs_a_visual_start(loaded):
    """Inputs of one's own without visual_start: a TypeError saying what pruning needs."""
    model, inputs = loaded
    bare = SimpleNamespace(input_ids=inputs.input_ids, pixel_values=inputs.pixel_values)
    with pytest.raises(TypeError, match=r"pruning needs inputs.visual_start, .* got SimpleNamespace with "
                                        r"visual_start=None"):
        model(bare, schedule=FASTV_AT_3)
    assert model(bare).logits.shape == (1, T, 64)  # without pruning it is not needed


def test_grid_criteria_refuse_a_model_that_keeps_cls():
    """vision_feature_select_strategy "full" gives 4x4 + CLS = 17 visual tokens: no grid fits."""
    config = LlavaConfig(VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      image_size=32, patch_size=8),
                         TextConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                    num_attention_heads=4, max_position_embeddings=128),
                         image_token_index=63, vision_feature_layer=-1, vision_feature_select_strategy="full")
    model = fm.LlavaForConditionalGeneration(config)
    ids = torch.tensor([[1, 3] + [63] * 17 + [5, 4]])
    with pytest.raises(ValueError, match=r"the grid \(4, 4\) does not hold the model's 17 visual tokens"):
        model(Inputs(ids, torch.zeros(1, 3, 32, 32), 2, 17, (4, 4)), schedule=uniform(num_layers=4))


def test_schedule_must_be_a_schedule(loaded):
    """A preset's name instead of the preset gets a TypeError that says what to pass."""
    model, inputs = loaded
    with pytest.raises(TypeError, match=r"schedule must be a pruning.Schedule such as pruning.feather\(num_layers"
                                        r"=...\), not str 'feather'"):
        model(inputs, schedule="feather")
