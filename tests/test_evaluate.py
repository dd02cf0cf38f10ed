# python -m pytest -q tests/test_evaluate.py
"""The eval command: its rows and keys, the RefCOCO-style JSONL loader and its errors, and the
conversion of boxes into LLaVA's padded square. It runs on a model trained here
for one step (the tiny 'test' preset: widths of 32, but the shipped model's 8 decoder layers and 12x12 grid), so it tests the command,
not the shipped model (tests/test_shipped.py checks that)."""
import argparse
import json

import pytest

from feather_mini import evaluate, pruning, synthetic, train
from feather_mini.__main__ import main
from feather_mini.processing import box_in_square
from conftest import train_keeping_threads


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A checkpoint folder from one training step of the 'test' preset."""
    out = tmp_path_factory.mktemp("weights")
    p = argparse.ArgumentParser()
    train.add_arguments(p)
    train_keeping_threads(p.parse_args(["--out", str(out), "--preset", "test", "--steps", "1", "--batch", "1",
                                        "--val", "0"]))
    return str(out)


def run_cli(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def write_jsonl(folder, records):
    path = folder / "data.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


@pytest.fixture()
def scene_png(tmp_path):
    """Test example 0 (a localization question) saved as a PNG: (path, expression, box)."""
    ex = synthetic.example("test", 0)
    path = tmp_path / "scene0.png"
    ex.scene.image().save(path)
    expression = ex.question.question[len("Where is the "):-1]
    return path, expression, list(ex.question.box)


def test_eval_json_has_every_row_and_key(weights, capsys):
    """`eval --limit 8 --json`: 15 rows (none, 6 criteria at 2 layers, pyramid_drop, feather) with exactly the six keys."""
    code, out, err = run_cli(["eval", "--weights", weights, "--limit", "8", "--json", "--max-new-tokens", "2"], capsys)
    assert code == 0, err
    rows = json.loads(out)
    assert [(r["method"], r["layer"]) for r in rows] == [
        ("none", []), ("fastv", [1]), ("fastv", [2]), ("fastv_norope", [1]), ("fastv_norope", [2]),
        ("knn", [1]), ("knn", [2]), ("uniform", [1]), ("uniform", [2]), ("ensemble", [1]), ("ensemble", [2]),
        ("random", [1]), ("random", [2]), ("pyramid_drop", [2, 4, 6]), ("feather", [2, 4])]
    for r in rows:
        assert tuple(r) == evaluate.KEYS
        for key in ("flops_reduction", "loc_acc", "other_acc"):
            assert 0 <= r[key] <= 1, (r, key)
        assert (r["bottom_share"] is None) == (r["method"] == "none")
    assert rows[0]["flops_reduction"] == 0
    assert [r["bottom_share"] for r in rows if r["method"] == "uniform"] == [0.5, 0.5]  # stride 2: rows 0, 2, .., 10
    assert "eval: row 15/15 feather (layers 2,4): 8/8" in err


def test_eval_table_and_fastv_row_histogram(weights, capsys):
    """The printed table has a header and one line per row; FastV's kept tokens are drawn row by row.

    FLOPs by FastV's formula 4nd^2 + 2n^2d + 2ndm with d = 32, m = 64: F(n) = 8192 n + 64 n^2.
    Test question 0 has 8 text tokens, so n = 152 unpruned and 8 + 36 = 44 after FastV. At layer 1:
    1 - (F(152) + 7 F(44)) / (8 F(152)) = 71.9%; at layer 2: 1 - (2 F(152) + 6 F(44)) / (8 F(152)) = 61.7%."""
    code, out, _ = run_cli(["eval", "--weights", weights, "--limit", "1", "--methods", "none,fastv",
                            "--max-new-tokens", "2"], capsys)
    assert code == 0
    assert ("| method | layer | FLOPs red. % | loc Acc@0.5 % (n=1) | other acc. % (n=0) | loc, target in top half % "
            "(n=0) | loc, target in bottom half % (n=1) | first stage kept in bottom half % |") in out
    assert "| none | - | 0.0 |" in out and "| fastv | 1 | 71.9 |" in out and "| fastv | 2 | 61.7 |" in out
    assert "fastv at layer 1: where the kept visual tokens lie, by grid row (row 0 = top)" in out
    assert out.count("\nrow ") == 12


def test_eval_splits_boxes_by_the_targets_half_with_standard_errors(capsys):
    """The shipped model on the first 8 test questions: boxes 0 and 6 have their target in the
    bottom half, 2 and 4 in the top half; 1, 3, 5, 7 are colour, count, existence.
    Unpruned all 8 are right (SE 0). FastV at layer 1 gets both bottom boxes and neither top box
    (loc 2/4 = 0.5, SE sqrt(0.5 * 0.5 / 4) = 0.25) and 3 of the 4 others (SE sqrt(0.75 * 0.25 / 4));
    at layer 2 one top box and no bottom box (top 1/2, SE sqrt(0.25 / 2))."""
    code, out, err = run_cli(["eval", "--limit", "8", "--methods", "none,fastv", "--json"], capsys)
    assert code == 0, err
    none, early, later = json.loads(out)
    split = lambda r: [r[k] for k in ("loc_acc", "loc_acc_top", "loc_acc_bottom", "other_acc")]  # noqa: E731
    errors = lambda r: [round(r[k], 4) for k in ("loc_se", "loc_top_se", "loc_bottom_se", "other_se")]  # noqa: E731
    assert split(none) == [1.0, 1.0, 1.0, 1.0] and errors(none) == [0.0, 0.0, 0.0, 0.0]
    assert split(early) == [0.5, 0.0, 1.0, 0.75] and errors(early) == [0.25, 0.0, 0.0, 0.2165]
    assert split(later) == [0.25, 0.5, 0.0, 0.5] and errors(later) == [0.2165, 0.3536, 0.0, 0.25]
    counts = lambda r: [r[k] for k in ("loc_n", "loc_top_n", "loc_bottom_n", "other_n")]  # noqa: E731
    assert counts(none) == counts(early) == counts(later) == [4, 2, 2, 4]
    assert evaluate.with_se(early, "other") == "75.0% ± 21.7 (3/4)"
    assert evaluate.with_se(later, "loc_top") == "50.0% ± 35.4 (1/2)"


def test_table_refuses_rows_evaluated_on_different_questions():
    """The header gives each column's n once, so rows over different questions cannot share a table."""
    row = dict.fromkeys(evaluate.KEYS, 0.5) | {"method": "fastv", "layer": [1], "loc_n": 4, "other_n": 4,
                                                "loc_top_n": 2, "loc_bottom_n": 2}
    assert "| loc Acc@0.5 % (n=4) | other acc. % (n=4) |" in evaluate.table([row, row])
    with pytest.raises(ValueError, match=r"different questions \(loc_n: \[4, 5\]\)"):
        evaluate.table([row, row | {"loc_n": 5}])


def test_table_rows_reads_a_table_back_by_row_name():
    """table_rows undoes table(): each line by "method layers", the header's two lines together, a first
    line kept when a second table repeats its name; text with no table is refused in one line."""
    row = dict.fromkeys(evaluate.KEYS, 0.5) | {"method": "fastv", "layer": [3], "loc_n": 4, "other_n": 4,
                                                "loc_top_n": 2, "loc_bottom_n": 2}
    none = row | {"method": "none", "layer": [], "flops_reduction": 0.0, "bottom_share": None}
    text = "$ eval ...\n" + evaluate.table([none, row]) + "\n\n" + evaluate.table([row | {"loc_acc": 0.25}])
    rows = evaluate.table_rows(text)
    assert sorted(rows) == ["fastv 3", "header", "none -"]
    assert rows["header"] == "\n".join(evaluate.table([row]).splitlines()[:2])
    assert rows["fastv 3"] == "| fastv | 3 | 50.0 | 50.0 ± 50.0 | 50.0 ± 50.0 | 50.0 ± 50.0 | 50.0 ± 50.0 | 50.0 |"
    assert rows["none -"].startswith("| none | - | 0.0 |")
    with pytest.raises(ValueError, match=r"^table_rows: no eval table in the text"):
        evaluate.table_rows("row  0 ###\n")


def test_half_of_a_target_and_accuracy_with_its_error():
    """The centre's half of the padded square (exactly on the middle line: neither); p and sqrt(p(1-p)/n)."""
    case = lambda box, size=(96, 96): evaluate.Case(None, "", "loc", box=box, size=size)  # noqa: E731
    assert evaluate.half(case((0, 0, 10, 40))) == "top"
    assert evaluate.half(case((0, 40, 10, 56))) is None  # centre 48 of 96
    assert evaluate.half(case((0, 50, 10, 60))) == "bottom"
    assert evaluate.half(case((0, 0, 10, 20), size=(96, 48))) == "top"  # padded by 24 above: centre 34 of 96
    assert evaluate.half(evaluate.Case(None, "", "colour", answer="red")) is None
    assert evaluate.accuracy([True, True, False]) == (2 / 3, (2 / 3 * 1 / 3 / 3) ** 0.5)
    assert round(evaluate.accuracy([True, True, False])[1], 4) == 0.2722
    assert evaluate.accuracy([]) == (None, None)


def test_unknown_method_and_bad_limit_exit_2(capsys):
    """A typo in --methods or a zero --limit is one line naming the option, exit code 2."""
    code, _, err = run_cli(["eval", "--methods", "none,fastvv"], capsys)
    assert code == 2
    assert "--methods: unknown method 'fastvv'" in err
    code, _, err = run_cli(["eval", "--limit", "0"], capsys)
    assert code == 2 and "argument --limit: must be at least 1, got 0" in err


def test_jsonl_loader_reads_a_tiny_file(scene_png, tmp_path):
    """Paths are relative to the file; the expression goes into the template; the box stays in pixels."""
    path, expression, box = scene_png
    data = write_jsonl(tmp_path, [{"image": path.name, "expression": expression, "box": box}, ""])
    (case,) = evaluate.jsonl_cases(data, "Where is the {expression}?")
    assert case.question == synthetic.example("test", 0).question.question
    assert case.box == tuple(box) and case.size == (96, 96) and case.task == "loc"


def test_eval_on_jsonl_runs_and_reports_no_other_accuracy(weights, scene_png, tmp_path, capsys):
    """`eval --data`: localization only, so other_acc is null."""
    path, expression, box = scene_png
    data = write_jsonl(tmp_path, [{"image": str(path), "expression": expression, "box": box}] * 2)
    code, out, err = run_cli(["eval", "--weights", weights, "--data", str(data), "--methods", "none,feather", "--json",
                            "--max-new-tokens", "2"], capsys)
    assert code == 0, err
    rows = json.loads(out)
    assert [r["method"] for r in rows] == ["none", "feather"]
    assert all(r["other_acc"] is None and r["loc_acc"] in (0.0, 0.5, 1.0) for r in rows)


@pytest.mark.parametrize("record, message", [
    ({"image": "scene0.png", "expression": "red circle"}, "line 2: missing field 'box'"),
    ({"image": "scene0.png", "expression": "red circle", "box": [10, 10, 120, 50]},
     "line 2: box [10, 10, 120, 50] is not inside the 96x96 image"),
    ({"image": "missing.png", "expression": "red circle", "box": [0, 0, 5, 5]},
     "line 2: image file not found"),
    ({"image": "notes.txt", "expression": "red circle", "box": [0, 0, 5, 5]}, "line 2: "),
    ("{not json", "line 2: not valid JSON"),
    ({"image": 5, "expression": "red circle", "box": [0, 0, 5, 5]},
     "line 2: image must be a non-empty path string, got 5"),
    ({"image": "", "expression": "red circle", "box": [0, 0, 5, 5]},
     "line 2: image must be a non-empty path string, got ''"),
    ({"image": "scene0.png", "expression": "the <image> circle", "box": [0, 0, 5, 5]},
     "line 2: expression must be a string without '<image>' (the processor places the image), got 'the <image> circle'"),
    # A long expression took 137 s and 20 GB before failing without a file or line; deep nesting, a RecursionError.
    ({"image": "scene0.png", "expression": "red " * 600, "box": [0, 0, 5, 5]},
     "line 2: expression is 2,400 characters; a referring expression is a phrase, at most 2,000"),
    ('{"image": "' + "x" * 100_000 + '"}', "line 2: 100,013 characters; a record is at most 100,000"),
    ("[" * 50_000, "line 2: not valid JSON (nested too deeply to read)"),
])
def test_bad_jsonl_lines_name_the_line(scene_png, tmp_path, record, message):
    """Missing field, box outside the image, missing or unreadable image, broken JSON: the error names line 2."""
    path, expression, box = scene_png
    (tmp_path / "notes.txt").write_text("not an image")
    data = write_jsonl(tmp_path, [{"image": path.name, "expression": expression, "box": box}, record])
    with pytest.raises(ValueError) as e:
        evaluate.jsonl_cases(data, "Where is the {expression}?")
    assert f"{data}, {message}" in str(e.value)
    if record == {"image": "notes.txt", "expression": "red circle", "box": [0, 0, 5, 5]}:
        assert "not a readable image" in str(e.value)


def test_bad_jsonl_through_the_cli_exits_2(tmp_path, capsys):
    """The same errors reach the user as one line and exit code 2, no traceback."""
    data = write_jsonl(tmp_path, [{"image": "x.png", "expression": "red circle"}])
    code, _, err = run_cli(["eval", "--data", str(data)], capsys)
    assert code == 2
    assert err.strip() == f"feather-mini eval: error: {data}, line 1: missing field 'box' (each line needs image, expression, box)"
    assert "Traceback" not in err


def test_empty_or_non_utf8_data_is_refused_before_the_model_loads(tmp_path, capsys):
    """`--data ""` is not the synthetic split in disguise; a Latin-1 file is named, with the byte."""
    code, _, err = run_cli(["eval", "--data", "", "--weights", str(tmp_path / "absent")], capsys)
    assert code == 2 and err.strip() == "feather-mini eval: error: --data is empty; leave it out for the synthetic test split"
    data = tmp_path / "latin1.jsonl"
    data.write_bytes('{"image": "caf\u00e9.png"}\n'.encode("latin-1"))
    code, _, err = run_cli(["eval", "--data", str(data), "--weights", str(tmp_path / "absent")], capsys)
    assert code == 2
    assert err.strip() == f"feather-mini eval: error: --data: {data} is not UTF-8 text (byte 14: invalid continuation byte)"


def test_boxes_map_into_the_padded_square():
    """LLaVA-1.5 boxes are relative to the image padded to a square: a 200x100 image is padded by 50 px above."""
    assert box_in_square((20, 10, 100, 90), (200, 100)) == pytest.approx((0.1, 0.3, 0.5, 0.7))
    assert box_in_square((24, 48, 72, 96), (96, 96)) == (0.25, 0.5, 0.75, 1.0)
    case = evaluate.Case("unused.png", "Where is it?", "loc", box=(20, 10, 100, 90), size=(200, 100))
    assert synthetic.answer_correct(case, "[0.10, 0.30, 0.50, 0.70]", case.size)
    assert not synthetic.answer_correct(case, "[0.10, 0.05, 0.50, 0.45]", case.size)


def test_bottom_share_counts_halves_only():
    """Rows 0..k-1 against the last k; an odd grid's middle row is in neither, so an even spread is 0.5."""
    assert evaluate.bottom_share([1, 1, 1]) == 0.5  # 3x3, one token per row
    assert evaluate.bottom_share([0, 5, 3]) == 1.0  # the middle row does not count
    assert evaluate.bottom_share([1, 2, 3, 6]) == 0.75
    assert evaluate.bottom_share([0, 4, 0]) is None


def test_random_control_draws_a_subset_per_question():
    """reseeded gives question i the seed i, so the control's subsets differ across questions; other schedules pass as they are."""
    schedule = pruning.random_subset(layer=3, num_layers=8)
    assert [s.seed for s in pruning.reseeded(schedule, 5).stages] == [5]
    assert pruning.phi_random(144, 36, seed=5).tolist() != pruning.phi_random(144, 36, seed=0).tolist()
    fastv = pruning.fastv(num_layers=8)
    assert pruning.reseeded(fastv, 5) is fastv and pruning.reseeded(None, 5) is None


@pytest.mark.parametrize("template", ["Where is {x}?", "Box of {expression} {", "no field"])
def test_template_needs_expression_and_no_other_braces(template, capsys):
    """A --template with another field or a stray brace is one line, exit 2 (not a KeyError traceback)."""
    code, _, err = run_cli(["eval", "--template", template], capsys)
    assert code == 2 and "--template must contain {expression} and no other braces" in err


def test_a_boolean_is_not_a_box_coordinate(scene_png, tmp_path):
    """JSON true is an int to Python; the loader refuses it by name."""
    data = tmp_path / "data.jsonl"
    path, expression, _ = scene_png
    data.write_text(json.dumps({"image": str(path), "expression": expression, "box": [True, 0, 10, 10]}) + "\n")
    with pytest.raises(ValueError, match="line 1: box must be 4 numbers"):
        evaluate.jsonl_cases(data, "Where is the {expression}?")
