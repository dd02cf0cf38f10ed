# python -m pytest tests/test_kv_cache.py -q
"""The KV cache: decoding with it gives the logits of recomputing the whole sequence."""
import re
from dataclasses import replace

import pytest
import torch
from PIL import Image

import feather_mini as fm
from feather_mini.processing import Inputs


@pytest.fixture(scope="module")
def loaded(gqa_dir):
    model, processor = fm.load_pretrained(gqa_dir)
    return model, processor(Image.new("RGB", (40, 24), (200, 30, 90)), "What is in the picture?")


def test_cached_decoding_equals_recomputation(loaded):
    """At each of 8 greedy steps, decode_step's logits equal a full forward over the longer sequence."""
    model, inputs = loaded
    cache = fm.KVCache(model.config.text_config.num_hidden_layers)
    with torch.no_grad():
        logits = model(inputs, cache).logits[:, -1]
        ids = inputs.input_ids
        for step in range(8):
            next_id = logits.argmax(-1, keepdim=True)
            ids = torch.cat([ids, next_id], dim=1)
            logits = model.decode_step(next_id, cache)[:, -1]
            longer = Inputs(ids, inputs.pixel_values, inputs.visual_start, inputs.num_visual_tokens, inputs.grid_shape)
            full = model(longer).logits
            diff = (logits - full[:, -1]).abs().max().item()
            assert diff <= 1e-5, f"step {step}: cached and recomputed logits differ by {diff:.2e}"


def test_cache_holds_what_each_layer_saw(loaded):
    """After a 24-token prefill and 3 decoded tokens every layer holds 27 keys (their positions: the
    cached-decoding test above)."""
    model, inputs = loaded
    cache = fm.KVCache(4)
    with torch.no_grad():
        model(inputs, cache)
        for token in (5, 6, 7):
            model.decode_step(torch.tensor([[token]]), cache)
    assert cache.length == 27
    assert [cache.seen(layer) for layer in range(4)] == [27, 27, 27, 27]
    assert cache.keys[0].shape == (1, 2, 27, 16)  # (B, key/value heads, tokens, head size)
    assert cache.nbytes() == 4 * 2 * (2 * 27 * 16) * 4  # layers * (k, v) * elements * float32 bytes


@pytest.mark.parametrize("reserve, steps, moved_at", [(3, 3, []), (0, 3, [1]), (0, 30, [1, 26])])
def test_decoding_appends_in_place(loaded, reserve, steps, moved_at):
    """With 3 rows reserved, 3 decoded tokens are written into the prefill's buffer. With none, the
    first token moves the 24-row cache into 25 + 24 = 49 rows, and the 26th into 50 + 49: the buffer
    doubles, so 30 tokens copy it twice rather than 30 times."""
    model, inputs = loaded
    cache = fm.KVCache(4, reserve=reserve)
    moved = []
    with torch.no_grad():
        model(inputs, cache)
        for step in range(1, steps + 1):
            before = cache.keys[0].data_ptr()
            model.decode_step(torch.tensor([[5]]), cache)
            if cache.keys[0].data_ptr() != before:
                moved.append(step)
    assert moved == moved_at and cache.seen(0) == 24 + steps


def test_cache_filled_in_inference_mode_decodes_outside_it(loaded):
    """A prefill under torch.inference_mode, then decode_step under no_grad: the cache is copied out
    of inference mode rather than refusing the in-place write, and decoding gives the same logits."""
    model, inputs = loaded
    with torch.no_grad():
        plain = fm.KVCache(4)
        model(inputs, plain)
        expected = model.decode_step(torch.tensor([[5]]), plain)
    cache = fm.KVCache(4, reserve=2)
    with torch.inference_mode():
        model(inputs, cache)
    with torch.no_grad():
        assert torch.equal(model.decode_step(torch.tensor([[5]]), cache), expected)


def test_reserve_must_be_a_count():
    with pytest.raises(ValueError, match=r"KVCache reserve=-1 must be an int >= 0"):
        fm.KVCache(4, reserve=-1)


def test_prefill_into_a_used_cache_is_refused(loaded):
    """A second prefill into a filled cache would mix two sequences: it is an error."""
    model, inputs = loaded
    cache = fm.KVCache(4)
    with torch.no_grad():
        model(inputs, cache)
        with pytest.raises(ValueError, match="the prefill needs an empty KVCache; this one already holds 24 positions"):
            model(inputs, cache)


def test_generate_stops_at_max_new_tokens_and_context(loaded):
    """max_new_tokens bounds the output; a request past the context is refused up front."""
    model, inputs = loaded
    assert len(model.generate(inputs, max_new_tokens=3).token_ids) == 3
    model.generate(inputs, max_new_tokens=105)  # feeds positions 0..127: exactly the context of 128
    with pytest.raises(ValueError, match=r"^too long an answer allowed: the prompt takes 24 tokens with the image's "
                                         r"16 visual tokens, plus max_new_tokens 106, over the model's context of 128$"):
        model.generate(inputs, max_new_tokens=106)


def test_generate_stops_at_eos(gqa_dir):
    """With eos set to the first greedy token, generation returns that one token and empty text."""
    model, processor = fm.load_pretrained(gqa_dir)
    inputs = processor(Image.new("RGB", (40, 24), (200, 30, 90)), "What is in the picture?")
    first = model.generate(inputs, max_new_tokens=1).token_ids[0]
    eos = [60, first]  # a list, as some configs give it; any member stops generation
    model.config = replace(model.config, text_config=replace(model.config.text_config, eos_token_id=eos))
    out = model.generate(inputs, max_new_tokens=10)
    assert out.token_ids == [first]
    assert out.text == processor.tokenizer.decode([first], skip_special_tokens=True)


def test_decode_step_misuse_is_a_clear_error(loaded):
    """Wrong token shape, no prefill, or a cache for another depth: each named, never a torch traceback."""
    model, inputs = loaded
    with pytest.raises(ValueError, match=re.escape("decode_step needs a KVCache filled by a prefill")):
        model.decode_step(torch.tensor([[5]]), fm.KVCache(4))
    cache = fm.KVCache(4)
    with torch.no_grad():
        model(inputs, cache)
    with pytest.raises(ValueError, match=re.escape("decode_step takes token ids of shape (B, 1), got (1, 2)")):
        model.decode_step(torch.tensor([[5, 6]]), cache)
    with pytest.raises(ValueError, match=re.escape("decode_step takes token ids of shape (B, 1), got (1,)")):
        model.decode_step(torch.tensor([5]), cache)
    with pytest.raises(ValueError, match=re.escape("token id 64 is outside the vocabulary of 64 (text_config.vocab_size)")):
        model.decode_step(torch.tensor([[64]]), cache)
    with pytest.raises(ValueError, match=re.escape("KVCache has 3 layers; the model has 4")):
        model(inputs, fm.KVCache(3))


def test_generate_needs_at_least_one_new_token(loaded):
    """max_new_tokens=0 would pay for a prefill and return nothing: refused."""
    model, inputs = loaded
    with pytest.raises(ValueError, match="max_new_tokens must be at least 1, got 0"):
        model.generate(inputs, max_new_tokens=0)
