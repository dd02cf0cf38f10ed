# python -m pytest tests/test_shipped.py -q
"""The models shipped in weights/: feather-tiny (12x12 visual tokens) and feather-576 (LLaVA-1.5's
24x24). Each loads with the same loader as a real LLaVA-1.5 folder, has the shape the demo and
the tutorial rely on, and answers fixed questions correctly; feather-tiny's first 40 test
questions and FastV's kept tokens on them are pinned (greedy decoding, float32, CPU)."""
from pathlib import Path

import pytest

from feather_mini import SHIPPED_WEIGHTS, WEIGHTS_576, load_pretrained, synthetic

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
