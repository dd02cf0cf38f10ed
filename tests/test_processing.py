# python -m pytest tests/test_processing.py -q
"""Image preprocessing and prompt building, on a 32 px / 8 px-patch processor (4x4 = 16 visual tokens)."""
import json
import re

import pytest
import torch
from PIL import Image

import feather_mini as fm
from feather_mini.processing import CLIP_MEAN, CLIP_STD, Processor
from conftest import IMAGE_ID, make_tokenizer


@pytest.fixture(scope="module")
def processor():
    return Processor(make_tokenizer(), image_size=32, patch_size=8, image_token_index=IMAGE_ID, num_visual_tokens=16)


@pytest.mark.parametrize("mode,size", [("RGBA", (40, 30)), ("L", (30, 40)), ("P", (17, 5)), ("CMYK", (32, 32)),
                                       ("RGB", (1, 1)), ("RGB", (4000, 3000))])
def test_any_mode_and_size_gives_one_square_tensor(processor, mode, size):
    """Every Pillow mode and any size, 1x1 to 4000x3000, becomes (1, 3, 32, 32)."""
    inputs = processor(Image.new(mode, size), "What is in the picture?")
    assert inputs.pixel_values.shape == (1, 3, 32, 32)
    assert inputs.pixel_values.dtype == torch.float32


@pytest.mark.filterwarnings("error")
def test_palette_with_transparency(processor):
    """A palette image with per-entry transparency converts through RGBA, without Pillow's warning: its
    fully transparent red shows as the white behind it."""
    image = Image.new("P", (8, 8), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.info["transparency"] = bytes([255, 0] + [255] * 254)  # entry 1 (red) fully transparent
    x = processor.pixel_values(image)
    for channel in range(3):
        assert torch.allclose(x[channel], torch.full((32, 32), (1 - CLIP_MEAN[channel]) / CLIP_STD[channel]), atol=1e-6)


def test_normalization_of_a_red_image(processor):
    """Pure red (255, 0, 0) becomes ((1 - mean_r) / std_r, -mean_g / std_g, -mean_b / std_b) everywhere."""
    x = processor.pixel_values(Image.new("RGB", (32, 32), (255, 0, 0)))
    expected = [(1 - CLIP_MEAN[0]) / CLIP_STD[0], -CLIP_MEAN[1] / CLIP_STD[1], -CLIP_MEAN[2] / CLIP_STD[2]]
    assert [round(v, 4) for v in expected] == [1.9303, -1.7521, -1.4802]
    for c in range(3):
        assert torch.allclose(x[c], torch.full((32, 32), expected[c]), atol=1e-6)


def test_padding_to_square_with_the_mean_colour(processor):
    """A white 32x16 image is padded with 8 rows of the mean colour (122, 116, 104) above and below."""
    x = processor.pixel_values(Image.new("RGB", (32, 16), (255, 255, 255)))
    background = [int(m * 255) for m in CLIP_MEAN]
    assert background == [122, 116, 104]
    for c in range(3):
        pad = (background[c] / 255 - CLIP_MEAN[c]) / CLIP_STD[c]
        white = (1 - CLIP_MEAN[c]) / CLIP_STD[c]
        for row in (0, 7, 24, 31):
            assert torch.allclose(x[c, row], torch.full((32,), pad), atol=1e-6), (c, row)
        for row in (8, 15, 23):
            assert torch.allclose(x[c, row], torch.full((32,), white), atol=1e-6), (c, row)


def test_prompt_and_visual_span(processor):
    """<s> USER: <image>x16 What is in the picture? ASSISTANT: -- the span starts at 2 and is 16 long."""
    inputs = processor(Image.new("RGB", (8, 8)), "What is in the picture?")
    assert inputs.input_ids.tolist() == [[1, 3] + [IMAGE_ID] * 16 + [5, 6, 7, 8, 9, 4]]
    assert (inputs.visual_start, inputs.num_visual_tokens, inputs.grid_shape) == (2, 16, (4, 4))


def test_empty_question(processor):
    """An empty question still gives the prompt around the visual span."""
    inputs = processor(Image.new("RGB", (8, 8)), "")
    assert inputs.input_ids.tolist() == [[1, 3] + [IMAGE_ID] * 16 + [4]]


def test_question_containing_the_placeholder(processor):
    """The processor places <image> itself; a second one in the question is an error."""
    with pytest.raises(ValueError, match=re.escape("the question contains the image placeholder '<image>'; "
                                                   "the processor places the image itself, once, before the question")):
        processor(Image.new("RGB", (8, 8)), "What is in <image>?")


def test_missing_image_file(processor, tmp_path):
    """A missing image path is named."""
    with pytest.raises(FileNotFoundError, match=re.escape(f"image file not found: {tmp_path / 'cat.png'}")):
        processor(tmp_path / "cat.png", "What is in the picture?")


def test_unreadable_image_file(processor, tmp_path):
    """A file that is not an image is named."""
    path = tmp_path / "notes.png"
    path.write_text("not an image")
    with pytest.raises(ValueError, match=re.escape(f"{path}: not a readable image (")):
        processor(str(path), "What is in the picture?")


def test_image_from_a_path_equals_the_same_pil_image(processor, tmp_path):
    """A path and the PIL image it holds give the same pixel values."""
    image = Image.new("RGB", (20, 12), (10, 200, 30))
    image.save(tmp_path / "green.png")
    assert torch.equal(processor.pixel_values(tmp_path / "green.png"), processor.pixel_values(image))


def test_question_that_is_not_a_string(processor):
    """None is not an empty question."""
    with pytest.raises(TypeError, match="the question must be a string, not NoneType"):
        processor(Image.new("RGB", (8, 8)), None)


def test_mean_and_std_from_preprocessor_config(ckpt_copy):
    """preprocessor_config.json's mean/std replace CLIP's: red with mean = std = 0.5 becomes (1, -1, -1)."""
    (ckpt_copy / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    _, processor = fm.load_pretrained(ckpt_copy)
    x = processor.pixel_values(Image.new("RGB", (32, 32), (255, 0, 0)))
    assert [x[c, 0, 0].item() for c in range(3)] == [1.0, -1.0, -1.0]


def test_malformed_preprocessor_config(ckpt_copy):
    """A scalar image_std is named along with the folder."""
    (ckpt_copy / "preprocessor_config.json").write_text(json.dumps({"image_std": 0.5}))
    with pytest.raises(ValueError, match=re.escape(f"{ckpt_copy}: image_std must be 3 numbers (R, G, B), got 0.5")):
        fm.load_pretrained(ckpt_copy)


def test_tokenizer_disagreeing_with_the_image_token_index():
    """A tokenizer whose <image> id differs from config.json is caught when the processor is built."""
    with pytest.raises(ValueError, match=re.escape("tokenizer has '<image>' as id 63, but the model's "
                                                   "image_token_index is 32000")):
        Processor(make_tokenizer(), image_size=32, patch_size=8, image_token_index=32000, num_visual_tokens=16)
