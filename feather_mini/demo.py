"""The demo: one image, one question, and what each pruning method keeps and what it costs.

    python -m feather_mini                          # = demo: feather-576, a built-in scene
    python -m feather_mini demo --methods none,fastv,feather --json
    python -m feather_mini demo --image photo.jpg --prompt "Where is the dog?" \\
        --weights llava-1.5-7b-hf --device cuda

For each method (no pruning, FastV, FastV without RoPE, PyramidDrop, FEATHER; the presets
of pruning.py scaled to the model's depth) it generates an answer, scores it when the
question has a known answer (IoU with the target box, or the reference word), and reports
the visual tokens kept at each stage, FastV's FLOPs reduction, and the measured prefill
time with its ratio to no pruning. demo.png shows the image once per method with the kept
visual tokens.

The built-in example is chosen by a fixed rule, not by what the methods do on it: the first
localization question of the synthetic test split whose target lies in the top half of the
image (test example 4, "Where is the yellow circle?"), where RoPE's decay works against FastV.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

from . import cli, evaluate, pictures, synthetic
from .checkpoint import WEIGHTS_576, load_pretrained
from .processing import box_in_square, expand_to_square, load_image


# -----------------------------------------------------------------------------
# The built-in example and the reference answers it knows


def builtin_example() -> tuple[int, synthetic.Scene, synthetic.Question]:
    """(index, scene, question): the first localization question of the test split whose target
    box lies in the top half of the image."""
    for index in range(synthetic.TEST_SIZE):
        ex = synthetic.example("test", index)
        if ex.question.task == "loc" and ex.question.box[3] <= ex.scene.size // 2:
            return index, ex.scene, ex.question
    raise AssertionError("the test split has no localization question in the top half")  # it has (index 4)


def reference(scene: synthetic.Scene, prompt: str) -> synthetic.Question | None:
    """The question about `scene` whose text is `prompt` (any task), so that a prompt of one's own
    about the built-in scene is scored too; None when the scene's questions do not include it."""
    for task in synthetic.TASKS:
        for question in synthetic.questions(scene, task):
            if question.question == prompt:
                return question
    return None

# -----------------------------------------------------------------------------
# Running the methods


def time_prefills(model, inputs, schedules: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds of one prefill (vision tower included, last token's logits only, as generation
    does), `repeats` times per method. Each round runs every method once, so a slow moment of
    the machine hits all of them alike; one warm-up round first."""
    times = {method: [] for method in schedules}
    with torch.inference_mode():
        for round_ in range(repeats + 1):
            for method, schedule in schedules.items():
                start = cli.now(model.device)
                model(inputs, schedule=schedule, logits_to_keep=1)
                if round_:
                    times[method].append(cli.now(model.device) - start)
    return times


def run(model, processor, image, prompt: str, methods: list[str], question: synthetic.Question | None = None,
        max_new_tokens: int = synthetic.ANSWER_TOKENS, repeats: int = 5) -> list[dict]:
    """One row per method: its schedule, answer, score (when `question` holds the reference),
    kept indices per stage (original indices, raster order), FLOPs reduction, the median prefill
    time, and prefill_ratio: the median over rounds of its time / the unpruned prefill's in the
    same round (below 1 is faster; the unpruned prefill is timed even when 'none' is not among
    `methods`)."""
    image = load_image(image)
    # Each preset at its default layers, scaled to the model's depth (the schedule's note says how).
    schedules = dict(cli.schedules(list(dict.fromkeys(["none"] + methods)), model.config.text_config.num_hidden_layers))
    # Answered first, every method in one batch: generate refuses a prompt or an answer past the
    # context before anything is timed.
    batch = evaluate.answers(model, processor, [image] * len(methods), [prompt] * len(methods),
                             [schedules[m] for m in methods], [question] * len(methods), max_new_tokens)
    answers = dict(zip(methods, batch))
    seconds = time_prefills(model, processor(image, prompt), schedules, repeats)
    rows = []
    for method, a in answers.items():
        ratios = [t / base for t, base in zip(seconds[method], seconds["none"])]
        rows.append({"method": method, "schedule": str(schedules[method]) if schedules[method] else "no pruning",
                     "answer": a.text, "correct": a.correct, "iou": a.iou,
                     "kept": {layer: idx.tolist() for layer, idx in sorted(a.kept.items())},
                     "flops_reduction": a.flops_reduction, "prefill_ms": 1000 * statistics.median(seconds[method]),
                     "prefill_ratio": statistics.median(ratios)})
    return rows


# -----------------------------------------------------------------------------
# Output: the table, the JSON, the picture


def kept_counts(row: dict) -> str:
    return " ".join(f"L{layer}:{len(idx)}" for layer, idx in row["kept"].items()) or "-"


def score(row: dict) -> str:
    if row["correct"] is None:
        return "-"
    verdict = "right" if row["correct"] else "wrong"
    return f"IoU {row['iou']:.2f} {verdict}" if row["iou"] is not None else verdict


def table(rows: list[dict]) -> str:
    header = ["method", "answer", "score", "kept per stage", "FLOPs red.", "prefill ms", "time/none, 1 run"]
    cells = [[r["method"], r["answer"], score(r), kept_counts(r), f"{100 * r['flops_reduction']:.1f}%",
              f"{r['prefill_ms']:.1f}", f"{r['prefill_ratio']:.2f}"] for r in rows]
    widths = [max(len(line[i]) for line in [header] + cells) for i in range(len(header))]
    fmt = lambda line: "  ".join(c.ljust(w) if i < 4 else c.rjust(w)  # noqa: E731
                                 for i, (c, w) in enumerate(zip(line, widths))).rstrip()
    return "\n".join([fmt(header)] + [fmt(line) for line in cells])


def drawn_box(answer: str):
    """The box to draw: only a well-formed "[x1, y1, x2, y2]" in the answer (the score also reads
    looser answers, e.g. four loose numbers, which would draw as a box that was never given)."""
    match = synthetic.BRACKETED.search(answer)
    return tuple(float(v) for v in match.groups()) if match else None


def figure(square, grid_shape: tuple[int, int], first_patch: int, rows: list[dict], title: str, target_box=None):
    panels = []
    for r in rows:
        stages = len(r["kept"])
        panels.append({"caption": [r["method"], f"answer: {r['answer']}", score(r),
                                   f"kept {kept_counts(r)}" if stages else "kept all",
                                   f"FLOPs red. {100 * r['flops_reduction']:.1f}%, "
                                   f"time {r['prefill_ratio']:.2f} of none"],
                       "survived": pictures.stages_survived(r["kept"], grid_shape, first_patch) if stages else None,
                       "num_stages": stages, "predicted_box": drawn_box(r["answer"] or "")})
    return pictures.demo_figure(square, grid_shape, panels, title, target_box)

# -----------------------------------------------------------------------------
# Command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", help="an image file (default: the built-in scene)")
    p.add_argument("--prompt", help="the question (default: the built-in one; with --image: 'Describe the image.')")
    cli.add_weights_option(p, default=WEIGHTS_576)
    p.add_argument("--methods", default=",".join(cli.DEFAULT_METHODS),
                   help=f"comma-separated subset of {','.join(cli.METHODS)}")
    cli.add_device_options(p)
    p.add_argument("--out", default=None,
                   help="where to write the picture (default: demo.png in the cache, ~/.cache/feather_mini)")
    p.add_argument("--json", action="store_true", help="print the table as JSON on stdout, kept indices included")
    p.add_argument("--max-new-tokens", type=cli.positive_int, default=synthetic.ANSWER_TOKENS, help="answer length limit")
    p.add_argument("--repeats", type=cli.positive_int, default=5,
                   help="timed prefills per method (the median is reported)")


def main(args) -> int:
    methods = cli.parse_methods(args.methods)
    if args.prompt is not None and not args.prompt.strip():
        raise ValueError("--prompt is empty; leave it out for the default question")
    out_png = cli.output_path(args.out, "demo.png")
    if args.image is not None:  # an empty --image is an error of load_image's, not the built-in scene
        image = load_image(args.image)  # errors name the file, before the weights load
        prompt, question = args.prompt if args.prompt is not None else "Describe the image.", None
        source = args.image
    else:
        index, scene, builtin = builtin_example()
        image, prompt = scene.image(), args.prompt if args.prompt is not None else builtin.question
        question = reference(scene, prompt)
        source = f"built-in scene (synthetic test example {index})"
    model, processor = load_pretrained(args.weights, args.device, args.dtype)
    unknown = processor.unknown_words(prompt)
    if unknown:
        print(f"feather-mini demo: note: {', '.join(map(repr, unknown))} not in the model's vocabulary "
              "(read as <unk>)", file=sys.stderr)
    rows = run(model, processor, image, prompt, methods, question, args.max_new_tokens, args.repeats)

    background = tuple(int(m * 255) for m in processor.mean)
    square = expand_to_square(image, background)  # what the model sees, so the grid lies over it
    target = box_in_square(question.box, image.size) if question is not None and question.task == "loc" else None
    title = f"{prompt}  (reference: {question.answer})" if question is not None else prompt
    picture = figure(square, processor.grid_shape, processor.first_patch, rows, title, target)

    if args.json:
        print(json.dumps({"weights": str(args.weights), "device": str(model.device), "dtype": str(model.dtype),
                          "image": source, "prompt": prompt,
                          "reference": question.answer if question is not None else None,
                          "grid_shape": list(processor.grid_shape), "num_visual_tokens": processor.num_visual_tokens,
                          "png": str(out_png), "rows": rows}, indent=1))
        cli.save_picture(picture, out_png)
        print(f"wrote {out_png}", file=sys.stderr)
        return 0
    where = f"{args.weights} on {model.device} ({str(model.dtype).removeprefix('torch.')})"
    print(f"{where}; image: {source}")
    print(f"question: {prompt}" + (f"  reference: {question.answer}" if question is not None else ""))
    for r in rows:
        print(f"  {r['schedule']}")
    print(table(rows))
    print(f"prefill = one forward over the prompt, vision tower included, median of {args.repeats}; time/none = "
          "median of the per-round ratios, from this one run: it moves with the machine's load (`bench` measures "
          "speed-ups); FLOPs red. = FastV's count for the decoder")
    cli.save_picture(picture, out_png)
    print(f"wrote {out_png}")
    return 0

