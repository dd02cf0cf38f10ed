# python -m pytest tests/test_shipped.py -q
"""The models shipped in weights/: feather-tiny (12x12 visual tokens) and feather-576 (LLaVA-1.5's
24x24). Each loads with the same loader as a real LLaVA-1.5 folder, has the shape the demo and
the tutorial rely on, and answers fixed questions correctly; feather-tiny's first 40 test
questions and FastV's kept tokens on them are pinned (greedy decoding, float32, CPU).
feather-smol ships as a delta on SmolLM2 (weights/feather-smol); built by `fetch`, it answers too."""
import json
from pathlib import Path

import pytest
from safetensors import safe_open
from tokenizers import Tokenizer

from feather_mini import SHIPPED_WEIGHTS, WEIGHTS_576, checkpoint, fetch, load_pretrained, synthetic
from conftest import needs_feather_smol

# folder, size limit in MB, grid side, parameters
MODELS = {"feather-tiny": (SHIPPED_WEIGHTS, 20, 12, 2_507_136), "feather-576": (WEIGHTS_576, 30, 24, 2_562_432)}


@pytest.mark.parametrize("name", MODELS)
def test_shipped_folder_is_small_and_complete(name):
    """The four llava-hf files and the model card, nothing pickled, within the size limit (20 and 30 MB)."""
    folder, limit_mb, _, _ = MODELS[name]
    files = sorted(p.name for p in Path(folder).iterdir())
    assert files == ["README.md", "config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json"]
    assert sum(p.stat().st_size for p in Path(folder).iterdir()) <= limit_mb * 2 ** 20


@pytest.mark.parametrize("name", MODELS)
def test_shipped_model_shape(name):
    """feather-tiny: a 12x12 grid (96 px, 8 px patches); feather-576: 24x24 (192 px, 8 px patches);
    both an 8-layer decoder with RoPE, 4 heads of 32."""
    folder, _, side, params = MODELS[name]
    model, processor = load_pretrained(folder)
    assert processor.grid_shape == (side, side) and model.config.num_visual_tokens == side * side
    text = model.config.text_config
    assert (text.num_hidden_layers, text.num_attention_heads, text.head_dim) == (8, 4, 32)
    assert sum(p.numel() for p in model.parameters()) == params


@pytest.mark.parametrize("name", MODELS)
def test_shipped_model_answers_a_box_and_a_colour(name):
    """Test example 0, "Where is the red triangle?", gets its exact box; example 1, "What color is the square?", "red"."""
    model, processor = load_pretrained(MODELS[name][0])
    loc, colour = synthetic.example("test", 0), synthetic.example("test", 1)
    assert (loc.question.question, colour.question.question) == ("Where is the red triangle?", "What color is the square?")
    answer = model.generate(processor(loc.scene.image(), loc.question.question), max_new_tokens=16).text
    assert answer == loc.question.answer == "[0.62, 0.67, 0.92, 0.96]"
    assert synthetic.answer_correct(loc.question, answer)
    assert model.generate(processor(colour.scene.image(), colour.question.question), max_new_tokens=16).text == "red"


def test_shipped_model_on_the_first_40_test_questions():
    """Unpruned, all 20 boxes and all 20 colour/count/existence answers are right. FastV at layer 1
    (K = 3 of 32 scaled to 8 layers) keeps 36 of 144 tokens an image, 1440 in all, 880 of them
    from the bottom six rows (61%; rows 9 and 10 alone 616), and 12 of the 20 boxes stay right."""
    from feather_mini import evaluate, pruning

    model, processor = load_pretrained(SHIPPED_WEIGHTS)
    cases = evaluate.synthetic_cases(40)
    row, _ = evaluate.evaluate(model, processor, cases, "none", None)
    assert (row["loc_acc"], row["other_acc"]) == (1.0, 1.0)
    row, per_row = evaluate.evaluate(model, processor, cases, "fastv", pruning.fastv(num_layers=8))
    assert row["layer"] == [1]
    assert per_row == [35, 116, 73, 84, 216, 36, 35, 107, 86, 300, 316, 36]  # 1440 = 40 x 36; 880 in rows 6-11
    assert row["loc_acc"] == 12 / 20


SMOL_DELTA = checkpoint.shipped_weights(checkpoint.FEATHER_SMOL)


def test_feather_smol_ships_as_a_delta_on_smollm2():
    """What training changed, within 30 MB: the vision tower (71 tensors), the projector (4), the
    <image> embedding row, and rank-16 adapters on 7 matrices in each of SmolLM2's 30 layers (420
    tensors, 4,884,480 numbers), made on the GGUF of the sha256 that `fetch smollm2` checks."""
    files = sorted(p.name for p in SMOL_DELTA.iterdir())
    assert files == ["README.md", "config.json", "delta.json", "delta.safetensors", "preprocessor_config.json",
                     "tokenizer.json", "train_log.jsonl"]
    assert sum(p.stat().st_size for p in SMOL_DELTA.iterdir()) <= 30 * 2 ** 20
    meta = json.loads((SMOL_DELTA / "delta.json").read_text())
    assert (meta["base"], meta["base_sha256"], meta["rank"], meta["alpha"]) == ("smollm2", fetch.SMOLLM2.sha256, 16, 32.0)
    with safe_open(SMOL_DELTA / "delta.safetensors", "pt") as f:
        keys = list(f.keys())
        lora = [k for k in keys if ".lora_" in k]
        assert len(lora) == 30 * 7 * 2 and sum(f.get_slice(k).get_shape()[0] * f.get_slice(k).get_shape()[1]
                                               for k in lora) == 4_884_480
    assert sum(k.startswith("vision_tower.") for k in keys) == 71
    assert sum(k.startswith("multi_modal_projector.") for k in keys) == 4
    assert [k for k in keys if k.startswith("language_model.") and ".lora_" not in k] == [
        "language_model.model.embed_tokens.added_rows"]


def test_every_answer_fits_the_answer_cap_with_every_shipped_tokenizer():
    """A box is 4 tokens for the word-level models and 24 for SmolLM2, which writes numbers digit by
    digit; the longest of the first 400 test answers, and its end token, fit ANSWER_TOKENS (32),
    the cap that eval and training's validation share (validation's old 8 cut every box of feather-smol)."""
    answers = [ex.question.answer for ex in synthetic.test_split(400, 0)]
    box = "[0.62, 0.67, 0.92, 0.96]"
    for folder, box_tokens in ((SHIPPED_WEIGHTS, 4), (WEIGHTS_576, 4), (SMOL_DELTA, 24)):
        tokenizer = Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
        assert len(tokenizer.encode(box, add_special_tokens=False).ids) == box_tokens
        longest = max(len(tokenizer.encode(a, add_special_tokens=False).ids) for a in answers)
        assert longest + 1 <= synthetic.ANSWER_TOKENS, (folder, longest)


@needs_feather_smol
def test_feather_smol_answers_a_box_and_a_colour():
    """Built from the shipped delta, feather-smol gives test example 0 its exact box and example 1 "red"
    (after a space: SmolLM2's byte-level tokens carry the space after "ASSISTANT:"; the scorer ignores it)."""
    model, processor = load_pretrained(checkpoint.FEATHER_SMOL)
    loc, colour = synthetic.example("test", 0), synthetic.example("test", 1)
    answer = model.generate(processor(loc.scene.image(), loc.question.question), synthetic.ANSWER_TOKENS).text
    assert answer == " " + loc.question.answer == " [0.62, 0.67, 0.92, 0.96]"
    assert model.generate(processor(colour.scene.image(), colour.question.question), 8).text == " red"
