# python -m pytest tests/test_bad_checkpoints.py -q
"""Checkpoint folders with configs of the wrong shape or type, unreadable or escaping files, and
weights that are not finite floats; generate() arguments and devices this file cannot serve. Each
gets one error naming the file, the key and the value, before torch fails somewhere deeper."""
import json
import os
import re

import pytest
import torch
from PIL import Image

import feather_mini as fm
from feather_mini.checkpoint import resolve_device
from feather_mini.model import TextConfig, VisionConfig
from conftest import config_of, raises, read_tensors, write_tensors

Q_PROJ = "language_model.model.layers.1.self_attn.q_proj.weight"


def write_config(folder, config):
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("section", [None, "text_config", "vision_config"])
def test_config_that_is_a_list(ckpt_copy, section):
    """config.json, or one of its sections, holding a list instead of an object."""
    config = [1, 2] if section is None else {**config_of(ckpt_copy), section: [1, 2]}
    write_config(ckpt_copy, config)
    what = "the config" if section is None else section
    with raises(ValueError, f"{ckpt_copy / 'config.json'}: {what} must be a JSON object, got a list"):
        fm.load_pretrained(ckpt_copy)


def test_preprocessor_config_that_is_a_list(ckpt_copy):
    """preprocessor_config.json holding a list."""
    (ckpt_copy / "preprocessor_config.json").write_text("[0.5, 0.5, 0.5]")
    with raises(ValueError, f"{ckpt_copy / 'preprocessor_config.json'} must be a JSON object, got a list"):
        fm.load_pretrained(ckpt_copy)


@pytest.mark.parametrize("section,key,value,message", [
    ("vision_config", "patch_size", 0, "vision_config.patch_size must be a positive int, got 0"),
    ("text_config", "hidden_size", "128", "text_config.hidden_size must be a positive int, got '128'"),
    ("text_config", "rms_norm_eps", "1e-5", "text_config.rms_norm_eps must be a positive finite number, got '1e-5'"),
    ("text_config", "num_hidden_layers", -1, "text_config.num_hidden_layers must be a positive int up to 1024, got -1"),
    ("text_config", "num_hidden_layers", 10 ** 6, "text_config.num_hidden_layers must be a positive int up to 1024, "
                                                  "got 1000000"),
    ("text_config", "rope_parameters", {"rope_type": "default", "rope_theta": -10000},
     "text_config.rope_theta must be a positive finite number, got -10000"),
    ("text_config", "num_attention_heads", True, "text_config.num_attention_heads must be a positive int, got True"),
    ("text_config", "eos_token_id", [], "text_config.eos_token_id must be an int >= 0 (or a list of them), got []"),
    ("vision_config", "layer_norm_eps", float("nan"), "vision_config.layer_norm_eps must be a positive finite number, "
                                                      "got nan"),
    ("vision_config", "hidden_act", ["gelu"], "vision_config.hidden_act must be a string, got ['gelu']"),
    ("vision_config", "hidden_size", 30, "vision_config.hidden_size 30 is not divisible by num_attention_heads 4"),
    ("vision_config", "image_size", 4, "vision_config.image_size 4 is smaller than patch_size 8"),
    ("text_config", "num_key_value_heads", 3, "text_config.num_attention_heads 4 is not divisible by "
                                              "num_key_value_heads 3"),
    ("text_config", "head_dim", 15, "text_config.head_dim 15 is odd; RoPE rotates pairs of dimensions"),
    (None, "multimodal_projector_bias", "yes", "multimodal_projector_bias must be true or false, got 'yes'"),
    (None, "image_token_index", -1, "image_token_index must be an int >= 0, got -1"),
])
def test_config_field_of_the_wrong_type_or_range(ckpt_copy, section, key, value, message):
    """Every numeric field is checked once, by its declared type; the error names section.key and the value."""
    config = config_of(ckpt_copy)
    (config if section is None else config[section])[key] = value
    write_config(ckpt_copy, config)
    with raises(ValueError, f"{ckpt_copy / 'config.json'}: {message}"):
        fm.load_pretrained(ckpt_copy)


def test_config_checks_apply_to_direct_construction():
    """The dataclasses check themselves, so code that builds a config gets the same errors."""
    with raises(ValueError, "hidden_size must be a positive int, got '128'"):
        TextConfig(hidden_size="128")
    with raises(ValueError, "patch_size must be a positive int, got 0"):
        VisionConfig(patch_size=0)


def test_sizes_too_large_for_torch(ckpt_copy):
    """A vocabulary of 10^30 tokens cannot even be described on the meta device: named, not a torch traceback."""
    config = config_of(ckpt_copy)
    config["text_config"]["vocab_size"] = 10 ** 30
    write_config(ckpt_copy, config)
    with pytest.raises(fm.CheckpointError, match=re.escape(f"{ckpt_copy / 'config.json'}: sizes too large for torch (")):
        fm.load_pretrained(ckpt_copy)


@pytest.mark.parametrize("name", ["config.json", "preprocessor_config.json"])
def test_json_that_is_not_utf8(ckpt_copy, name):
    """A Latin-1 byte in a JSON file: the file is named (UnicodeDecodeError names none)."""
    (ckpt_copy / name).write_bytes(b'{"image_std": "\xff"}')
    with raises(ValueError, f"{ckpt_copy / name}: not UTF-8 text (byte 15: invalid start byte)"):
        fm.load_pretrained(ckpt_copy)


def test_unreadable_weights(ckpt_copy):
    """model.safetensors without read permission is reported as that, not as missing."""
    file = ckpt_copy / "model.safetensors"
    file.chmod(0)
    if os.access(file, os.R_OK):
        pytest.skip("this user reads files whatever their mode (root)")
    with raises(PermissionError, f"{file}: permission denied (cannot read the weights)"):
        fm.load_pretrained(ckpt_copy)


@pytest.mark.parametrize("shard", ["../../elsewhere.safetensors", "/etc/model.safetensors", ""])
def test_index_naming_a_file_outside_the_folder(ckpt_copy, shard):
    """A weight_map entry must be a file in the checkpoint folder: no '..', no absolute path."""
    index = ckpt_copy / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {Q_PROJ: shard}}))
    with raises(fm.CheckpointError, f"{index}: weight_map entry '{Q_PROJ}' -> {shard!r} is not a file name "
                                    f"inside {ckpt_copy}"):
        fm.load_pretrained(ckpt_copy)


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool])
def test_weight_stored_as_int_or_bool(ckpt_copy, dtype):
    """A float parameter stored as int32 or bool: the file, tensor and dtype are named."""
    file = ckpt_copy / "model.safetensors"
    tensors = read_tensors(file)
    tensors[Q_PROJ] = torch.zeros(64, 64, dtype=dtype)
    write_tensors(tensors, file)
    with raises(fm.CheckpointError, f"{file}: tensor '{Q_PROJ}' is stored as {dtype}; the model's weights are floats"):
        fm.load_pretrained(ckpt_copy)


@pytest.mark.parametrize("value,dtype", [(float("nan"), None), (float("inf"), None), (1e5, "float16")])
def test_non_finite_weights(ckpt_copy, value, dtype):
    """NaN or inf in a tensor, or a value float16 cannot hold, is refused at load."""
    file = ckpt_copy / "model.safetensors"
    tensors = read_tensors(file)
    tensors[Q_PROJ][3, 5] = value
    write_tensors(tensors, file)
    as_dtype = torch.float16 if dtype else torch.float32
    with raises(fm.CheckpointError, f"{file}: tensor '{Q_PROJ}' holds NaN or inf (as {as_dtype})"):
        fm.load_pretrained(ckpt_copy, dtype=dtype)


@pytest.fixture(scope="module")
def loaded(gqa_dir):
    model, processor = fm.load_pretrained(gqa_dir)
    return model, processor(Image.new("RGB", (32, 32), (200, 30, 30)), "What is in the picture?")


def test_non_finite_logits_during_generate(gqa_dir, loaded):
    """Weights made NaN after loading: generate says so instead of decoding token 0 as an answer."""
    model, inputs = fm.load_pretrained(gqa_dir)[0], loaded[1]
    with torch.no_grad():
        model.language_model.lm_head.weight[7].fill_(float("nan"))
    with pytest.raises(ValueError, match=re.escape("non-finite logits at new token 1 (NaN or inf): the weights hold "
                                                   "NaN/inf or the activations overflowed in torch.float32")):
        model.generate(inputs, max_new_tokens=3)


@pytest.mark.parametrize("value,message", [(2.5, "float 2.5"), (float("nan"), "float nan"), (True, "bool True"),
                                           ("3", "str '3'")])
def test_max_new_tokens_must_be_an_int(loaded, value, message):
    """2.5, NaN, True and "3" are not token counts."""
    model, inputs = loaded
    with raises(TypeError, f"max_new_tokens must be an int, got {message}"):
        model.generate(inputs, max_new_tokens=value)


@pytest.mark.parametrize("device", ["meta", "xpu", "hpu", "xpu:1"])
def test_unsupported_device_types(device):
    """Device types other than cpu, cuda and mps are refused up front."""
    with raises(ValueError, f"device '{device}' is not supported; expected 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto'"):
        resolve_device(device)
