"""Where each method's kept visual tokens lie, over many images: the paper's Figure 3b.

    python -m feather_mini heatmap                            # 100 test examples, first stage
    python -m feather_mini heatmap --examples 400 --stage last --out heatmap_last.png

For every example of the synthetic test split (all question types) it runs one prefill per
method and counts, per grid position, how often the position was kept at the chosen stage;
the PNG has one panel per method, each on its own colour scale (white: never kept, dark blue:
that panel's most-kept position, its share given under the panel), so that a last stage that
keeps a few tokens still shows. On feather-tiny FastV's panel is dark at the bottom, as the
paper finds; on feather-576 at the top (the tutorial's chapters 3 and 4 measure why).
"""
from __future__ import annotations

import argparse

import torch

from . import cli, evaluate, pictures, pruning, synthetic
from .checkpoint import load_pretrained


def kept_frequency(model, processor, cases, schedule: pruning.Schedule, stage: int, progress=None,
                   batch_size: int = evaluate.BATCH_SIZE) -> torch.Tensor:
    """(rows, cols) float: the share of `cases` in which each grid position survives the
    schedule's stage number `stage` (0 = first, -1 = last). Prefills only, batch_size cases at a
    time (each pruned as alone, the random control with its own seed): nothing is generated."""
    rows, cols = processor.grid_shape
    counts = torch.zeros(rows * cols)
    layer = schedule.layers[stage]
    with torch.inference_mode():
        for start in range(0, len(cases), batch_size):
            chunk = cases[start:start + batch_size]
            inputs = processor([c.image for c in chunk], [c.question for c in chunk])
            out = model(inputs, schedule=[pruning.reseeded(schedule, start + i) for i in range(len(chunk))],
                        logits_to_keep=1)
            for kept in out.kept[layer]:
                counts[processor.grid_cells(kept[kept >= 0])] += 1
            if progress:
                progress(start + len(chunk))
    return (counts / len(cases)).view(rows, cols)


def add_arguments(p: argparse.ArgumentParser) -> None:
    cli.add_weights_option(p)
    p.add_argument("--methods", default=",".join(cli.HEADLINE),
                   help=f"comma-separated subset of {','.join(pruning.PRESETS)}")
    p.add_argument("--examples", type=cli.positive_int, default=100,
                   help=f"test-split examples to run, at most {synthetic.TEST_SIZE} (default 100)")
    p.add_argument("--stage", choices=("first", "last"), default="first",
                   help="which stage's kept tokens to count, for the multistage methods (default: first)")
    cli.add_device_options(p)
    p.add_argument("--out", default=None,
                   help="where to write the picture (default: heatmap.png in the cache, ~/.cache/feather_mini)")


def main(args) -> int:
    methods = cli.parse_methods(args.methods, tuple(pruning.PRESETS))
    if args.examples > synthetic.TEST_SIZE:
        raise ValueError(f"--examples must be between 1 and {synthetic.TEST_SIZE} (the test split), "
                         f"got {args.examples}")
    out_png = cli.output_path(args.out, "heatmap.png")
    cases = evaluate.synthetic_cases(args.examples)
    model, processor = load_pretrained(args.weights, args.device, args.dtype)
    depth = model.config.text_config.num_hidden_layers
    stage = 0 if args.stage == "first" else -1
    panels, lines = [], []
    for n, method in enumerate(methods, start=1):
        [(_, schedule)] = cli.schedules([method], depth)
        progress = cli.progress_line("heatmap:", n, len(methods), method, len(cases))
        frequency = kept_frequency(model, processor, cases, schedule, stage, progress)
        layer = schedule.layers[stage]
        per_row = frequency.sum(dim=1)
        bottom = evaluate.bottom_share(per_row.tolist())
        kept = frequency.sum().item()
        panels.append({"frequency": frequency.tolist(),
                       "caption": [f"{method}, layer {layer} of {depth}",
                                   f"kept on average: {kept:.1f} of {frequency.numel()}",
                                   f"of those in the bottom half: {100 * bottom:.1f}%"]})
        lines.append(f"{method:<13} layer {layer}: mean kept {kept:5.1f} of {frequency.numel()} grid positions; "
                     f"in the bottom half {100 * bottom:5.1f}%")
    title = (f"How often each visual token is kept ({args.stage} stage), over {len(cases)} test examples "
             f"(row 0 = top of the image)")
    print(f"{args.weights}, {len(cases)} examples of the synthetic test split, {args.stage} stage:")
    print("\n".join(lines))
    cli.save_picture(pictures.heatmap_figure(panels, title), out_png)
    print(f"wrote {out_png}")
    return 0
