"""From an image and a question to model inputs, LLaVA-1.5's way.

Image: any Pillow mode -> RGB as a viewer shows it (EXIF orientation applied; 16-bit and float
greys scaled, not clipped, to 8 bits), padded to a square with the mean colour (LLaVA-1.5's
"pad" aspect-ratio setting, which it was trained with), resized to the vision tower's
size, scaled to [0, 1] and normalized with preprocessor_config.json's mean/std (CLIP's
when the file is absent). This equals transformers' LlavaImageProcessor with do_pad=True;
llava-hf's own preprocessor_config.json does not pad (it resizes the short side and
centre-crops), so on non-square images AutoProcessor's pixels differ from these.
Text: the LLaVA-1.5 prompt "USER: <image>\\n{question} ASSISTANT:", tokenized by the
folder's tokenizer.json through `tokenizers` exactly as the file defines it, with the one
<image> placeholder expanded into the N positions the visual tokens will occupy.
(transformers 5 rebuilds Llama tokenizers instead of running tokenizer.json as written,
which can change the ids around <image>; feather_mini follows the file.)
"""
from __future__ import annotations

import json
import math
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from tokenizers import Tokenizer

IMAGE_PLACEHOLDER = "<image>"
PROMPT = "USER: " + IMAGE_PLACEHOLDER + "\n{question} ASSISTANT:"
# OpenAI CLIP's normalization, which LLaVA-1.5's preprocessor_config.json also lists.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class Inputs:
    """One prompt, or a batch of them, ready for the model, with what every pruning criterion needs.

    The visual tokens occupy input_ids[:, visual_start : visual_start + num_visual_tokens] and
    come in raster order over a grid of grid_shape = (rows, cols) patches: row 0 (the top of
    the image) first, left to right. (With vision_feature_select_strategy "full", CLIP's
    CLS token comes first, so num_visual_tokens = rows * cols + 1.)
    A batch is padded on the RIGHT: sample b's tokens are input_ids[b, :lengths[b]], at positions
    0..lengths[b]-1, exactly as alone; every prompt opens with the same "USER: <image>", so the
    visual span starts at the same index in each, and causal attention never lets a real token
    see the padding after it.
    """
    input_ids: torch.Tensor  # (B, T) int64; the visual span holds the image token id
    pixel_values: torch.Tensor  # (B, 3, S, S) float32, normalized
    visual_start: int
    num_visual_tokens: int
    grid_shape: tuple[int, int]
    tokenizer: Tokenizer | None = field(default=None, repr=False)  # lets generate() decode text
    lengths: list[int] | None = None  # a batch's prompt lengths (None: one prompt, or all of length T)


def read_json(path: Path):
    """A JSON file's value; errors name the file (json and UTF-8 decoding name none)."""
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    except (json.JSONDecodeError, RecursionError) as e:  # RecursionError: nesting too deep for the parser
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def json_object(value, what: str) -> dict:
    """value, which must be a JSON object (a dict): config files and their sections."""
    if not isinstance(value, dict):
        kinds = {list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number",
                 type(None): "null"}
        raise ValueError(f"{what} must be a JSON object, got {kinds.get(type(value), type(value).__name__)}")
    return value


def image_file(image: str | Path) -> Path:
    """The path, checked to be a regular file; each way it is not gets its own message."""
    if str(image) == "":  # Path("") would be ".", the current folder
        raise ValueError("empty image path")
    path = Path(image)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None
    except OSError as e:  # ELOOP (a symlink loop), ENOTDIR, ENAMETOOLONG
        raise ValueError(f"{path}: cannot be resolved ({e.strerror})") from None
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(f"{path} is a folder, not an image file")
    if not stat.S_ISREG(mode):  # opening a FIFO would wait for a writer forever
        raise ValueError(f"{path} is not a regular file (a FIFO, socket or device), not an image file")
    return path


def load_image(image: str | Path | Image.Image) -> Image.Image:
    """A file path or a PIL image -> an RGB PIL image (see `to_rgb`). Errors name the path."""
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if not isinstance(image, (str, Path)):
        raise TypeError(f"image must be a file path or a PIL.Image, not {type(image).__name__}")
    path = image_file(image)
    try:
        # Pillow refuses images over 2 * MAX_IMAGE_PIXELS in open() and only warns between 1x
        # and 2x; both are refused here, before any pixel is decoded.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                opened.load()
                return to_rgb(opened)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ValueError(f"{path}: too many pixels to decode safely ({e})") from None
    except PermissionError:
        raise PermissionError(f"{path}: permission denied (cannot read the image file)") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"{path}: not a readable image ({e})") from None
    except ValueError as e:  # from to_rgb: a zero side, NaN pixels
        raise ValueError(f"{path}: {e}") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB, upright and as a viewer shows it.

    EXIF orientation is applied (as transformers' load_image does); transparency (an alpha band,
    a palette's or a PNG's tRNS) is composited onto white. Pillow's convert("RGB")
    clips 16-bit and float greys to 255, so those are scaled first: integer modes (I;16*, and I,
    where older Pillows put 16-bit PNGs) map 0..65535 to 0..255, float mode F maps [0, 1] to
    0..255; values outside are clipped, and NaN or inf pixels are refused (no colour to show).
    """
    w, h = image.size
    if w == 0 or h == 0:
        raise ValueError(f"image is {w}x{h} pixels; each side needs at least 1")
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        grey = image.convert("F")  # exact for every 16-bit value
        if not torch.isfinite(torch.frombuffer(bytearray(grey.tobytes()), dtype=torch.float32)).all():
            raise ValueError(f"mode {image.mode} image has non-finite pixels (NaN or inf)")
        white = 1.0 if image.mode == "F" else 65535.0
        image = grey.point(lambda v: v * (255 / white) + 0.5).convert("L")  # F -> L clips and truncates: +0.5 rounds
    if "transparency" in image.info or any(band in ("A", "a") for band in image.getbands()):
        # What shows through a transparent pixel is the page behind it: white, as transformers' convert_rgb
        # composites (dropping alpha would show the hidden colour, often black).
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image.convert("RGB")


def expand_to_square(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Pad the shorter side equally on both ends (LLaVA-1.5's expand2square)."""
    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    square = Image.new("RGB", (side, side), background)
    square.paste(image, ((side - w) // 2, (side - h) // 2))
    return square


def box_in_square(box, size: tuple[int, int]) -> tuple[float, ...]:
    """A box in pixels of a (width, height) image -> normalized to the image padded to a square
    (expand_to_square), the frame LLaVA-1.5 answers boxes in."""
    w, h = size
    side = max(w, h)
    dx, dy = (side - w) // 2, (side - h) // 2
    x1, y1, x2, y2 = box
    return (x1 + dx) / side, (y1 + dy) / side, (x2 + dx) / side, (y2 + dy) / side


def grid_cells(kept: torch.Tensor, first_patch: int) -> torch.Tensor:
    """Original visual-token indices -> their grid cells (raster order); a CLS token (first_patch 1) is no cell."""
    return kept[kept >= first_patch] - first_patch


class Processor:
    """Turns (image, question) into `Inputs` for one model: its image size, patch grid,
    number of visual tokens and image token id."""

    def __init__(self, tokenizer: Tokenizer, image_size: int, patch_size: int, image_token_index: int,
                 num_visual_tokens: int, mean=CLIP_MEAN, std=CLIP_STD):
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.grid_shape = (image_size // patch_size, image_size // patch_size)
        self.image_token_index = image_token_index
        self.num_visual_tokens = num_visual_tokens
        for name, values in [("image_mean", mean), ("image_std", std)]:
            if not (isinstance(values, (list, tuple)) and len(values) == 3 and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)):
                raise ValueError(f"{name} must be 3 numbers (R, G, B), got {values!r}")
        if min(std) <= 0:
            raise ValueError(f"image_std must be positive, got {std!r}")
        self.mean, self.std = tuple(mean), tuple(std)
        # The grid's first token among the visual tokens: 1 when CLIP's CLS token comes first
        # (vision_feature_select_strategy "full"), else 0. Kept indices minus this are grid cells.
        self.first_patch = num_visual_tokens - self.grid_shape[0] * self.grid_shape[1]
        found = tokenizer.token_to_id(IMAGE_PLACEHOLDER)
        if found != image_token_index:
            raise ValueError(f"tokenizer has {IMAGE_PLACEHOLDER!r} as id {found}, but the model's "
                             f"image_token_index is {image_token_index}")

    @classmethod
    def from_pretrained(cls, path: str | Path, config) -> Processor:
        """Read tokenizer.json (and preprocessor_config.json when present) from a checkpoint folder."""
        folder = Path(path)
        tok_file = folder / "tokenizer.json"
        if not tok_file.is_file():
            raise FileNotFoundError(f"{folder}: no tokenizer.json")
        try:
            tokenizer = Tokenizer.from_file(str(tok_file))
        except Exception as e:  # tokenizers raises a bare Exception for malformed files
            raise ValueError(f"{tok_file}: not a readable tokenizers file ({e})") from None
        mean, std = CLIP_MEAN, CLIP_STD
        pre_file = folder / "preprocessor_config.json"
        if pre_file.is_file():
            pre = json_object(read_json(pre_file), str(pre_file))
            mean, std = pre.get("image_mean", mean), pre.get("image_std", std)
        vc = config.vision_config
        try:
            return cls(tokenizer, vc.image_size, vc.patch_size, config.image_token_index,
                       config.num_visual_tokens, mean, std)
        except ValueError as e:
            raise ValueError(f"{folder}: {e}") from None

    def pixel_values(self, image: str | Path | Image.Image) -> torch.Tensor:
        """(3, S, S) float32: padded to square with the mean colour, resized, normalized."""
        image = load_image(image)
        background = tuple(int(m * 255) for m in self.mean)
        image = expand_to_square(image, background)
        S = self.image_size
        image = image.resize((S, S), Image.Resampling.BICUBIC)
        x = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(S, S, 3)
        x = x.permute(2, 0, 1).float() / 255.0
        mean, std = torch.tensor(self.mean).view(3, 1, 1), torch.tensor(self.std).view(3, 1, 1)
        return (x - mean) / std

    def input_ids(self, question: str) -> tuple[torch.Tensor, int]:
        """The LLaVA-1.5 prompt's ids with the visual span expanded, and where that span starts."""
        if not isinstance(question, str):
            raise TypeError(f"the question must be a string, not {type(question).__name__}")
        if IMAGE_PLACEHOLDER in question:
            raise ValueError(f"the question contains the image placeholder {IMAGE_PLACEHOLDER!r}; "
                             "the processor places the image itself, once, before the question")
        typed = [t for t in self.control_tokens() if t in question]
        if typed:  # "</s>" in mid-prompt would end the turn for the model
            raise ValueError(f"the question contains the control token {typed[0]!r}, which the tokenizer "
                             "would not read as text")
        ids = self.tokenizer.encode(PROMPT.format(question=question)).ids
        starts = [i for i, t in enumerate(ids) if t == self.image_token_index]
        if len(starts) != 1:
            raise ValueError(f"the prompt encodes to {len(starts)} image tokens (id {self.image_token_index}); "
                             "expected exactly 1")
        start = starts[0]
        ids = ids[:start] + [self.image_token_index] * self.num_visual_tokens + ids[start + 1:]
        return torch.tensor([ids], dtype=torch.long), start

    def grid_cells(self, kept: torch.Tensor) -> torch.Tensor:
        return grid_cells(kept, self.first_patch)

    def control_tokens(self) -> list[str]:
        """The tokenizer's special tokens (<s>, </s>, <unk>, ...), the image placeholder aside."""
        added = self.tokenizer.get_added_tokens_decoder().values()
        return [t.content for t in added if t.special and t.content != IMAGE_PLACEHOLDER]

    def unknown_words(self, question: str) -> list[str]:
        """The pieces of `question` the tokenizer can only read as its unknown token (a word-level
        vocabulary's missing words), in order: the command line names them rather than answer a
        question the model never saw."""
        unk = self.tokenizer.token_to_id("<unk>")
        encoding = self.tokenizer.encode(question, add_special_tokens=False)
        return [question[a:b] for i, (a, b) in zip(encoding.ids, encoding.offsets) if i == unk]

    def __call__(self, image, question) -> Inputs:
        """(image, question) -> one prompt's Inputs; ([images], [questions]) -> a batch's."""
        if not isinstance(question, (list, tuple)):
            input_ids, start = self.input_ids(question)
            return Inputs(input_ids, self.pixel_values(image)[None], start, self.num_visual_tokens,
                          self.grid_shape, self.tokenizer)
        if not isinstance(image, (list, tuple)) or len(image) != len(question) or not question:
            raise ValueError(f"a batch takes a list of images and a list of questions of one length; got "
                             f"{len(image) if isinstance(image, (list, tuple)) else 'one image'} and {len(question)}")
        encoded = [self.input_ids(q) for q in question]  # (ids (1, T_b), visual start): the start is one for all
        lengths = [ids.shape[1] for ids, _ in encoded]
        input_ids = torch.zeros(len(encoded), max(lengths), dtype=torch.long)  # id 0 after each prompt: never attended
        for b, (ids, _) in enumerate(encoded):
            input_ids[b, :lengths[b]] = ids[0]
        pixel_values = torch.stack([self.pixel_values(i) for i in image])
        return Inputs(input_ids, pixel_values, encoded[0][1], self.num_visual_tokens, self.grid_shape,
                      self.tokenizer, lengths)
