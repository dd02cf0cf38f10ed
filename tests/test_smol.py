# python -m pytest tests/test_smol.py -q
"""The smol preset (feather-smol): its layout, LoRA on a frozen pretrained decoder, training that
resumes exactly, and the full folder built from a base and a delta. A tiny stand-in of SmolLM2
(4 layers of width 32, a byte-level tokenizer with SmolLM2's three control tokens) plays the base."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

import feather_mini as fm
from feather_mini import lora, smol, train
from feather_mini import CheckpointError
from feather_mini.__main__ import main as cli
from feather_mini.model import LlamaForCausalLM
from conftest import raises, train_args, train_keeping_threads

CONTROL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # SmolLM2's ids 0, 1, 2


def write_base(folder, seed=0):
    """A Llama text checkpoint laid out as `fetch smollm2` writes one, with random weights."""
    folder.mkdir(parents=True)
    vocab = {t: i for i, t in enumerate(CONTROL + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab, []))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True) for t in CONTROL])
    tok.save(str(folder / "tokenizer.json"))
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": len(vocab),
              "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4, "num_attention_heads": 2,
              "num_key_value_heads": 1, "head_dim": 16, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
              "rope_theta": 100000.0, "hidden_act": "silu", "tie_word_embeddings": True, "bos_token_id": 1,
              "eos_token_id": 2}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "source.json").write_text(json.dumps({"file": "tiny.gguf", "sha256": "ab" * 32}))
    torch.manual_seed(seed)
    text_config = fm.TextConfig(**{k: v for k, v in config.items() if k in fm.TextConfig.__dataclass_fields__})
    text = LlamaForCausalLM(text_config, tie_word_embeddings=True)
    save_file({k: torch.randn(v.shape) * 0.1 for k, v in text.state_dict().items() if k != "lm_head.weight"},
              str(folder / "model.safetensors"))
    return folder


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return write_base(tmp_path_factory.mktemp("cache") / "smollm2")  # where `fetch smollm2 --cache` puts it


def parse(out, base, *options):
    """train's command line on the smol preset: 1 chat of 1 question per step, no validation."""
    return train_args(out, "--base", str(base), "--lora-rank", "2", *options, preset="smol", batch=1, turns=1)


# -----------------------------------------------------------------------------
# Layout


def test_smol_preset_is_feather_576s_vision_on_smollm2():
    """SmolLM2-135M's decoder (30 layers, 9 heads of 64, 3 KV heads) plus one embedding row for <image>
    (id 49152), feather-576's 24x24 grid; rank-16 adapters on the 7 matrices of each layer and the
    projector are the 5,291,136 trained parameters: 30 * 16 * (1152 + 768 + 768 + 1152 + 3 * 2112) +
    (128 * 576 + 576 + 576 * 576 + 576)."""
    text = fm.TextConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                         rope_theta=100000.0, eos_token_id=2)
    config = smol.smol_config(text)
    assert (config.num_visual_tokens, config.vision_config.grid_side, config.image_token_index) == (576, 24, 49152)
    assert (config.text_config.vocab_size, config.text_config.head_dim, config.tie_word_embeddings) == (49153, 64, True)
    with torch.device("meta"):
        model = fm.LlavaForConditionalGeneration(config)
        lora.add_adapters(model, rank=16, alpha=32, seed=0)
    model.vision_tower.requires_grad_(False)
    assert sum(p.numel() for p in train.trained_parameters(model).values()) == 5_291_136
    assert sum(p.numel() for p in lora.adapter_tensors(model).values()) == 4_884_480


def test_adapters_start_as_the_identity(base):
    """B starts at zero: the adapted decoder computes what the base does, bit for bit."""
    model, tokenizer = smol.build(base, 0, 4, 8.0, train.init_weights)
    inputs = train.make_processor(tokenizer, model.config)(fm.synthetic.example("val", 0, 0).scene.image(), "what?")
    with torch.no_grad():
        adapted = model(inputs).logits
        for module in model.modules():
            if isinstance(module, lora.LowRankDelta):
                module.scale = 0.0
        plain = model(inputs).logits
    assert torch.equal(adapted, plain)


def test_prompt_uses_smollm2s_tokens_and_the_added_image_token(base):
    """<image> is the id after the base vocabulary; the prompt adds no bos (SmolLM2's tokenizer does not)."""
    model, tokenizer = smol.build(base, 0, 2, 4.0, train.init_weights)
    processor = train.make_processor(tokenizer, model.config)
    ids, start = processor.input_ids("where?")
    assert tokenizer.token_to_id("<image>") == 259 == model.config.image_token_index
    # 'U' 'S' 'E' 'R' ':' and the space before <image>, which byte-level BPE writes as 'Ġ'
    assert start == 6 and ids[0, :6].tolist() == [tokenizer.token_to_id(c) for c in "USER:Ġ"]
    assert (ids[0] == 259).sum().item() == 576


def test_missing_base_names_the_fetch_command(tmp_path):
    with raises(FileNotFoundError, f"no base checkpoint in {tmp_path}: run `python -m feather_mini fetch smollm2` "
                                   "(or pass its folder)"):
        smol.build(tmp_path, 0, 2, 4.0, train.init_weights)


def test_base_with_a_missing_tensor_is_named(base, tmp_path):
    folder = tmp_path / "base"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (folder / name).write_text((base / name).read_text())
    tensors = load_file(base / "model.safetensors")
    del tensors["model.norm.weight"]
    save_file(tensors, str(folder / "model.safetensors"))
    with raises(CheckpointError, f"{folder / 'model.safetensors'}: tensor model.norm.weight is missing"):
        smol.read_base(folder)

# -----------------------------------------------------------------------------
# Training


@pytest.fixture(scope="module")
def run3(base, tmp_path_factory):
    out = tmp_path_factory.mktemp("smolrun")
    return out, train_keeping_threads(parse(out, base, "--steps", "3"))


def test_output_is_a_delta_on_the_base(run3):
    """The run writes the delta (no full weights), and its checkpoint holds only the trained tensors."""
    out, _ = run3
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint", "config.json", "delta.json", "delta.safetensors",
                                                     "preprocessor_config.json", "tokenizer.json", "train_log.jsonl"]
    meta = json.loads((out / "delta.json").read_text())
    assert (meta["base"], meta["base_sha256"], meta["rank"], meta["alpha"]) == ("smollm2", "ab" * 32, 2, 32.0)
    delta = load_file(out / "delta.safetensors")
    assert delta["language_model.model.embed_tokens.added_rows"].shape == (1, 32)
    assert delta["language_model.model.layers.3.mlp.down_proj.lora_B.weight"].shape == (32, 2)
    decoder = [k for k in delta if k.startswith("language_model.")]
    assert all(".lora_" in k for k in decoder if k.endswith(".weight"))  # no base matrix travels in the delta
    state = load_file(out / "checkpoint" / "state.safetensors")
    assert not any("vision_tower" in k or "embed_tokens" in k for k in state)


def test_training_leaves_the_base_and_vision_tower_alone(run3, base):
    """Only the projector and the adapters move: every base decoder tensor is the base file's."""
    out, _ = run3
    model, _ = smol.build(base, 0, 2, 32.0, train.init_weights)
    delta = load_file(out / "delta.safetensors")
    vision = load_file(smol.vision_source() / "model.safetensors")
    assert all(torch.equal(delta[k], vision[k]) for k in delta if k.startswith("vision_tower."))
    assert delta["language_model.model.layers.0.self_attn.q_proj.lora_B.weight"].abs().max() > 0
    trained = load_file(out / "checkpoint" / "state.safetensors")
    assert trained["model/multi_modal_projector.linear_1.weight"].shape == (32, 128)
    assert not torch.equal(trained["model/multi_modal_projector.linear_1.weight"],
                           model.multi_modal_projector.linear_1.weight)


def test_smol_trains_3_steps_and_resumes_exactly(run3, base, tmp_path):
    """2 steps, a checkpoint, --resume to 3: the losses and the delta equal an uninterrupted 3-step run."""
    out, whole = run3
    first = train.train(parse(tmp_path, base, "--steps", "2", "--checkpoint-every", "1"))
    second = train.train(parse(tmp_path, base, "--steps", "3", "--resume"))
    assert len(whole) == 3 and first + second == whole
    a, b = load_file(out / "delta.safetensors"), load_file(tmp_path / "delta.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_another_rank(run3, base, tmp_path):
    train.train(parse(tmp_path, base, "--steps", "1"))
    with raises(ValueError, f"--resume: {tmp_path / 'checkpoint'} was trained with lora_rank=2, "
                            "this run asks for lora_rank=3"):
        train.train(parse(tmp_path, base, "--steps", "2", "--resume", "--lora-rank", "3"))

# -----------------------------------------------------------------------------
# The full folder from base + delta


def test_merged_folder_computes_what_the_trained_adapters_do(run3, base, tmp_path):
    """base + delta, merged and saved as a llava-hf folder, gives the logits of the model with its
    adapters (float32 rounding apart) and loads like any checkpoint."""
    out, _ = run3
    model, tokenizer = smol.build(base, 0, 2, 32.0, train.init_weights)
    trained = load_file(out / "checkpoint" / "state.safetensors")
    with torch.no_grad():
        for key, p in train.trained_parameters(model).items():
            p.copy_(trained["model/" + key])
    assert cli(["fetch", "feather-smol", "--delta", str(out), "--out", str(tmp_path / "full"),
                "--cache", str(base.parent)]) == 0
    merged, processor = fm.load_pretrained(tmp_path / "full")
    inputs = processor(fm.synthetic.example("val", 1, 0).scene.image(), "where is the red square?")
    with torch.no_grad():
        expected, got = model.eval()(inputs).logits, merged(inputs).logits
    diff = (expected - got).abs().max().item()
    assert diff < 1e-4, f"max difference {diff}"
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == [
        "config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json"]


def test_merge_refuses_a_delta_made_on_another_base(run3, tmp_path, capsys):
    """One line naming both hashes, and no folder written."""
    out, _ = run3
    other = write_base(tmp_path / "cache" / "smollm2")
    (other / "source.json").write_text(json.dumps({"file": "x.gguf", "sha256": "cd" * 32}))
    assert cli(["fetch", "feather-smol", "--delta", str(out), "--out", str(tmp_path / "full"),
                "--cache", str(tmp_path / "cache")]) == 2
    assert capsys.readouterr().err == (f"feather-mini fetch: error: {out} was trained on a base of sha256 {'ab' * 32}, "
                                       f"but {other} was made from {'cd' * 32}\n")
    assert not (tmp_path / "full").exists()


def test_feather_smol_by_name_says_which_fetch_to_run(tmp_path, monkeypatch):
    """load_pretrained("feather-smol") before it is built names both fetch commands."""
    monkeypatch.setenv("FEATHER_MINI_CACHE", str(tmp_path))
    with raises(FileNotFoundError, f"feather-smol is not built in {tmp_path}: run `python -m feather_mini fetch "
                                   "smollm2`, then `python -m feather_mini fetch feather-smol`"):
        fm.load_pretrained("feather-smol")


def test_loading_a_delta_folder_says_how_to_build_it(run3):
    out, _ = run3
    with raises(CheckpointError, f"{out} holds a delta on smollm2 (delta.safetensors), not full weights: build "
                                 f"them with `python -m feather_mini fetch feather-smol --delta {out} --out DIR`"):
        fm.load_pretrained(out)
