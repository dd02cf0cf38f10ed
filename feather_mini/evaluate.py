"""The paper's Table 1 in miniature: what each pruning method does to localization and to
the other tasks, on the synthetic test split (or on a RefCOCO-style JSONL file).

Rows: no pruning; each criterion (FastV's phi_original, phi_-R, phi_KNN, phi_uniform, the
phi_-R + uniform ensemble, and a seeded random subset as a control) at an early and a later
layer (the presets' K = 3 and K = 8, written for 32 layers and scaled to the model's depth);
then PyramidDrop and FEATHER. Columns:
- flops_reduction: FastV's formula on the decoder's prefill with this model's sizes and the
  visual tokens actually kept (it counts the SwiGLU MLP as two matrices, as FastV does);
- loc_acc: Acc@0.5 (IoU >= 0.5) of the predicted boxes;
- other_acc: exact-match accuracy on the colour, count and existence questions;
- loc_acc_top, loc_acc_bottom: loc_acc over the questions whose target's centre lies in the top
  (bottom) half of the image (a centre exactly on the middle line counts in neither): the link
  between where a method keeps visual tokens and which boxes it loses;
- loc_se, other_se, loc_top_se, loc_bottom_se: the binomial standard error of each accuracy,
  sqrt(p (1 - p) / n), so that a difference can be read against the noise of n questions;
- loc_n, other_n, loc_top_n, loc_bottom_n: that n, the questions each accuracy is over;
- bottom_share: the share of the visual tokens kept at the FIRST stage that lie in the
  bottom half of the grid (0.5 for an even spread).

    python -m feather_mini eval                       # the shipped weights, the 400-question test split
    python -m feather_mini eval --limit 40 --methods none,fastv,feather --json
    python -m feather_mini eval --weights llava-1.5-7b-hf --device cuda --data refcoco_val.jsonl \\
        --template "Please provide the bounding box coordinate of the region this sentence describes: {expression}"
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from . import cli, pruning, synthetic
from .checkpoint import load_pretrained
from .processing import IMAGE_PLACEHOLDER, box_in_square, load_image

KEYS = ("method", "layer", "flops_reduction", "loc_acc", "other_acc", "bottom_share",
        "loc_acc_top", "loc_acc_bottom", "loc_se", "other_se", "loc_top_se", "loc_bottom_se",
        "loc_n", "other_n", "loc_top_n", "loc_bottom_n")
# Each accuracy's (value, standard error, count) keys, by the name with_se and table use
ACCURACIES = {"loc": ("loc_acc", "loc_se", "loc_n"), "other": ("other_acc", "other_se", "other_n"),
              "loc_top": ("loc_acc_top", "loc_top_se", "loc_top_n"),
              "loc_bottom": ("loc_acc_bottom", "loc_bottom_se", "loc_bottom_n")}

# -----------------------------------------------------------------------------
# What is evaluated: one question about one image, with its reference answer


@dataclass(frozen=True)
class Case:
    image: object  # a PIL image or a path
    question: str
    task: str  # "loc" or one of the other synthetic tasks
    answer: str | None = None  # the reference word (not loc)
    box: tuple | None = None  # loc: the target box in the image's pixels
    size: tuple[int, int] = (synthetic.IMAGE_SIZE, synthetic.IMAGE_SIZE)  # the image's (width, height)


def synthetic_cases(limit: int, seed: int = 0) -> list[Case]:
    """The first `limit` examples of the fixed test split."""
    cases = []
    for ex in synthetic.test_split(limit, seed):
        size = (ex.scene.size, ex.scene.size)
        cases.append(Case(ex.scene.image(), ex.question.question, ex.question.task, ex.question.answer,
                          ex.question.box, size))
    return cases


BATCH_SIZE = 16  # questions a batch: the fastest measured on a 2-core CPU (README, "Batches")
MAX_LINE, MAX_EXPRESSION = 100_000, 2_000  # characters: RefCOCO's longest expressions are a few hundred


def jsonl_cases(path: str | Path, template: str, limit: int | None = None) -> list[Case]:
    """A RefCOCO-style file: one JSON object a line with "image" (a path, relative to the file's
    folder unless absolute), "expression" and "box" ([x1, y1, x2, y2] in the image's pixels).
    Every problem is reported with the file and line number."""
    if str(path) == "":
        raise ValueError("--data is empty; leave it out for the synthetic test split")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--data: file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"--data: {path} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    cases = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        if len(line) > MAX_LINE:  # before parsing: a 100 MB line took minutes and 20 GB to fail further on
            raise ValueError(f"{where}: {len(line):,} characters; a record is at most {MAX_LINE:,}")
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON ({e})") from None
        except RecursionError:
            raise ValueError(f"{where}: not valid JSON (nested too deeply to read)") from None
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
        for key in ("image", "expression", "box"):
            if key not in record:
                raise ValueError(f"{where}: missing field {key!r} (each line needs image, expression, box)")
        if not isinstance(record["image"], str) or not record["image"].strip():
            raise ValueError(f"{where}: image must be a non-empty path string, got {record['image']!r}")
        if not isinstance(record["expression"], str) or IMAGE_PLACEHOLDER in record["expression"]:
            raise ValueError(f"{where}: expression must be a string without {IMAGE_PLACEHOLDER!r} "
                             f"(the processor places the image), got {record['expression']!r}")
        if len(record["expression"]) > MAX_EXPRESSION:
            raise ValueError(f"{where}: expression is {len(record['expression']):,} characters; a referring "
                             f"expression is a phrase, at most {MAX_EXPRESSION:,}")
        box = record["box"]
        if not (isinstance(box, list) and len(box) == 4
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
            raise ValueError(f"{where}: box must be 4 numbers [x1, y1, x2, y2] in pixels, got {box!r}")
        image_path = Path(record["image"])
        if not image_path.is_absolute():
            image_path = path.parent / image_path
        try:
            image = load_image(image_path)
        except (OSError, ValueError) as e:  # OSError: missing, a folder, unreadable
            raise ValueError(f"{where}: {e}") from None
        w, h = image.size
        x1, y1, x2, y2 = box
        if not (0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h):
            raise ValueError(f"{where}: box {box} is not inside the {w}x{h} image {image_path} "
                             "(need 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height)")
        cases.append(Case(image, template.format(expression=record["expression"]), "loc", None, tuple(box), (w, h)))
        if limit is not None and len(cases) == limit:
            break
    if not cases:
        raise ValueError(f"--data: {path} holds no examples")
    return cases


def half(case: Case) -> str | None:
    """"top" or "bottom": the half of the (square-padded) image holding the target box's centre;
    None for a centre exactly on the middle line, and for questions without a box."""
    if case.task != "loc":
        return None
    _, y1, _, y2 = box_in_square(case.box, case.size)
    centre = (y1 + y2) / 2
    return "top" if centre < 0.5 else "bottom" if centre > 0.5 else None


@dataclass
class Answer:
    """One question answered under one schedule: the answer, its score and what pruning kept and saved."""
    text: str
    correct: bool | None  # None without a reference to score against
    iou: float | None  # a box question: IoU of the answer's box with the target's (0.0 when no box could be read)
    kept: dict[int, torch.Tensor]  # per stage's layer, the ORIGINAL visual-token indices kept (see Generation)
    cells: dict[int, torch.Tensor]  # the same as grid cells (raster order; a CLS token, if any, is no cell)
    flops_reduction: float  # FastV's count for this model's decoder and this prompt


def answer(model, processor, image, question: str, schedule=None, reference=None,
           max_new_tokens: int = synthetic.ANSWER_TOKENS) -> Answer:
    """Ask one question about one image under `schedule` (None: no pruning), greedily, and score it
    against `reference` (anything with task, answer and box, as a Case or a synthetic.Question;
    its box in the pixels of `image`). The one per-question step of eval, demo and the tutorial."""
    return answers(model, processor, [image], [question], None if schedule is None else [schedule], [reference],
                   max_new_tokens)[0]


def answers(model, processor, images: list, questions: list[str], schedules: list | None = None,
            references: list | None = None, max_new_tokens: int = synthetic.ANSWER_TOKENS) -> list[Answer]:
    """`answer` for a batch, in one prefill and one generate: each question is pruned by its own
    schedule (None: none pruned) and answered as it would be alone."""
    images = [load_image(i) for i in images]
    inputs = processor(images, questions)
    out = model.generate(inputs, max_new_tokens, schedules)
    results = []
    for b, (image, text) in enumerate(zip(images, out.texts)):
        reference = references[b] if references else None
        correct = iou = None
        if reference is not None:
            correct = synthetic.answer_correct(reference, text, image.size)
            if reference.task == "loc":
                box = synthetic.parse_box(text)
                target = [round(v, 2) for v in box_in_square(reference.box, image.size)]
                iou = synthetic.iou(box, target) if box else 0.0
        own = schedules[b].layers if schedules and schedules[b] else []  # a batch may mix schedules (the demo's)
        rows = {layer: out.kept[layer][b] for layer in own}
        kept = {layer: row[row >= 0] for layer, row in rows.items()}  # a ragged stage's -1 padding dropped
        results.append(Answer(text, correct, iou, kept, {layer: processor.grid_cells(k) for layer, k in kept.items()},
                              pruning.flops_reduction_of(model.config, kept, inputs.num_visual_tokens,
                                                         inputs.lengths[b])))
    return results


def accuracy(hits: list[bool]) -> tuple[float | None, float | None]:
    """(the share of hits, its binomial standard error sqrt(p (1 - p) / n)); (None, None) for no questions."""
    if not hits:
        return None, None
    p = sum(hits) / len(hits)
    return p, (p * (1 - p) / len(hits)) ** 0.5

# -----------------------------------------------------------------------------
# One row of the table


def evaluate(model, processor, cases: list[Case], method: str, schedule, progress=None,
             max_new_tokens: int = synthetic.ANSWER_TOKENS, batch_size: int = BATCH_SIZE) -> tuple[dict, list[int]]:
    """One row: generate an answer for every case under `schedule` and score it, batch_size cases
    at a time (the same answers as one at a time). Also returns how many kept visual tokens (first
    stage) fell in each row of the grid, over all cases."""
    rows, cols = processor.grid_shape
    loc, other, reduction = [], [], 0.0
    by_half: dict[str, list[bool]] = {"top": [], "bottom": []}
    per_row = torch.zeros(rows, dtype=torch.long)
    for start in range(0, len(cases), batch_size):
        chunk = cases[start:start + batch_size]
        # The random control draws with each question's own seed, its index in the split, as one at a time.
        schedules = None if schedule is None else [pruning.reseeded(schedule, start + i) for i in range(len(chunk))]
        results = answers(model, processor, [c.image for c in chunk], [c.question for c in chunk], schedules, chunk,
                          max_new_tokens)
        for case, result in zip(chunk, results):
            (loc if case.task == "loc" else other).append(result.correct)
            target_half = half(case)
            if target_half is not None:
                by_half[target_half].append(result.correct)
            if result.cells:
                per_row += torch.bincount(result.cells[min(result.cells)] // cols, minlength=rows)  # the first stage
            reduction += result.flops_reduction
        if progress:
            progress(start + len(chunk))
    (loc_acc, loc_se), (other_acc, other_se) = accuracy(loc), accuracy(other)
    (top_acc, top_se), (bottom_acc, bottom_se) = accuracy(by_half["top"]), accuracy(by_half["bottom"])
    row = {"method": method, "layer": [s.layer for s in schedule.stages] if schedule is not None else [],
           "flops_reduction": reduction / len(cases), "loc_acc": loc_acc, "other_acc": other_acc,
           "bottom_share": bottom_share(per_row.tolist()), "loc_acc_top": top_acc, "loc_acc_bottom": bottom_acc,
           "loc_se": loc_se, "other_se": other_se, "loc_top_se": top_se, "loc_bottom_se": bottom_se,
           "loc_n": len(loc), "other_n": len(other), "loc_top_n": len(by_half["top"]),
           "loc_bottom_n": len(by_half["bottom"])}
    return row, per_row.tolist()


def bottom_share(per_row: list[int]) -> float | None:
    """Kept visual tokens in the bottom half of the grid / those in either half (an odd grid's
    middle row belongs to neither), so an even spread gives 0.5; None when nothing was kept."""
    half = len(per_row) // 2
    top, bottom = sum(per_row[:half]), sum(per_row[len(per_row) - half:])
    return bottom / (top + bottom) if top + bottom else None


def row_histogram(per_row: list[int], width: int = 40) -> str:
    """Text bars: the share of kept visual tokens in each grid row, top row first."""
    total = sum(per_row) or 1
    return "\n".join(f"row {r:2d} {'#' * round(width * n / total):<{width}} {100 * n / total:5.1f}%"
                     for r, n in enumerate(per_row))


def with_se(row: dict, name: str) -> str:
    """One accuracy of a row as text, "61.5% ± 3.4 (123/200)": the value, its standard error and the
    hits and count they come from, so that a reader can recompute both. name: a key of ACCURACIES."""
    value, se, n = (row[k] for k in ACCURACIES[name])
    return "-" if value is None else f"{100 * value:.1f}% ± {100 * se:.1f} ({round(value * n)}/{n})"


def table(rows: list[dict]) -> str:
    """The rows as a Markdown table; fractions as percentages, accuracies with their standard error.
    Each accuracy column's header gives its count n (the rows must share their questions)."""
    n = {}
    for name, (_, _, n_key) in ACCURACIES.items():
        counts = sorted({r[n_key] for r in rows})
        if len(counts) != 1:
            raise ValueError(f"table: the rows were evaluated on different questions ({n_key}: {counts})")
        n[name] = counts[0]
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731

    def acc(r: dict, name: str) -> str:
        value, se, _ = (r[k] for k in ACCURACIES[name])
        return "-" if value is None else f"{100 * value:.1f} ± {100 * se:.1f}"
    lines = [f"| method | layer | FLOPs red. % | loc Acc@0.5 % (n={n['loc']}) | other acc. % (n={n['other']}) "
             f"| loc, target in top half % (n={n['loc_top']}) | loc, target in bottom half % (n={n['loc_bottom']}) "
             "| first stage kept in bottom half % |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        layer = ",".join(map(str, r["layer"])) or "-"
        lines.append(f"| {r['method']} | {layer} | {pct(r['flops_reduction'])} | {acc(r, 'loc')} | "
                     f"{acc(r, 'other')} | {acc(r, 'loc_top')} | {acc(r, 'loc_bottom')} | {pct(r['bottom_share'])} |")
    return "\n".join(lines)


def table_rows(text: str) -> dict[str, str]:
    """The lines of the tables that table() wrote into `text` (eval's output, as kept in results/),
    each by its row's name: method and layer as "fastv 3" ("none -" unpruned, "feather 2,4"); under
    "header", the first table's two header lines, whose column names carry each count n. A name
    met twice (two tables of one model) keeps its first line."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    if len(lines) < 2 or not lines[0].startswith("| method | layer |"):
        raise ValueError("table_rows: no eval table in the text (it starts with '| method | layer |')")
    rows = {"header": "\n".join(lines[:2])}
    for line in lines[2:]:
        if not line.startswith(("| method |", "|---")):  # a later table's header
            rows.setdefault(" ".join(cell.strip() for cell in line.split("|")[1:3]), line)
    return rows

# -----------------------------------------------------------------------------
# Command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    cli.add_weights_option(p)
    p.add_argument("--limit", type=cli.positive_int, default=None,
                   help="questions to evaluate (default: all: the 400 of the test split, or every --data line)")
    p.add_argument("--methods", default=",".join(cli.METHODS),
                   help=f"comma-separated subset of {','.join(cli.METHODS)}")
    p.add_argument("--data", help="a RefCOCO-style JSONL file (image, expression, box in pixels) instead of the test split")
    p.add_argument("--template", default="Where is the {expression}?",
                   help="the question asked for each --data expression (default: the shipped model's)")
    p.add_argument("--max-new-tokens", type=cli.positive_int, default=synthetic.ANSWER_TOKENS,
                   help="answer length limit (the shipped model stops after 5; a 7B box takes about 25 tokens)")
    p.add_argument("--batch-size", type=cli.positive_int, default=BATCH_SIZE,
                   help=f"questions answered in one prefill and generate (default {BATCH_SIZE}); the same answers as "
                        "one at a time")
    cli.add_device_options(p)
    p.add_argument("--json", action="store_true", help="print the rows as JSON on stdout instead of the table")


def main(args) -> int:
    chosen = cli.parse_methods(args.methods)
    try:
        template_ok = "{expression}" in args.template and args.template.format(expression="") is not None
    except (KeyError, IndexError, ValueError):  # another {field}, or a stray brace
        template_ok = False
    if not template_ok:
        raise ValueError(f"--template must contain {{expression}} and no other braces, got {args.template!r}")
    cases = (jsonl_cases(args.data, args.template, args.limit) if args.data is not None else
             synthetic_cases(args.limit or synthetic.TEST_SIZE))
    model, processor = load_pretrained(args.weights, args.device, args.dtype)
    methods = [m for m in cli.METHODS if m in chosen]  # the table's order
    rows_to_run = cli.schedules(methods, model.config.text_config.num_hidden_layers, both_layers=True)
    rows, histograms = [], {}
    for n, (method, schedule) in enumerate(rows_to_run, start=1):
        label = f"{method} (layers {','.join(str(s.layer) for s in schedule.stages)})" if schedule else method
        progress = cli.progress_line("eval: row", n, len(rows_to_run), label, len(cases))
        row, per_row = evaluate(model, processor, cases, method, schedule, progress, args.max_new_tokens,
                                args.batch_size)
        rows.append(row)
        histograms[(method, tuple(row["layer"]))] = per_row
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        source = (f"{args.data}, {len(cases)} expressions" if args.data is not None
                  else f"synthetic test split, {len(cases)} questions")
        print(f"{args.weights} on {source}; layers are this model's ({model.config.text_config.num_hidden_layers}"
              f" decoder layers); pruning after layer 0 is 'layer 1'")
        print(table(rows))
        early_fastv = next(((layers, h) for (m, layers), h in histograms.items() if m == "fastv"), None)
        if early_fastv:  # the paper's Figure 3 in text: FastV's kept tokens, row by row
            layers, per_row = early_fastv
            print(f"\nfastv at layer {layers[0]}: where the kept visual tokens lie, by grid row (row 0 = top)")
            print(row_histogram(per_row))
    return 0
