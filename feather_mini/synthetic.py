"""Synthetic scenes and questions: the project's miniature RefCOCO + VQA suite.

A scene is a few coloured shapes (circle, square, triangle in red, green, blue, yellow) on
a plain background, each 3 to 4 patches wide, placed uniformly over the WHOLE image (the
top half as often as the bottom) without overlapping. Corners lie on a 4 px lattice (half
an 8 px patch), so a box in normalized coordinates takes one of 25 values per edge, each
printed with two decimals: the answer "[0.25, 0.08, 0.54, 0.38]" is LLaVA-1.5's RefCOCO
format, and the model's vocabulary holds one token per value.

Questions (all answers are short, as LLaVA-1.5's VQA prompts ask):
- loc:    "Where is the red circle?" -> "[x1, y1, x2, y2]", only for a colour+shape that is
          unique in the scene; scored by IoU >= 0.5 ("Acc@0.5", as for RefCOCO).
- colour: "What color is the circle?" -> "red", only when the scene has one circle.
- count:  "How many circles are there?" -> "0".."4".
- exist:  "Is there a red circle?" -> "yes" / "no", asked half the time about a pair that is absent.
- caption (training only): "Describe the image." -> every object in raster order with its box.

Everything is deterministic: scene i of a split comes from random.Random(f"{split}:{seed}:{i}"),
so the same seed gives the same scenes, questions and answers on every machine. Images are
PIL images, so everything downstream goes through the same processor as a real checkpoint.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass

from PIL import Image, ImageDraw

from .processing import box_in_square

IMAGE_SIZE = 96  # pixels; with 8 px patches a 12x12 grid of visual tokens
LATTICE = 4  # px: object corners and sizes are multiples of this (half a patch)
SIZES = (24, 28, 32)  # object sides in px: 3 to 4 patches
BACKGROUND = (40, 40, 40)
COLOURS = {"red": (220, 50, 50), "green": (60, 180, 75), "blue": (60, 110, 240), "yellow": (235, 205, 40)}
SHAPES = ("circle", "square", "triangle")
TASKS = ("loc", "colour", "count", "exist")  # the evaluated tasks; "caption" is for training only
MAX_OBJECTS = 4
NUMBERS = tuple(str(n) for n in range(MAX_OBJECTS + 1))
# Room for the longest answer with any shipped tokenizer, so that eval, the demo and training's
# validation never cut one: a box is 4 tokens for the word-level models, 24 for SmolLM2 (digit by digit).
ANSWER_TOKENS = 32
CAPTION_QUESTION = "Describe the image."

Box = tuple[int, int, int, int]  # x1, y1, x2, y2 in pixels, x2/y2 exclusive


@dataclass(frozen=True)
class Item:
    colour: str
    shape: str
    box: Box


@dataclass(frozen=True)
class Scene:
    items: tuple[Item, ...]
    size: int = IMAGE_SIZE

    def image(self) -> Image.Image:
        """The scene drawn with Pillow (no anti-aliasing, so pixels are identical everywhere)."""
        image = Image.new("RGB", (self.size, self.size), BACKGROUND)
        draw = ImageDraw.Draw(image)
        for item in self.items:
            x1, y1, x2, y2 = item.box
            fill = COLOURS[item.colour]
            if item.shape == "circle":
                draw.ellipse((x1, y1, x2 - 1, y2 - 1), fill=fill)
            elif item.shape == "square":
                draw.rectangle((x1, y1, x2 - 1, y2 - 1), fill=fill)
            else:  # triangle, apex up: its box is the square it is drawn in
                draw.polygon([((x1 + x2 - 1) / 2, y1), (x2 - 1, y2 - 1), (x1, y2 - 1)], fill=fill)
        return image

    def count(self, colour: str | None = None, shape: str | None = None) -> int:
        return sum((colour is None or i.colour == colour) and (shape is None or i.shape == shape) for i in self.items)


@dataclass(frozen=True)
class Question:
    task: str  # one of TASKS, or "caption"
    question: str
    answer: str
    box: Box | None = None  # loc only: the target box in pixels


@dataclass(frozen=True)
class Example:
    scene: Scene
    question: Question

# -----------------------------------------------------------------------------
# Boxes: the answer format and the metric


def format_box(box: Box, size: int = IMAGE_SIZE) -> str:
    """Pixels -> LLaVA-1.5's normalized "[x1, y1, x2, y2]" with two decimals."""
    return "[" + ", ".join(f"{v / size:.2f}" for v in box) + "]"


NUMBER = r"(-?\d*\.?\d+)"
BRACKETED = re.compile(r"\[\s*" + r"\s*,\s*".join([NUMBER] * 4) + r"\s*\]")


def parse_box(text: str) -> tuple[float, float, float, float] | None:
    """A normalized box from an answer: the first "[x1, y1, x2, y2]" group, else the first four
    numbers; None when there are fewer. ("I see 2 circles: [0.25, ...]" is read from the brackets.)"""
    match = BRACKETED.search(text)
    numbers = match.groups() if match else re.findall(NUMBER, text)[:4]
    return tuple(float(n) for n in numbers) if len(numbers) == 4 else None


def iou(a, b) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes; 0 for an empty or inverted box."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, w) * max(0.0, h)
    area = lambda r: max(0.0, r[2] - r[0]) * max(0.0, r[3] - r[1])  # noqa: E731
    union = area(a) + area(b) - inter
    return inter / union if union > 0 else 0.0


def box_correct(answer: str, target) -> bool:
    """Acc@0.5: IoU >= 0.5 between the predicted box and the target, both normalized, the target
    rounded to the answer format's two decimals: the reference answer then scores IoU 1, and the
    rounding cannot tip a box that sits exactly at 0.5 either way. (The 1e-9: two-decimal values
    are not exact in binary, so an IoU of exactly 0.5 can come out as 0.49999999999999994.)"""
    box = parse_box(answer)
    return box is not None and iou(box, [round(v, 2) for v in target]) >= 0.5 - 1e-9


def word_correct(answer: str, expected: str) -> bool:
    """A one-word answer: equal ignoring case, surrounding spaces and a final period."""
    return answer.strip().rstrip(".").lower() == expected.lower()


def answer_correct(question: Question, answer: str, size: int | tuple[int, int] = IMAGE_SIZE) -> bool:
    """The one scorer: Acc@0.5 for a box, else the answer word. `question`: anything with task,
    answer and box (a Question, an evaluate.Case); the box in pixels of a square image of side
    `size` or of a (width, height) image, read in the square the processor pads it to."""
    if question.task == "loc":
        return box_correct(answer, box_in_square(question.box, (size, size) if isinstance(size, int) else size))
    return word_correct(answer, question.answer)

# -----------------------------------------------------------------------------
# Scenes and questions


def make_scene(rng: random.Random, min_objects: int = 2, max_objects: int = MAX_OBJECTS,
               size: int = IMAGE_SIZE) -> Scene:
    """Objects of random colour, shape and size at uniform lattice positions, boxes at least
    one lattice step apart (so they never touch)."""
    n = rng.randint(min_objects, max_objects)
    while True:  # rejection sampling; a handful of tries at most for 4 objects in 96 px
        items = []
        for _ in range(n):
            side = rng.choice(SIZES)
            x1, y1 = (LATTICE * rng.randint(0, (size - side) // LATTICE) for _ in range(2))
            box = (x1, y1, x1 + side, y1 + side)
            if any(_near(box, other.box) for other in items):
                break
            items.append(Item(rng.choice(list(COLOURS)), rng.choice(SHAPES), box))
        if len(items) == n:
            return Scene(tuple(items), size)


def lookalike_scene(rng: random.Random, min_objects: int = 2, max_objects: int = MAX_OBJECTS,
                    size: int = IMAGE_SIZE) -> Scene:
    """A scene whose first two objects look alike: one shape in two colours or, as often, one
    colour in two shapes; the other objects are neither of the two. Localizing either object
    then needs both words of the question: 48 of the 62 wrong boxes of the first shipped model
    (200 'val' loc questions) were the box of another object of the same shape
    (scripts/wrong_boxes.py)."""
    scene = make_scene(rng, max(2, min_objects), max(2, max_objects), size)
    if rng.random() < 0.5:
        shape = rng.choice(SHAPES)
        pairs = [(colour, shape) for colour in rng.sample(list(COLOURS), 2)]
    else:
        colour = rng.choice(list(COLOURS))
        pairs = [(colour, shape) for shape in rng.sample(SHAPES, 2)]
    items = [Item(c, s, item.box) for (c, s), item in zip(pairs, scene.items)]
    for item in scene.items[2:]:
        pair = (item.colour, item.shape)
        while pair in pairs:
            pair = (rng.choice(list(COLOURS)), rng.choice(SHAPES))
        items.append(Item(*pair, item.box))
    return Scene(tuple(items), size)


def _near(a: Box, b: Box) -> bool:
    return not (a[2] + LATTICE <= b[0] or b[2] + LATTICE <= a[0] or a[3] + LATTICE <= b[1] or b[3] + LATTICE <= a[1])


def questions(scene: Scene, task: str) -> list[Question]:
    """Every question of one task that the scene can answer unambiguously (for exist: the
    present pairs and the absent ones, in that order)."""
    if task == "loc":
        return [Question("loc", f"Where is the {i.colour} {i.shape}?", format_box(i.box, scene.size), i.box)
                for i in scene.items if scene.count(i.colour, i.shape) == 1]
    if task == "colour":
        return [Question("colour", f"What color is the {i.shape}?", i.colour)
                for i in scene.items if scene.count(shape=i.shape) == 1]
    if task == "count":
        return [Question("count", f"How many {s}s are there?", str(scene.count(shape=s))) for s in SHAPES]
    if task == "exist":
        pairs = [(c, s) for c in COLOURS for s in SHAPES]
        return [Question("exist", f"Is there a {c} {s}?", "yes" if scene.count(c, s) else "no")
                for c, s in sorted(pairs, key=lambda p: scene.count(*p) == 0)]
    if task == "caption":
        items = sorted(scene.items, key=lambda i: (i.box[1], i.box[0]))  # raster order of top-left corners
        return [Question("caption", CAPTION_QUESTION,
                         " ".join(f"{i.colour} {i.shape} {format_box(i.box, scene.size)}" for i in items))]
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS + ('caption',)}")


def ask(scene: Scene, task: str, rng: random.Random) -> Question | None:
    """One random question of `task` about the scene (exist: yes or no with equal odds); None
    when the scene has none (e.g. no shape kind occurs exactly once, for colour)."""
    options = questions(scene, task)
    if task == "exist":
        present = [q for q in options if q.answer == "yes"]
        options = present if rng.random() < 0.5 else [q for q in options if q.answer == "no"]
    return rng.choice(options) if options else None


def example(split: str, index: int, seed: int = 0, task: str | None = None) -> Example:
    """Example `index` of a split: a scene and one question. Tasks alternate loc and the
    others (loc, colour, loc, count, loc, exist, ...) unless `task` is given; a scene that
    cannot answer its task is redrawn from the same generator."""
    rng = random.Random(f"{split}:{seed}:{index}")
    if task is None:
        task = "loc" if index % 2 == 0 else TASKS[1 + (index // 2) % 3]
    while True:
        scene = make_scene(rng)
        question = ask(scene, task, rng)
        if question is not None:
            return Example(scene, question)


TEST_SIZE = 400  # questions in the test split: 200 localization, 200 colour/count/exist


def test_split(n: int = TEST_SIZE, seed: int = 0) -> list[Example]:
    """The fixed evaluation set: half localization, half colour/count/exist."""
    return [example("test", i, seed) for i in range(n)]


def training_chat(rng: random.Random, turns: int, min_objects: int = 1, max_objects: int = MAX_OBJECTS,
                  caption: float = 0.5, lookalike: float = 0.0) -> tuple[Scene, list[Question]]:
    """A scene and up to `turns` different questions about it, in random order, for one
    multi-turn training chat; with probability `caption` a caption closes the chat (last, so
    no question can copy its boxes).

    With probability `lookalike` (when scenes may hold 2 objects) the scene is a lookalike_scene
    and the chat asks where both look-alikes are (one of them when turns is 1), its other
    questions drawn from colour, count and the existence of objects that are present. So these
    chats ask no existence question answered "no": a flaw, kept because the shipped model was
    trained so (see its README)."""
    # No draw when lookalike is 0: the chats of runs made before the option stay the same.
    if lookalike and max_objects >= 2 and rng.random() < lookalike:
        scene = lookalike_scene(rng, min_objects, max_objects)
        twins = [q for q in questions(scene, "loc") if q.box in (scene.items[0].box, scene.items[1].box)]
        others = [q for task in TASKS[1:] for q in questions(scene, task) if task != "exist" or q.answer == "yes"]
        asked = twins if turns >= 2 else [rng.choice(twins)]
        chat = asked + rng.sample(others, min(max(0, turns - 2), len(others)))
        rng.shuffle(chat)
        if rng.random() < caption:
            chat.append(questions(scene, "caption")[0])
        return scene, chat
    scene = make_scene(rng, min_objects, max_objects)
    pool = [q for task in TASKS for q in questions(scene, task)]
    # Balance exist: as many "no" as "yes", so that "yes" is not the safe guess.
    yes = [q for q in pool if q.task == "exist" and q.answer == "yes"]
    pool = [q for q in pool if q.task != "exist" or q.answer == "yes"] + \
        rng.sample([q for q in pool if q.answer == "no"], len(yes))
    chat = rng.sample(pool, min(turns, len(pool)))
    if rng.random() < caption:
        chat.append(questions(scene, "caption")[0])
    return scene, chat

# -----------------------------------------------------------------------------
# The vocabulary: every word the questions and answers use, one token per box value


def box_values(size: int = IMAGE_SIZE) -> list[str]:
    return [f"{v / size:.2f}" for v in range(0, size + 1, LATTICE)]


def vocabulary(size: int = IMAGE_SIZE) -> list[str]:
    """Whitespace-separated words. A box is four tokens: "[0.25," "0.08," "0.54," "0.38]", so it
    decodes back to "[0.25, 0.08, 0.54, 0.38]" exactly."""
    words = ["USER:", "ASSISTANT:", "Where", "is", "the", "What", "color", "How", "many", "are", "there?",
             "Is", "there", "a", "yes", "no", "Describe", "image."]
    words += list(COLOURS) + list(SHAPES) + [s + "?" for s in SHAPES] + [s + "s" for s in SHAPES]
    words += list(NUMBERS)
    values = box_values(size)
    words += ["[" + v + "," for v in values] + [v + "," for v in values] + [v + "]" for v in values]
    return words
