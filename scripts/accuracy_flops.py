"""Accuracy against FLOPs reduction, through the same evaluate() as `python -m feather_mini eval`,
for the curves that Table 1's two points per method cannot show. Three sweeps:

- curves: one-stage FastV (phi_original) and phi_-R at six layers and three keep ratios;
- stage2: FEATHER's second stage moved over five layers, keeping 20, 50 or 100 visual tokens
  (the preset keeps 9% of the ~220 present, about 20), its first stage the preset's; and, at
  the preset's layer, 20 tokens chosen at random instead of by phi_-R;
- criteria: KNN, the grid, the ensemble and the random control, as eval's Table 1 runs them, at
  the same six layers as the curves.

    python scripts/accuracy_flops.py WEIGHTS QUESTIONS ROWS [curves|stage2|criteria] > TABLE
    python scripts/accuracy_flops.py feather-smol 200 results/accuracy_flops_smol.jsonl > results/accuracy_flops_smol.txt
    python scripts/accuracy_flops.py feather-smol 200 results/stage2_sweep_smol.jsonl stage2 \
        > results/stage2_sweep_smol.txt
    python scripts/accuracy_flops.py feather-smol 200 results/criteria_flops_smol.jsonl criteria \
        > results/criteria_flops_smol.txt

Each finished row is appended to ROWS (JSON lines) as soon as it is measured, and rows already
there are not measured again: a long CPU run can stop and go on. Layers are written for 32 and
scaled to the model's depth, as the presets are. At the end, eval's table of every row.
"""
import json
import sys
from pathlib import Path

import torch

from feather_mini import evaluate, load_pretrained, pruning
from feather_mini.pruning import Schedule, Stage

LAYERS = (2, 3, 5, 8, 12, 16)  # of 32: FastV's K = 3 and 8, and around them
KEEP = (0.25, 0.5, 0.125)  # the share of the visual tokens kept; FastV's 25% first, so a short run has it
CRITERIA = {"fastv": "phi_original", "phi_-R": "phi_no_rope"}
OTHER_CRITERIA = ("knn", "uniform", "ensemble", "random")  # the presets of Table 1's other rows
STAGE2_LAYERS = (12, 16, 20, 24, 28)  # of 32: the preset's 16 and around it, up to the last quarter
STAGE2_COUNTS = (20, 50, 100)


def curves(num_layers: int) -> dict[str, Schedule]:
    """Named by the model's own layer, so that layers that scale to the same one (2 and 3 of 32 both
    become 1 of 8) are measured once."""
    rows = {}
    for keep in KEEP:
        for label, criterion in CRITERIA.items():
            for layer in (pruning.scale_layer(k, num_layers) for k in LAYERS):
                name = f"{label} {100 * keep:g}% from layer {layer}"
                rows[name] = Schedule([Stage(layer, criterion, keep)], name)
    return rows


def stage2(num_layers: int) -> dict[str, Schedule]:
    """The last row is the control for the preset's place and count: does phi_-R choose its 20
    tokens better than chance?"""
    stage_1, stage_2 = pruning.feather(num_layers=num_layers).stages  # the preset, scaled
    rows = {}
    for count in STAGE2_COUNTS:
        for layer in (pruning.scale_layer(k, num_layers) for k in STAGE2_LAYERS):
            name = f"feather, stage 2 at layer {layer} keeping {count}"
            rows[name] = Schedule([stage_1, Stage(layer, stage_2.criterion, count=count)], name)
    name = f"feather, stage 2 at layer {stage_2.layer} keeping 20 at random"
    rows[name] = Schedule([stage_1, Stage(stage_2.layer, "phi_random", count=20)], name)
    return rows


def criteria(num_layers: int) -> dict[str, Schedule]:
    """The rest of Table 1's criteria, each as its preset (eval's rows: a quarter of the visual
    tokens; the ensemble a quarter by phi_-R plus the stride-3 grid) at the same six layers."""
    rows = {}
    for k in LAYERS:  # every criterion at a layer before the next layer: a short run compares them
        for label in OTHER_CRITERIA:
            schedule = pruning.PRESETS[label](layer=k, num_layers=num_layers)
            name = f"{label} from layer {schedule.stages[0].layer}"
            rows[name] = Schedule(schedule.stages, name)
    return rows


SWEEPS = {"curves": curves, "stage2": stage2, "criteria": criteria}

if __name__ == "__main__":
    torch.set_num_threads(2)
    sweep_name = sys.argv[4] if len(sys.argv) > 4 else "curves"
    if len(sys.argv) not in (4, 5) or not sys.argv[2].isdigit() or sweep_name not in SWEEPS:
        sys.exit(f"usage: accuracy_flops.py WEIGHTS QUESTIONS ROWS [{'|'.join(SWEEPS)}] (got {sys.argv[1:]})")
    weights, limit, done_file, sweep = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), SWEEPS[sweep_name]
    model, processor = load_pretrained(weights)
    cases = evaluate.synthetic_cases(limit)
    done = {}
    if done_file.is_file():
        rows = [json.loads(line) for line in done_file.read_text().splitlines() if line.strip()]
        done = {row["method"]: row for row in rows}
    for name, schedule in sweep(model.config.text_config.num_hidden_layers).items():
        if name not in done:
            done[name] = evaluate.evaluate(model, processor, cases, name, schedule)[0]
            with done_file.open("a") as f:
                f.write(json.dumps(done[name]) + "\n")
    print(evaluate.table(list(done.values())))
