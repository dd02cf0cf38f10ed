# python -m pytest tests/test_shipped.py -q
"""The model shipped in weights/feather-tiny: it loads with the same loader as a real LLaVA-1.5
folder, has the shape the demo and the tutorial rely on, answers the test split's first 40
questions correctly, and FastV's kept tokens on them are pinned (greedy decoding, float32, CPU)."""
from pathlib import Path

from feather_mini import load_pretrained, synthetic
from feather_mini import SHIPPED_WEIGHTS


def test_shipped_folder_is_small_and_complete():
    """The four llava-hf files, nothing pickled, at most 20 MB in all."""
    files = sorted(p.name for p in Path(SHIPPED_WEIGHTS).iterdir())
    assert files == ["README.md", "config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json"]
    assert sum(p.stat().st_size for p in Path(SHIPPED_WEIGHTS).iterdir()) <= 20 * 2 ** 20


def test_shipped_model_shape():
    """A 12x12 grid of visual tokens (96 px, 8 px patches) and an 8-layer decoder with RoPE."""
    model, processor = load_pretrained(SHIPPED_WEIGHTS)
    assert processor.grid_shape == (12, 12) and model.config.num_visual_tokens == 144
    assert model.config.text_config.num_hidden_layers == 8
    assert sum(p.numel() for p in model.parameters()) == 2_507_136


def test_shipped_model_answers_a_box_and_a_colour():
    """Test example 0, "Where is the red triangle?", gets its exact box; example 1, "What color is the square?", "red"."""
    model, processor = load_pretrained(SHIPPED_WEIGHTS)
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
