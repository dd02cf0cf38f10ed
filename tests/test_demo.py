# python -m pytest -q tests/test_demo.py
"""The demo (on its default model, feather-576) and the heatmap (on feather-tiny): the demo's kept
counts are REFERENCE.md's budgets for a 24x24 grid (N = 576), the built-in example's answers are
pinned (greedy, float32, CPU), the pictures have their sizes, and every error a user can hit is one
line with exit code 2."""
import contextlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from feather_mini import cli, demo, heatmap, load_pretrained, pictures, pruning
from feather_mini.__main__ import main
from feather_mini import SHIPPED_WEIGHTS, WEIGHTS_576
from feather_mini.evaluate import synthetic_cases

GRID_STRIDE_3 = [24 * row + col for row in range(0, 24, 3) for col in range(0, 24, 3)]  # phi_uniform(24, 24, 3): 64


def run_cli(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def demo_json(tmp_path_factory):
    """`demo --json` with its defaults (feather-576, one timed round): the parsed JSON and the PNG's path."""
    png = tmp_path_factory.mktemp("demo") / "demo.png"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["demo", "--json", "--repeats", "1", "--out", str(png)])
    assert code == 0 and err.getvalue() == f"wrote {png}\n"
    return json.loads(out.getvalue()), png


def test_builtin_example_is_the_first_top_half_box_question():
    """Test example 4, "Where is the yellow circle?", box (68, 4, 96, 32): examples 0 and 2 lie lower."""
    index, scene, question = demo.builtin_example()
    assert (index, question.question, question.box) == (4, "Where is the yellow circle?", (68, 4, 96, 32))
    assert question.box[3] <= scene.size // 2


def test_demo_json_has_every_method_in_order(demo_json):
    """The five default methods, each with its schedule, answer, score, kept indices, FLOPs and timing."""
    data, _ = demo_json
    assert [r["method"] for r in data["rows"]] == ["none", "fastv", "fastv_norope", "pyramid_drop", "feather"]
    assert (data["weights"], data["grid_shape"], data["num_visual_tokens"]) == (str(WEIGHTS_576), [24, 24], 576)
    assert data["prompt"] == "Where is the yellow circle?"
    for r in data["rows"]:
        assert set(r) == {"method", "schedule", "answer", "correct", "iou", "kept", "flops_reduction",
                          "prefill_ms", "prefill_ratio"}
        assert r["prefill_ms"] > 0 and r["prefill_ratio"] > 0


def test_demo_kept_counts_are_the_reference_budgets(demo_json):
    """N = 576, layers scaled by 8/32: FastV int(0.25 N) = 144 at layer 1; PyramidDrop 288, 144, 72 at
    layers 2, 4, 6; FEATHER at layer 2 the top int(0.3 N) = 172 united with the 64-token stride-3 grid
    (172..236 tokens; 216 here), at layer 4 int(0.09 * 216) = 19 of those."""
    rows = {r["method"]: r["kept"] for r in demo_json[0]["rows"]}
    count = lambda kept: {layer: len(idx) for layer, idx in kept.items()}  # noqa: E731
    assert count(rows["none"]) == {}
    assert count(rows["fastv"]) == count(rows["fastv_norope"]) == {"1": 144}
    assert count(rows["pyramid_drop"]) == {"2": 288, "4": 144, "6": 72}
    stage1, stage2 = rows["feather"]["2"], rows["feather"]["4"]
    assert 172 <= len(stage1) <= 172 + 64 and set(GRID_STRIDE_3) <= set(stage1)
    assert (len(stage1), len(stage2)) == (216, 19) and len(stage2) == int(0.09 * len(stage1))
    assert set(stage2) <= set(stage1)


def test_demo_kept_indices_sorted_unique_in_range(demo_json):
    """Every stage's kept indices are sorted, unique and among the 576 visual tokens."""
    for r in demo_json[0]["rows"]:
        for idx in r["kept"].values():
            assert idx == sorted(set(idx)) and 0 <= idx[0] and idx[-1] < 576


def test_demo_builtin_answers_pinned(demo_json):
    """Unpruned: the exact box. FastV keeps 60 of its 144 tokens in the bottom half (feather-576's FastV
    leans to the top: README) and 16 of the 49 under the circle's box (rows 1-7, columns 17-23), and
    finds it (IoU 0.74); FastV without RoPE answers garbled words and a wrong box; PyramidDrop and FEATHER
    find the circle on this one image (on the 400-question split FEATHER does worse than FastV: README)."""
    rows = {r["method"]: r for r in demo_json[0]["rows"]}
    assert rows["none"]["answer"] == "[0.71, 0.04, 1.00, 0.33]" and rows["none"]["iou"] == 1.0
    fastv = rows["fastv"]
    under_box = {24 * row + col for row in range(1, 8) for col in range(17, 24)}
    assert (sum(i >= 288 for i in fastv["kept"]["1"]), len(under_box & set(fastv["kept"]["1"]))) == (60, 16)
    assert (fastv["answer"], fastv["correct"], round(fastv["iou"], 2)) == ("[0.75, 0.04, 1.00, 0.29]", True, 0.74)
    assert rows["fastv_norope"]["answer"] == "green green square [0.58, 0.67, 0.92, 1.00]"
    assert [(rows[m]["correct"], round(rows[m]["iou"], 2)) for m in ("fastv_norope", "pyramid_drop", "feather")] == [
        (False, 0.0), (True, 0.74), (True, 0.74)]
    assert rows["feather"]["kept"]["4"] == [44, 66, 67, 68, 69, 70, 90, 91, 92, 113, 116, 140, 141, 142, 187, 461, 462,
                                            485, 486]


def test_demo_flops_reduction_matches_fastv_formula(demo_json):
    """FastV at layer 1 of 8 keeping 144 of 576: the row's FLOPs reduction is pruning.flops_reduction's."""
    model, processor = load_pretrained(WEIGHTS_576)
    cfg = model.config.text_config
    inputs = processor(demo.builtin_example()[1].image(), "Where is the yellow circle?")
    num_text = inputs.input_ids.shape[1] - 576
    rows = {r["method"]: r for r in demo_json[0]["rows"]}
    expected = pruning.flops_reduction({1: 144}, 576, num_text, 8, cfg.hidden_size, cfg.intermediate_size)
    assert rows["fastv"]["flops_reduction"] == pytest.approx(expected, abs=1e-12)
    assert rows["none"]["flops_reduction"] == 0.0


def test_demo_png_size(demo_json):
    """Five 240 px panels with 12 px margins: 1272 x 407 pixels, RGB."""
    data, png = demo_json
    assert data["png"] == str(png)
    with Image.open(png) as image:
        assert (image.size, image.mode) == ((1272, 407), "RGB")


def test_demo_is_the_default_command(tmp_path, monkeypatch, capsys):
    """`python -m feather_mini --methods none` runs the demo and writes demo.png in the cache folder, not in
    the current one (a checkout's root would show it as an untracked file), and says where."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FEATHER_MINI_CACHE", str(tmp_path / "cache"))
    code, out, err = run_cli(["--methods", "none", "--repeats", "1"], capsys)
    assert code == 0, err
    assert "Where is the yellow circle?" in out and out.rstrip().endswith(f"wrote {tmp_path / 'cache' / 'demo.png'}")
    assert (tmp_path / "cache" / "demo.png").is_file() and not (tmp_path / "demo.png").exists()


def test_demo_own_question_about_builtin_scene_is_scored(tmp_path, capsys):
    """--prompt with another question the built-in scene answers ("How many triangles are there?": 1) is scored."""
    code, out, err = run_cli(["demo", "--methods", "none", "--repeats", "1", "--prompt",
                              "How many triangles are there?", "--out", str(tmp_path / "d.png"), "--json"], capsys)
    assert code == 0, err
    data = json.loads(out)
    assert (data["reference"], data["rows"][0]["answer"], data["rows"][0]["correct"]) == ("1", "1", True)


def test_demo_prompt_with_a_line_break(tmp_path, capsys):
    """A prompt holding a newline runs and draws (its title on one line); it failed drawing the title
    after running every method (Pillow cannot measure multiline text)."""
    code, out, err = run_cli(["demo", "--methods", "none", "--repeats", "1", "--prompt", "where is the\ngreen circle ?",
                              "--out", str(tmp_path / "d.png"), "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["prompt"] == "where is the\ngreen circle ?" and (tmp_path / "d.png").is_file()


def test_demo_image_file(tmp_path, capsys):
    """--image: any file; the prompt defaults to 'Describe the image.', and nothing is scored."""
    image = tmp_path / "scene.png"
    demo.builtin_example()[1].image().resize((120, 80)).save(image)  # not square: padded like LLaVA-1.5
    code, out, err = run_cli(["demo", "--image", str(image), "--methods", "none,fastv", "--repeats", "1",
                              "--out", str(tmp_path / "d.png"), "--json"], capsys)
    assert code == 0, err
    data = json.loads(out)
    assert (data["image"], data["prompt"], data["reference"]) == (str(image), "Describe the image.", None)
    assert [(r["correct"], r["iou"]) for r in data["rows"]] == [(None, None), (None, None)]


def error_line(args, capsys):
    code, out, err = run_cli(args, capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1, err
    return err.strip()


def test_error_image_missing(tmp_path, capsys):
    """A missing --image file is named."""
    err = error_line(["demo", "--image", str(tmp_path / "nope.jpg")], capsys)
    assert err == f"feather-mini demo: error: image file not found: {tmp_path / 'nope.jpg'}"


def test_error_image_not_an_image(tmp_path, capsys):
    """A file that is not an image is named."""
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a picture")
    err = error_line(["demo", "--image", str(bad)], capsys)
    assert err.startswith(f"feather-mini demo: error: {bad}: not a readable image")


def test_error_weights_folder_missing(tmp_path, capsys):
    """A missing --weights folder is named."""
    err = error_line(["demo", "--weights", str(tmp_path / "none"), "--out", str(tmp_path / "d.png")], capsys)
    assert err == f"feather-mini demo: error: checkpoint folder not found: {tmp_path / 'none'}"


def test_error_weights_folder_incomplete(tmp_path, capsys):
    """A folder with config.json but no weights file says which file is missing."""
    folder = tmp_path / "partial"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "preprocessor_config.json"):
        shutil.copy(SHIPPED_WEIGHTS / name, folder / name)
    err = error_line(["demo", "--weights", str(folder), "--out", str(tmp_path / "d.png")], capsys)
    assert err == (f"feather-mini demo: error: {folder}: no weights: expected model.safetensors or "
                   "model.safetensors.index.json")


def test_error_unknown_method(tmp_path, capsys):
    """An unknown --methods entry is named, with the accepted ones."""
    err = error_line(["demo", "--methods", "none,fastV"], capsys)
    assert err.startswith("feather-mini demo: error: --methods: unknown method 'fastV'; expected a comma-separated "
                          "subset of none, fastv, fastv_norope,")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_error_device_not_available(tmp_path, capsys):
    """--device cuda on a machine without CUDA."""
    err = error_line(["demo", "--device", "cuda", "--out", str(tmp_path / "d.png")], capsys)
    assert err == "feather-mini demo: error: device 'cuda' requested but CUDA is not available on this machine"


def test_error_prompt_too_long(tmp_path, capsys):
    """A prompt past feather-576's 1024-token context: the count and the limit are named."""
    err = error_line(["demo", "--prompt", "red " * 450, "--out", str(tmp_path / "d.png")], capsys)
    assert err == ("feather-mini demo: error: the prompt is too long: the prompt takes 1029 tokens with the image's "
                   "576 visual tokens, plus max_new_tokens 32, over the model's context of 1024")


def test_error_answer_too_long(tmp_path, capsys):
    """A short prompt but --max-new-tokens past the context: the message says which option overflows."""
    err = error_line(["demo", "--max-new-tokens", "500", "--out", str(tmp_path / "d.png")], capsys)
    assert err == ("feather-mini demo: error: too long an answer allowed: the prompt takes 584 tokens with the "
                   "image's 576 visual tokens, plus max_new_tokens 500, over the model's context of 1024")


def test_error_empty_prompt(tmp_path, capsys):
    """--prompt "" is refused rather than silently replaced by the default question."""
    err = error_line(["demo", "--prompt", " ", "--out", str(tmp_path / "d.png")], capsys)
    assert err == "feather-mini demo: error: --prompt is empty; leave it out for the default question"


def test_error_weights_is_a_file(tmp_path, capsys):
    """--weights naming a file, not a folder."""
    config = SHIPPED_WEIGHTS / "config.json"
    err = error_line(["demo", "--weights", str(config), "--out", str(tmp_path / "d.png")], capsys)
    assert err == (f"feather-mini demo: error: {config} is a file; the weights are a checkpoint folder "
                   "(config.json, safetensors)")


def test_error_out_not_png(tmp_path, capsys):
    """--out must be a .png in an existing folder, checked before anything runs."""
    assert error_line(["demo", "--out", str(tmp_path / "d.jpg")], capsys).endswith(
        f"--out must name a .png file, got '{tmp_path / 'd.jpg'}'")
    assert error_line(["demo", "--out", str(tmp_path / "no" / "d.png")], capsys).endswith(
        f"--out: folder {tmp_path / 'no'} does not exist")
    (tmp_path / "folder.png").mkdir()
    assert error_line(["demo", "--out", str(tmp_path / "folder.png")], capsys).endswith(
        f"--out: {tmp_path / 'folder.png'} is a folder; name a .png file")


def test_error_from_the_shell_has_no_traceback(tmp_path):
    """The real process: exit code 2, one line on stderr, no traceback."""
    result = subprocess.run([sys.executable, "-m", "feather_mini", "--image", str(tmp_path / "x.png")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"feather-mini demo: error: image file not found: {tmp_path / 'x.png'}"


def test_demo_on_a_checkpoint_with_a_cls_token(tmp_path, capsys):
    """vision_feature_select_strategy "full": 145 visual tokens, CLS first. FastV's indices then run over 0..144
    and the picture still lays the 12x12 grid over the 144 patch tokens."""
    folder = tmp_path / "full"
    shutil.copytree(SHIPPED_WEIGHTS, folder)
    config = json.loads((folder / "config.json").read_text())
    config["vision_feature_select_strategy"] = "full"
    (folder / "config.json").write_text(json.dumps(config))
    code, out, err = run_cli(["demo", "--weights", str(folder), "--methods", "none,fastv", "--repeats", "1",
                              "--out", str(tmp_path / "d.png"), "--json"], capsys)
    assert code == 0, err
    data = json.loads(out)
    kept = data["rows"][1]["kept"]["1"]
    assert data["num_visual_tokens"] == 145 and len(kept) == int(0.25 * 145) == 36 and kept[-1] <= 144
    with Image.open(tmp_path / "d.png") as image:
        assert image.size == (760, 407)  # two panels: the figure's minimum width


def test_stages_survived_counts_stages_per_grid_position():
    """2x3 grid with a CLS token first (first_patch=1): index 1 is cell (0, 0), index 6 is cell (1, 2)."""
    kept = {2: torch.tensor([0, 1, 3, 6]), 4: torch.tensor([1, 6])}
    assert pictures.stages_survived(kept, (2, 3), first_patch=1) == [[2, 0, 1], [0, 0, 2]]
    assert pictures.stages_survived({}, (2, 3), first_patch=0) == [[0, 0, 0], [0, 0, 0]]


def test_dropped_tokens_are_dimmed_and_boxes_drawn():
    """A white 2x2 image, one stage keeping cell (0, 0) only: that cell stays white, the others go dark; a
    predicted box over the right half is drawn in orange at its left edge (x = 120 of 240)."""
    square = Image.new("RGB", (2, 2), (255, 255, 255))
    panel = pictures.token_panel(square, (2, 2), [[1, 0], [0, 0]], 1, predicted_box=(0.5, 0.0, 1.0, 1.0))
    assert panel.getpixel((60, 60)) == (255, 255, 255)
    assert panel.getpixel((60, 180)) == (45, 45, 45)  # 255 x (1 - DIM_FIRST 0.82) = 45.9, which Image.blend truncates
    assert panel.getpixel((121, 180)) == pictures.PREDICTED


def test_drawn_box_needs_a_bracketed_box():
    """A garbled answer is scored by parse_box's loose reading but not drawn as a box."""
    assert demo.drawn_box("[0.25, 0.08, 0.54, 0.38]") == (0.25, 0.08, 0.54, 0.38)
    assert demo.drawn_box("[0.62, [0.00, [0.00, 0.67, 0.33") is None


def test_heatmap_examples_within_the_test_split(tmp_path, capsys):
    """--examples above the 400 questions of the test split is refused before anything runs."""
    err = error_line(["heatmap", "--examples", "401", "--out", str(tmp_path / "h.png")], capsys)
    assert err == "feather-mini heatmap: error: --examples must be between 1 and 400 (the test split), got 401"


def test_heatmap_frequency_sums_to_the_budget():
    """FastV keeps 36 tokens per image, so over 8 images its frequencies sum to 36; each lies in [0, 1]."""
    model, processor = load_pretrained(SHIPPED_WEIGHTS)
    frequency = heatmap.kept_frequency(model, processor, synthetic_cases(8), cli.schedules(["fastv"], 8)[0][1], 0)
    assert frequency.shape == (12, 12)
    assert frequency.sum().item() == pytest.approx(36.0) and 0 <= frequency.min() and frequency.max() <= 1


def test_heatmap_on_8_examples_writes_the_png(tmp_path, capsys):
    """`heatmap --examples 8`: one line per method, then the PNG (four 240 px panels)."""
    png = tmp_path / "heat.png"
    code, out, err = run_cli(["heatmap", "--examples", "8", "--out", str(png)], capsys)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert [line.split()[0] for line in lines[1:5]] == ["fastv", "fastv_norope", "pyramid_drop", "feather"]
    assert lines[1].startswith("fastv         layer 1: mean kept  36.0 of 144 grid positions; in the bottom half")
    assert lines[-1] == f"wrote {png}" and "heatmap: 4/4 feather: 8/8" in err
    with Image.open(png) as image:
        assert image.size == (1046, 375)  # 46 + 240 + 20 (each panel's colour bar) + 6 + 3 x 17 + 12


def test_console_script_is_declared():
    """pyproject.toml installs `feather-mini`, pointing at the same main() as `python -m feather_mini`."""
    pyproject = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    scripts = pyproject.split("[project.scripts]\n", 1)[1].split("\n\n", 1)[0]
    assert scripts == 'feather-mini = "feather_mini.__main__:main"'


def test_unknown_words_get_one_line_and_control_tokens_are_refused(tmp_path, capsys):
    """A word the shipped vocabulary lacks is named on stderr (the run goes on); a typed </s> is
    refused, with exit code 2."""
    code = main(["demo", "--prompt", "Where is the purple circle?", "--methods", "none", "--repeats", "1",
                 "--out", str(tmp_path / "a.png")])
    err = capsys.readouterr().err
    assert code == 0
    assert "feather-mini demo: note: 'purple' not in the model's vocabulary (read as <unk>)" in err
    code = main(["demo", "--prompt", "Where is </s> the circle?", "--methods", "none", "--out", str(tmp_path / "b.png")])
    assert code == 2
    assert capsys.readouterr().err.strip() == ("feather-mini demo: error: the question contains the control token "
                                               "'</s>', which the tokenizer would not read as text")


def test_empty_image_is_refused_not_the_builtin_scene(tmp_path, capsys):
    """`--image ""` is an error, not a silent run on the built-in scene."""
    code, out, err = run_cli(["demo", "--image", "", "--out", str(tmp_path / "a.png")], capsys)
    assert (code, out) == (2, "")
    assert err.strip() == "feather-mini demo: error: empty image path"


def test_a_failed_write_comes_after_the_table_and_names_the_path(tmp_path, capsys, monkeypatch):
    """A full disk at the very end: the table is already printed; the error names --out."""
    def full_disk(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full_disk)
    png = tmp_path / "a.png"
    code, out, err = run_cli(["demo", "--methods", "none,fastv", "--repeats", "1", "--out", str(png)], capsys)
    assert code == 2
    assert "| fastv " in out or "\nfastv " in out
    assert err.strip() == f"feather-mini demo: error: --out: could not write {png} (No space left on device)"
