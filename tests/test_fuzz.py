# python -m pytest tests/test_fuzz.py -q
"""Property-based: any PIL image (mode, size, pixel bytes) and any single config.json field
either works or gets one of the project's errors (ValueError, TypeError, OSError) with a
message; never another exception from deep inside torch or Pillow."""
import json
import shutil

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import feather_mini as fm
from feather_mini import SHIPPED_WEIGHTS
from feather_mini.processing import Processor
from conftest import IMAGE_ID, make_tokenizer

MODES = ["1", "L", "P", "RGB", "RGBA", "LA", "CMYK", "YCbCr", "I", "I;16", "I;16B", "I;16L", "F"]
PROJECT_ERRORS = (ValueError, TypeError, OSError)


@pytest.fixture(scope="module")
def processor():
    return Processor(make_tokenizer(), image_size=32, patch_size=8, image_token_index=IMAGE_ID, num_visual_tokens=16)


@st.composite
def images(draw):
    """A PIL image of any listed mode, 0..40 pixels a side, its raw bytes drawn (every bit depth,
    NaN and inf floats included); for float images sometimes one drawn value everywhere."""
    mode = draw(st.sampled_from(MODES))
    size = (draw(st.integers(0, 40)), draw(st.integers(0, 40)))
    blank = Image.new(mode, size)
    if 0 in size:
        return blank
    if mode == "F" and draw(st.booleans()):
        return Image.new(mode, size, draw(st.floats(allow_nan=True, allow_infinity=True, width=32)))
    n = len(blank.tobytes())
    return Image.frombytes(mode, size, draw(st.binary(min_size=n, max_size=n)))


@settings(max_examples=100, deadline=None)
@given(image=images())
def test_any_image_gives_a_tensor_or_a_clear_error(processor, image):
    """A finite (3, 32, 32) float32 tensor, or a ValueError/TypeError with a message."""
    try:
        x = processor.pixel_values(image)
    except (ValueError, TypeError) as e:
        assert str(e)
        return
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and torch.isfinite(x).all()


@pytest.fixture(scope="module")
def shipped_copy(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shipped")
    shutil.copytree(SHIPPED_WEIGHTS, folder, dirs_exist_ok=True)
    return folder, json.loads((folder / "config.json").read_text())


VALUES = st.one_of(st.integers(-3, 600), st.sampled_from([2 ** 31, 2 ** 63, 10 ** 30]), st.floats(allow_nan=True),
                   st.text(max_size=4), st.lists(st.integers(-2, 200), max_size=3), st.none(), st.booleans(),
                   st.dictionaries(st.text(max_size=3), st.integers(0, 9), max_size=2))


@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_any_config_field_loads_or_gets_a_clear_error(shipped_copy, data):
    """One field of config.json (top level, text_config or vision_config) replaced by a drawn value."""
    folder, config = shipped_copy
    section = data.draw(st.sampled_from([None, "text_config", "vision_config"]))
    fields = config if section is None else config[section]
    key = data.draw(st.sampled_from(sorted(fields)))
    changed = json.loads(json.dumps(config))
    (changed if section is None else changed[section])[key] = data.draw(VALUES)
    (folder / "config.json").write_text(json.dumps(changed))
    try:
        fm.load_pretrained(folder)
    except PROJECT_ERRORS as e:
        assert str(e)
