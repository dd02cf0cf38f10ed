# python -m pytest tests/test_parity.py -q
"""feather_mini's LLaVA against transformers' LlavaForConditionalGeneration on the same weights."""
import json

import pytest
import torch
from PIL import Image

import feather_mini as fm
from conftest import make_tokenizer, save_checkpoint, tiny_hf_llava, write_tensors


def llava_hf_key(key: str) -> str:
    """transformers' in-memory key -> the llava-hf layout (language_model.model.*, vision_tower.vision_model.*)."""
    for old, new in [("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head."),
                     ("model.vision_tower.", "vision_tower.vision_model."),
                     ("model.multi_modal_projector.", "multi_modal_projector.")]:
        if key.startswith(old):
            return new + key[len(old):]
    raise AssertionError(key)


def transformers_452_key(key: str) -> str:
    """transformers' in-memory key -> the layout 4.52+ saves (model.*, lm_head.*, CLIP's vision_model kept)."""
    return key.replace("model.vision_tower.", "model.vision_tower.vision_model.", 1)


def write_layout(hf, folder, rename, shards=1):
    """Write hf's weights under `rename`d keys, in `shards` files (an index.json when more than one)."""
    hf.config.save_pretrained(folder)
    make_tokenizer().save(str(folder / "tokenizer.json"))
    state = {rename(k): v for k, v in hf.state_dict().items()
             if not (hf.config.tie_word_embeddings and k == "lm_head.weight")}
    keys = sorted(state)
    if shards == 1:
        write_tensors(state, folder / "model.safetensors")
        return folder
    weight_map = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = keys[i::shards]
        write_tensors({k: state[k] for k in part}, folder / name)
        weight_map.update({k: name for k in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def example_image() -> Image.Image:
    """A non-square RGB image with structure in every channel, so padding and resizing matter."""
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (20, 30, 3), generator=g, dtype=torch.uint8)
    return Image.frombytes("RGB", (30, 20), bytes(pixels.flatten().tolist()))


def hf_greedy(hf, inputs, dtype) -> list[int]:
    """transformers' 10 greedy tokens after the prompt."""
    ids = hf.generate(input_ids=inputs.input_ids, pixel_values=inputs.pixel_values.to(dtype),
                      attention_mask=torch.ones_like(inputs.input_ids), max_new_tokens=10, do_sample=False)
    return ids[0, inputs.input_ids.shape[1]:].tolist()


def assert_matches_transformers(hf, folder):
    model, processor = fm.load_pretrained(folder)
    inputs = processor(example_image(), "What is in the picture?")
    n = model.config.num_visual_tokens
    with torch.no_grad():
        hf_feats = torch.stack(hf.model.get_image_features(pixel_values=inputs.pixel_values).pooler_output)
        feats = model.image_features(inputs.pixel_values)
        diff = (feats - hf_feats).abs().max().item()
        assert feats.shape == hf_feats.shape == (1, n, 64)
        assert diff <= 1e-5, f"image features differ by {diff:.2e}"

        hf_logits = hf(input_ids=inputs.input_ids, pixel_values=inputs.pixel_values).logits
        logits = model(inputs).logits
        diff = (logits - hf_logits).abs().max().item()
        assert logits.shape == hf_logits.shape == (1, n + 8, 64)  # <s> USER: ... 6 words
        assert diff <= 1e-4, f"logits differ by {diff:.2e}"

        hf_ids = hf_greedy(hf, inputs, torch.float32)
    out = model.generate(inputs, max_new_tokens=10)
    assert out.token_ids == hf_ids
    assert out.text == make_tokenizer().decode(hf_ids, skip_special_tokens=True)


def test_transformers_saved_folder(hf_gqa, gqa_dir):
    """GQA model, exactly as transformers' save_pretrained wrote it."""
    assert_matches_transformers(hf_gqa, gqa_dir)


def test_llava_hf_layout(hf_gqa, tmp_path):
    """The layout of the llava-hf checkpoints on the Hub (language_model.model.*, vision_tower.vision_model.*)."""
    assert_matches_transformers(hf_gqa, write_layout(hf_gqa, tmp_path, llava_hf_key))


def test_newer_layout_in_two_shards(hf_gqa, tmp_path):
    """model.language_model.* / lm_head.* keys, split over two shards listed in an index."""
    folder = write_layout(hf_gqa, tmp_path, transformers_452_key, shards=2)
    assert sorted(p.name for p in folder.glob("*.safetensors")) == [
        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert_matches_transformers(hf_gqa, folder)


def test_tied_lm_head(hf_tied, tmp_path):
    """A tied lm_head is absent from the file and shares the embedding matrix after loading."""
    folder = save_checkpoint(hf_tied, tmp_path)
    assert_matches_transformers(hf_tied, folder)
    model, _ = fm.load_pretrained(folder)
    assert model.language_model.lm_head.weight is model.language_model.model.embed_tokens.weight


def test_full_strategy_and_last_layer_features(tmp_path):
    """vision_feature_select_strategy 'full' keeps CLS (17 visual tokens); features from CLIP's last layer."""
    hf = tiny_hf_llava(kv_heads=2, tied=False, seed=2, vision_feature_select_strategy="full", vision_feature_layer=-1)
    assert_matches_transformers(hf, save_checkpoint(hf, tmp_path))
    model, processor = fm.load_pretrained(tmp_path)
    inputs = processor(example_image(), "")
    assert (inputs.visual_start, inputs.num_visual_tokens, inputs.grid_shape) == (2, 17, (4, 4))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_matches_transformers(gqa_dir, dtype):
    """Loaded in float16 or bfloat16 by both, the logits agree (same ops, same order) and so do 10 greedy tokens."""
    from transformers import LlavaForConditionalGeneration

    # from_pretrained, not hf.to(dtype): .to would also cast transformers' RoPE frequencies.
    hf = LlavaForConditionalGeneration.from_pretrained(gqa_dir, dtype=dtype).eval()
    model, processor = fm.load_pretrained(gqa_dir, dtype=dtype)
    assert {p.dtype for p in model.parameters()} == {dtype}
    inputs = processor(example_image(), "What is in the picture?")
    with torch.no_grad():
        hf_logits = hf(input_ids=inputs.input_ids, pixel_values=inputs.pixel_values.to(dtype)).logits.float()
        diff = (model(inputs).logits - hf_logits).abs().max().item()
        hf_ids = hf_greedy(hf, inputs, dtype)
    assert diff <= 1e-3, f"{dtype} logits differ by {diff:.2e}"
    assert model.generate(inputs, max_new_tokens=10).token_ids == hf_ids


@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_unavailable_device_is_a_clear_error(gqa_dir, device):
    """Asking for a GPU this machine lacks is a ValueError, not a torch traceback."""
    available = torch.cuda.is_available() if device == "cuda" else torch.backends.mps.is_available()
    if available:
        pytest.skip(f"{device} is available here")
    with pytest.raises(ValueError, match=f"device '{device}' requested but"):
        fm.load_pretrained(gqa_dir, device=device)


@pytest.mark.parametrize("size", [(30, 20), (19, 45), (32, 32), (1, 1)])
def test_pixel_values_match_transformers_pad_processor(size):
    """Pad to square with the mean colour, bicubic resize, normalize: as LlavaImageProcessorPil(do_pad=True)."""
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    reference = LlavaImageProcessorPil(do_pad=True, size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = fm.Processor(make_tokenizer(), image_size=32, patch_size=8, image_token_index=63, num_visual_tokens=16)
    image = example_image().resize(size)
    expected = reference(image, return_tensors="pt")["pixel_values"][0]
    diff = (processor.pixel_values(image) - expected).abs().max().item()
    assert diff == 0.0, f"pixel values differ by {diff:.2e}"


@pytest.mark.parametrize("mode", ["LA", "RGBA", "PA", "P+transparency", "L+transparency"])
def test_transparent_images_match_transformers(mode):
    """Alpha (a band, a palette's or a tRNS entry) composited onto white, as transformers' convert_rgb does:
    an LA image whose alpha runs 0..255 over black gave up to 3.8 of difference when alpha was dropped."""
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    reference = LlavaImageProcessorPil(do_pad=True, size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = fm.Processor(make_tokenizer(), image_size=32, patch_size=8, image_token_index=63, num_visual_tokens=16)
    rgb = example_image().resize((30, 20))
    alpha = Image.linear_gradient("L").resize((30, 20))  # 0 (transparent) at the top to 255 at the bottom
    if mode in ("P+transparency", "L+transparency"):
        image = rgb.convert("P") if mode.startswith("P") else rgb.convert("L")
        image.info["transparency"] = image.getpixel((0, 0))  # one colour (index or grey) fully transparent
    else:
        image = rgb.convert("RGBA")
        image.putalpha(alpha)
        image = image.convert(mode)
    expected = reference(image, return_tensors="pt")["pixel_values"][0]
    diff = (processor.pixel_values(image) - expected).abs().max().item()
    assert diff == 0.0, f"pixel values differ by {diff:.2e}"
