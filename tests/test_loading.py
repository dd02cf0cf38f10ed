# python -m pytest tests/test_loading.py -q
"""Loading is strict, and each way a checkpoint folder can be wrong gets one clear message."""
import json
import re

import pytest
import torch

import feather_mini as fm
from feather_mini.checkpoint import canonical_key, config_from_dict
from conftest import raises, read_tensors, write_tensors

Q_PROJ = "language_model.model.layers.1.self_attn.q_proj.weight"


def test_missing_tensor(ckpt_copy):
    """A tensor the config implies but no file holds: named with its expected shape."""
    file = ckpt_copy / "model.safetensors"
    tensors = read_tensors(file)
    del tensors[Q_PROJ]
    write_tensors(tensors, file)
    with raises(fm.CheckpointError, f"{ckpt_copy}: 1 tensor(s) missing from model.safetensors: '{Q_PROJ}' (64, 64)"):
        fm.load_pretrained(ckpt_copy)


def test_unexpected_tensor(ckpt_copy):
    """A tensor the model has no parameter for: named with its shape and file."""
    file = ckpt_copy / "model.safetensors"
    tensors = read_tensors(file)
    tensors["language_model.model.layers.1.self_attn.extra_proj.weight"] = torch.zeros(3, 5)
    write_tensors(tensors, file)
    with raises(fm.CheckpointError, f"{file}: unexpected tensor 'language_model.model.layers.1.self_attn."
                                    "extra_proj.weight' (3, 5): the model built from config.json has no such parameter"):
        fm.load_pretrained(ckpt_copy)


def test_wrong_shape(ckpt_copy):
    """A tensor whose shape disagrees with config.json: both shapes and the file."""
    file = ckpt_copy / "model.safetensors"
    tensors = read_tensors(file)
    tensors[Q_PROJ] = torch.zeros(64, 32)
    write_tensors(tensors, file)
    with raises(fm.CheckpointError, f"{file}: tensor '{Q_PROJ}' has shape (64, 32), but config.json implies (64, 64)"):
        fm.load_pretrained(ckpt_copy)


def test_truncated_safetensors(ckpt_copy):
    """A safetensors file cut in half: the file is named, safetensors' reason kept."""
    file = ckpt_copy / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    with pytest.raises(fm.CheckpointError, match=re.escape(f"{file}: not a readable safetensors file (")):
        fm.load_pretrained(ckpt_copy)


def test_missing_config(ckpt_copy):
    """A folder without config.json."""
    (ckpt_copy / "config.json").unlink()
    with raises(FileNotFoundError, f"{ckpt_copy}: no config.json (a llava-hf style checkpoint folder needs one)"):
        fm.load_pretrained(ckpt_copy)


def test_folder_without_weights(ckpt_copy):
    """A folder with config.json but no safetensors."""
    (ckpt_copy / "model.safetensors").unlink()
    with raises(fm.CheckpointError, f"{ckpt_copy}: no weights: expected model.safetensors or "
                                    "model.safetensors.index.json"):
        fm.load_pretrained(ckpt_copy)


def test_pickled_weights_are_named_not_loaded(ckpt_copy):
    """pytorch_model.bin is a pickle: it is pointed out, never opened."""
    (ckpt_copy / "model.safetensors").rename(ckpt_copy / "pytorch_model.bin")
    with raises(fm.CheckpointError, f"{ckpt_copy}: no weights: expected model.safetensors or model.safetensors."
                                    "index.json (found pytorch_model.bin: pickled weights are never loaded; "
                                    "convert them to safetensors)"):
        fm.load_pretrained(ckpt_copy)


def test_path_that_does_not_exist(tmp_path):
    """A checkpoint path that does not exist."""
    with raises(FileNotFoundError, f"checkpoint folder not found: {tmp_path / 'nope'}"):
        fm.load_pretrained(tmp_path / "nope")


def test_index_naming_a_missing_shard(ckpt_copy):
    """An index whose shard file is absent."""
    index = {"weight_map": {Q_PROJ: "model-00002-of-00002.safetensors"}}
    (ckpt_copy / "model.safetensors.index.json").write_text(json.dumps(index))
    with raises(fm.CheckpointError, f"{ckpt_copy / 'model.safetensors.index.json'} lists shard "
                                    f"model-00002-of-00002.safetensors, which is not in {ckpt_copy}"):
        fm.load_pretrained(ckpt_copy)


def test_missing_tokenizer(ckpt_copy):
    """load_pretrained needs tokenizer.json for the processor."""
    (ckpt_copy / "tokenizer.json").unlink()
    with raises(FileNotFoundError, f"{ckpt_copy}: no tokenizer.json"):
        fm.load_pretrained(ckpt_copy)


def test_canonical_key_rewrites_every_layout():
    """The three layouts transformers has written map to one key; recomputed buffers map to None."""
    assert canonical_key("model.language_model.layers.0.mlp.up_proj.weight") == \
        "language_model.model.layers.0.mlp.up_proj.weight"
    assert canonical_key("lm_head.weight") == "language_model.lm_head.weight"
    assert canonical_key("language_model.lm_head.weight") == "language_model.lm_head.weight"
    for key in ["vision_tower.vision_model.pre_layrnorm.bias",  # llava-hf
                "model.vision_tower.vision_model.pre_layrnorm.bias",  # transformers 4.52+
                "vision_tower.pre_layrnorm.bias"]:  # transformers 5 save_pretrained
        assert canonical_key(key) == "vision_tower.vision_model.pre_layrnorm.bias"
    assert canonical_key("model.multi_modal_projector.linear_2.bias") == "multi_modal_projector.linear_2.bias"
    assert canonical_key("language_model.model.layers.3.self_attn.rotary_emb.inv_freq") is None
    assert canonical_key("vision_tower.vision_model.embeddings.position_ids") is None


LLAVA_15_7B_HF_CONFIG = {  # config.json of llava-hf/llava-1.5-7b-hf: sizes left out take Llama/LLaVA defaults
    "architectures": ["LlavaForConditionalGeneration"], "ignore_index": -100, "image_token_index": 32000,
    "model_type": "llava", "pad_token_id": 32001, "projector_hidden_act": "gelu",
    "text_config": {"_name_or_path": "lmsys/vicuna-7b-v1.5", "architectures": ["LlamaForCausalLM"],
                    "max_position_embeddings": 4096, "model_type": "llama", "rms_norm_eps": 1e-05,
                    "torch_dtype": "float16", "vocab_size": 32064},
    "tie_word_embeddings": False, "torch_dtype": "float16",
    "vision_config": {"hidden_size": 1024, "image_size": 336, "intermediate_size": 4096,
                      "model_type": "clip_vision_model", "num_attention_heads": 16, "num_hidden_layers": 24,
                      "patch_size": 14, "projection_dim": 768, "vocab_size": 32000},
    "vision_feature_layer": -2, "vision_feature_select_strategy": "default", "vocab_size": 32064,
}


def test_llava_15_config_resolves_to_the_7b_sizes():
    """llava-1.5-7b-hf's sparse config.json gets LLaVA-1.5-7B's sizes from the defaults."""
    config = config_from_dict(LLAVA_15_7B_HF_CONFIG)
    t = config.text_config
    assert (t.hidden_size, t.intermediate_size, t.num_hidden_layers, t.num_attention_heads) == (4096, 11008, 32, 32)
    assert (t.num_key_value_heads, t.head_dim, t.rope_theta, t.vocab_size) == (32, 128, 10000.0, 32064)
    assert (t.bos_token_id, t.eos_token_id, t.rms_norm_eps, t.hidden_act) == (1, 2, 1e-5, "silu")
    v = config.vision_config
    assert (v.hidden_size, v.num_hidden_layers, v.layer_norm_eps, v.hidden_act) == (1024, 24, 1e-5, "quick_gelu")
    assert (v.grid_side, config.num_visual_tokens, config.image_token_index) == (24, 576, 32000)
    assert (config.vision_feature_layer, config.projector_hidden_act) == (-2, "gelu")
    assert not config.tie_word_embeddings


def test_config_rope_parameters_and_unsupported_settings():
    """transformers 5's rope_parameters is read; settings this file does not implement are refused."""
    text = {"rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}}
    assert config_from_dict({"text_config": text}).text_config.rope_theta == 500000.0
    with raises(ValueError, "config: text_config RoPE type 'linear' is not supported (only the default, "
                            "unscaled RoPE of LLaVA-1.5)"):
        config_from_dict({"text_config": {"rope_scaling": {"type": "linear", "factor": 2.0}}})
    with raises(ValueError, "config: vision_feature_layer=[-2, -5]: only a single int layer is supported "
                            "(LLaVA-1.5 uses -2)"):
        config_from_dict({"vision_feature_layer": [-2, -5]})
    with raises(ValueError, "config: projector_hidden_act='relu6' is not one of "
                            "['gelu', 'gelu_pytorch_tanh', 'quick_gelu', 'silu']"):
        config_from_dict({"projector_hidden_act": "relu6"})


def test_config_image_token_id_and_model_type():
    """transformers 5 may write image_token_id; a config for another architecture is refused by name."""
    assert config_from_dict({"image_token_id": 7}).image_token_index == 7
    with raises(ValueError, "config: model_type is 'qwen2_vl'; this file implements 'llava'"):
        config_from_dict({"model_type": "qwen2_vl"})
    with raises(ValueError, "config: text_config.model_type is 'mistral'; this file implements 'llama'"):
        config_from_dict({"text_config": {"model_type": "mistral"}})


def test_device_and_dtype_choices():
    """'auto' falls back to the CPU here; a dtype that is not one of the three is named."""
    from feather_mini.checkpoint import resolve_device, resolve_dtype

    if not (torch.cuda.is_available() or torch.backends.mps.is_available()):
        assert resolve_device("auto") == torch.device("cpu")
    assert resolve_dtype(None, torch.device("cpu")) == torch.float32
    assert resolve_dtype(None, torch.device("cuda")) == torch.float16
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with raises(ValueError, "dtype 'float64' is not one of ['bf16', 'bfloat16', 'float16', 'float32', 'fp16', 'fp32']"):
        resolve_dtype("float64", torch.device("cpu"))
    with raises(ValueError, "dtype torch.int8 is not one of ['bf16', 'bfloat16', 'float16', 'float32', 'fp16', 'fp32']"):
        resolve_dtype(torch.int8, torch.device("cpu"))


def test_config_json_that_is_not_json(ckpt_copy):
    """A malformed config.json names the file."""
    (ckpt_copy / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=re.escape(f"{ckpt_copy / 'config.json'}: not valid JSON (")):
        fm.load_pretrained(ckpt_copy)
