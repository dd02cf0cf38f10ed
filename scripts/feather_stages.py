"""Why FEATHER does what it does in Table 1: hand-built schedules on the test split, through
the same evaluate() as `python -m feather_mini eval`.

    python scripts/feather_stages.py > results/feather_stages.txt     # feather-tiny, about 4 minutes on 2 cores
    python scripts/feather_stages.py weights/feather-576 > results/feather_stages_576.txt
    python scripts/feather_stages.py feather-smol 200 > results/feather_stages_smol.txt    # about 1.5 hours

The layers are the presets' scaled to the model's depth L (8 for the shipped models: FEATHER's
stages at 2 and 4, FastV's layer 1; 30 for feather-smol: 8, 15 and 3); "from layer K" = layers
K..L-1 see only the kept visual tokens. The last five rows keep 1, 5 or 20 visual tokens from a
layer on: how late does the model still read the image, and from how many tokens?
"""
import sys

import torch

from feather_mini import SHIPPED_WEIGHTS, evaluate, pruning
from feather_mini import load_pretrained
from feather_mini.pruning import Schedule, Stage


def schedules(num_layers: int, num_visual: int) -> dict[str, list[Stage]]:
    stage_1, stage_2 = pruning.feather(num_layers=num_layers).stages  # the preset, scaled
    fastv = pruning.scale_layer(3, num_layers)  # FastV's layer
    late = pruning.scale_layer(24, num_layers)  # three quarters deep, PyramidDrop's last stage
    last = num_layers - 1

    def tokens(n: int) -> float:
        """The fraction that leaves exactly n visual tokens (a stage keeps floor(fraction * num_visual))."""
        return (n + 0.5) / num_visual

    return {
        f"feather (both stages: layers {stage_1.layer} and {stage_2.layer})": [stage_1, stage_2],
        "feather, stage 1 only": [stage_1],
        f"feather, stage 2 moved to layer {late}":
            [stage_1, Stage(late, stage_2.criterion, stage_2.fraction, of_present=True)],
        # LLaVA-1.5's count at this stage, by the same budgets: about 20 tokens (9% of ~220 present)
        "feather, stage 2 keeping 20 tokens": [stage_1, Stage(stage_2.layer, stage_2.criterion, tokens(20))],
        f"fastv (phi_original) 50% from layer {fastv}": [Stage(fastv, "phi_original", 0.5)],
        f"phi_-R 50% from layer {fastv}": [Stage(fastv, "phi_no_rope", 0.5)],
        f"random 50% from layer {fastv}": [Stage(fastv, "phi_random", 0.5)],
        f"fastv (phi_original) 50% from layer {stage_1.layer}": [Stage(stage_1.layer, "phi_original", 0.5)],
        f"random 50% from layer {stage_1.layer}": [Stage(stage_1.layer, "phi_random", 0.5)],
        f"1 token (phi_-R) from layer {stage_2.layer}": [Stage(stage_2.layer, "phi_no_rope", tokens(1))],
        f"5 tokens (phi_-R) from layer {stage_2.layer}": [Stage(stage_2.layer, "phi_no_rope", tokens(5))],
        f"20 tokens (phi_-R) from layer {stage_2.layer}": [Stage(stage_2.layer, "phi_no_rope", tokens(20))],
        f"1 token (phi_-R) from layer {late}": [Stage(late, "phi_no_rope", tokens(1))],
        f"1 token (phi_-R) from layer {last}": [Stage(last, "phi_no_rope", tokens(1))],
    }


if __name__ == "__main__":
    torch.set_num_threads(2)
    weights = sys.argv[1] if len(sys.argv) > 1 else SHIPPED_WEIGHTS
    limit = int(sys.argv[2]) if len(sys.argv) > 2 else 400
    model, processor = load_pretrained(weights)
    rows = schedules(model.config.text_config.num_hidden_layers, processor.num_visual_tokens)
    cases = evaluate.synthetic_cases(limit)
    print(evaluate.table([evaluate.evaluate(model, processor, cases, name, Schedule(tuple(stages), name))[0]
                          for name, stages in rows.items()]))  # eval's table: each accuracy with its SE, each column's n
