"""Why FEATHER does what it does in Table 1: hand-built schedules on the 400-question test
split, through the same evaluate() as `python -m feather_mini eval`.

    python scripts/feather_stages.py > results/feather_stages.txt     # feather-tiny, about 4 minutes on 2 cores
    python scripts/feather_stages.py weights/feather-576 > results/feather_stages_576.txt

Layers are those of an 8-layer decoder (both shipped models); "from layer L" = layers L..7 see
only the kept visual tokens. The last five rows keep 1, 5 or 20 visual tokens from layer L on:
how late does the model still read the image, and from how many tokens?
"""
import sys

import torch

from feather_mini import SHIPPED_WEIGHTS, evaluate, pruning
from feather_mini import load_pretrained
from feather_mini.pruning import Schedule, Stage

LAYERS = 8
STAGE_1, STAGE_2 = pruning.feather(num_layers=LAYERS).stages  # layers 2 and 4: the preset, scaled


def schedules(num_visual: int) -> dict[str, list[Stage]]:
    def tokens(n: int) -> float:
        """The fraction that leaves exactly n visual tokens (a stage keeps floor(fraction * num_visual))."""
        return (n + 0.5) / num_visual

    return {
        "feather (both stages: layers 2 and 4)": [STAGE_1, STAGE_2],
        "feather, stage 1 only": [STAGE_1],
        "feather, stage 2 moved to layer 6": [STAGE_1, Stage(6, STAGE_2.criterion, STAGE_2.fraction, of_present=True)],
        # LLaVA-1.5's count at this stage, by the same budgets: about 20 tokens (9% of ~220 present)
        "feather, stage 2 keeping 20 tokens": [STAGE_1, Stage(4, STAGE_2.criterion, tokens(20))],
        "fastv (phi_original) 50% from layer 1": [Stage(1, "phi_original", 0.5)],
        "phi_-R 50% from layer 1": [Stage(1, "phi_no_rope", 0.5)],
        "random 50% from layer 1": [Stage(1, "phi_random", 0.5)],
        "fastv (phi_original) 50% from layer 2": [Stage(2, "phi_original", 0.5)],
        "random 50% from layer 2": [Stage(2, "phi_random", 0.5)],
        "1 token (phi_-R) from layer 4": [Stage(4, "phi_no_rope", tokens(1))],
        "5 tokens (phi_-R) from layer 4": [Stage(4, "phi_no_rope", tokens(5))],
        "20 tokens (phi_-R) from layer 4": [Stage(4, "phi_no_rope", tokens(20))],
        "1 token (phi_-R) from layer 6": [Stage(6, "phi_no_rope", tokens(1))],
        "1 token (phi_-R) from layer 7": [Stage(7, "phi_no_rope", tokens(1))],
    }


if __name__ == "__main__":
    torch.set_num_threads(2)
    weights = sys.argv[1] if len(sys.argv) > 1 else SHIPPED_WEIGHTS
    model, processor = load_pretrained(weights)
    if model.config.text_config.num_hidden_layers != LAYERS:
        sys.exit(f"feather_stages: {weights} has {model.config.text_config.num_hidden_layers} decoder layers; "
                 f"these schedules are written for {LAYERS}")
    cases = evaluate.synthetic_cases(400)
    rows = [evaluate.evaluate(model, processor, cases, name, Schedule(tuple(stages), name))[0]
            for name, stages in schedules(processor.num_visual_tokens).items()]
    print(evaluate.table(rows))  # eval's table: each accuracy with its standard error, each column's n
