"""Accuracy against FLOPs reduction: one-stage FastV (phi_original) and phi_-R at several layers
and keep ratios, through the same evaluate() as `python -m feather_mini eval`, for the curves
that Table 1's two points per method cannot show.

    python scripts/accuracy_flops.py feather-smol 200 ~/feather-runs/curves/rows.jsonl > results/accuracy_flops_smol.txt

Each finished row is appended to ROWS (JSON lines) as soon as it is measured, and rows already
there are not measured again: a long CPU run can stop and go on. LAYERS are written for 32 and
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


def schedules(num_layers: int) -> dict[str, Schedule]:
    """Named by the model's own layer, so that layers that scale to the same one (2 and 3 of 32 both
    become 1 of 8) are measured once."""
    rows = {}
    for keep in KEEP:
        for label, criterion in CRITERIA.items():
            for layer in (pruning.scale_layer(k, num_layers) for k in LAYERS):
                name = f"{label} {100 * keep:g}% from layer {layer}"
                rows[name] = Schedule([Stage(layer, criterion, keep)], name)
    return rows


if __name__ == "__main__":
    torch.set_num_threads(2)
    weights, limit, done_file = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    model, processor = load_pretrained(weights)
    cases = evaluate.synthetic_cases(limit)
    done = {}
    if done_file.is_file():
        rows = [json.loads(line) for line in done_file.read_text().splitlines() if line.strip()]
        done = {row["method"]: row for row in rows}
    for name, schedule in schedules(model.config.text_config.num_hidden_layers).items():
        if name not in done:
            done[name] = evaluate.evaluate(model, processor, cases, name, schedule)[0]
            with done_file.open("a") as f:
                f.write(json.dumps(done[name]) + "\n")
    print(evaluate.table(list(done.values())))
