"""What the wrong boxes are: for 200 'val' localization questions (synthetic.example("val", i,
task="loc"), i < 200; never the test split), each wrong answer is classified as the box of
another object of the scene (Acc@0.5 against that object, the project's box_correct) or a
box of nothing, and the other object by what it shares with the target.

    python scripts/wrong_boxes.py weights/feather-tiny [more folders]

results/wrong_boxes.txt holds its output for the first shipped model (its weights in git
history) and the present one, made with (about 20 s):

    mkdir -p /tmp/feather-tiny-dc71e4a && for f in config.json tokenizer.json preprocessor_config.json \
        model.safetensors; do git show dc71e4a:weights/feather-tiny/$f > /tmp/feather-tiny-dc71e4a/$f; done
    python scripts/wrong_boxes.py /tmp/feather-tiny-dc71e4a weights/feather-tiny > results/wrong_boxes.txt

The first shipped model (commit dc71e4a's weights/feather-tiny) mostly answered with the box
of another object of the same shape: it found "the circle" but not "the red circle"; this
is what the look-alike scenes of `train --lookalike` were made for.
"""
import sys
from collections import Counter

import torch

from feather_mini import synthetic
from feather_mini import load_pretrained
from feather_mini.processing import box_in_square

QUESTIONS = 200


def wrong_boxes(folder: str) -> Counter:
    model, processor = load_pretrained(folder)
    counts = Counter()
    for i in range(QUESTIONS):
        ex = synthetic.example("val", i, task="loc")
        scene, question = ex.scene, ex.question
        answer = model.generate(processor(scene.image(), question.question), max_new_tokens=8).text
        if synthetic.answer_correct(question, answer, scene.size):
            counts["right"] += 1
            continue
        target = next(item for item in scene.items if item.box == question.box)
        hit = [item for item in scene.items
               if item is not target and synthetic.box_correct(answer, box_in_square(item.box, (scene.size,) * 2))]
        if not hit:
            counts["wrong: a box of no object"] += 1
            continue
        other = hit[0]
        shares = {(True, False): "same colour", (False, True): "same shape", (False, False): "neither"}
        shared = shares[other.colour == target.colour, other.shape == target.shape]
        counts[f"wrong: another object's box, {shared}"] += 1
        where = "lower" if other.box[1] > target.box[1] else "not lower"
        counts[f"wrong: another object's box, {where} in the image"] += 1
    return counts


if __name__ == "__main__":
    torch.set_num_threads(2)
    for folder in sys.argv[1:]:
        counts = wrong_boxes(folder)
        print(f"{folder}: {QUESTIONS} 'val' localization questions")
        for key, n in sorted(counts.items()):
            print(f"  {key}: {n}")
