"""Shared fixtures: a word-level tokenizer built in process, and tiny random LLaVA checkpoints
saved by transformers (the independent reference). Nothing is downloaded."""
import argparse
import json
import os
import re
from pathlib import Path

# MKL may use fewer threads than asked when the machine is busy ("dynamic"), which changes the order of
# a product's sums. That is the likely cause of the one CI run in which the float32 authors' reference
# differed by 8e-5 where it is 0.0 in every other run (not reproduced in 20 reruns, loaded or not).
# A fixed thread count removes it; set before torch loads MKL.
os.environ.setdefault("MKL_DYNAMIC", "FALSE")

import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors import safe_open
from safetensors.torch import save_file
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, processors

from feather_mini import checkpoint, train  # noqa: E402

VOCAB = 64  # text vocabulary of the tiny models
IMAGE_ID = 63  # the <image> placeholder's id, last in the vocabulary as in llava-hf (32000 of 32064)
WORDS = ["<unk>", "<s>", "</s>", "USER:", "ASSISTANT:", "What", "is", "in", "the", "picture?", "a", "red", "square"]


def feather_smol_missing() -> str | None:
    """Why feather-smol cannot be loaded here (the loader's own message, naming the two fetch commands
    that build it; CI runs them), or None."""
    try:
        checkpoint.model_folder(checkpoint.FEATHER_SMOL)
    except FileNotFoundError as e:
        return str(e)
    return None


FEATHER_SMOL_MISSING = feather_smol_missing()
needs_feather_smol = pytest.mark.skipif(FEATHER_SMOL_MISSING is not None, reason=FEATHER_SMOL_MISSING or "")


def raises(exc, message):
    """pytest.raises matching the whole message literally."""
    return pytest.raises(exc, match="^" + re.escape(message) + "$")


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """train() sets torch's thread count for the whole process; put it back for the other tests."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def train_args(out, *options, preset="test", batch=2, turns=2):
    """train's command line: `batch` chats of <= `turns` questions per step, no validation, one thread.
    --warmup 3 keeps steps 0..2 in the warm-up, where lr = 5e-4 * (step + 1) / 3 whatever --steps is."""
    p = argparse.ArgumentParser()
    train.add_arguments(p)
    return p.parse_args(["--out", str(out), "--preset", preset, "--batch", str(batch), "--turns", str(turns),
                         "--warmup", "3", "--val", "0", "--threads", "1", *options])


def train_keeping_threads(args) -> list[float]:
    """train.train(args), then torch's thread count put back: for module-scoped fixtures, which
    keep_torch_threads (per test) does not cover."""
    threads = torch.get_num_threads()
    try:
        return train.train(args)
    finally:
        torch.set_num_threads(threads)


def make_tokenizer() -> Tokenizer:
    """Whitespace words; ids beyond WORDS are fillers w13..w62 so any generated id decodes."""
    vocab = {w: i for i, w in enumerate(WORDS)}
    vocab.update({f"w{i}": i for i in range(len(WORDS), IMAGE_ID)})
    vocab["<image>"] = IMAGE_ID
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens([AddedToken(t, special=True) for t in ("<unk>", "<s>", "</s>", "<image>")])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tok


def tiny_hf_llava(kv_heads: int, tied: bool, seed: int = 0, image_size: int = 32, layers: int = 4,
                  max_positions: int = 128, **llava_options):
    """A random transformers LlavaForConditionalGeneration: 2-layer CLIP with 8 px patches (at
    32 px: 4x4 = 16 visual tokens), Llama of width 64 (4 layers). `llava_options` go to LlavaConfig."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=image_size, patch_size=8, projection_dim=16)
    text = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
                       num_key_value_heads=kv_heads, vocab_size=VOCAB, max_position_embeddings=max_positions,
                       tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=IMAGE_ID,
                         tie_word_embeddings=tied, **llava_options)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    # transformers initializes with std 0.02, which leaves logits so flat that greedy
    # choices hinge on rounding; wider weights give decisive, still finite, logits.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.15)
            elif "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.1)
    return model


def save_checkpoint(model, folder: Path) -> Path:
    """save_pretrained as transformers writes it, plus our tokenizer.json."""
    model.save_pretrained(folder)
    make_tokenizer().save(str(folder / "tokenizer.json"))
    return folder


def read_tensors(file: Path) -> dict:
    with safe_open(file, framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def write_tensors(tensors: dict, file: Path) -> None:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(file))


@pytest.fixture(scope="session")
def hf_gqa():
    """Grouped-query attention (2 key/value heads for 4 query heads), untied lm_head."""
    return tiny_hf_llava(kv_heads=2, tied=False)


@pytest.fixture(scope="session")
def hf_tied():
    """Plain multi-head attention, lm_head tied to the token embeddings."""
    return tiny_hf_llava(kv_heads=4, tied=True, seed=1)


@pytest.fixture(scope="session")
def hf_grid24():
    """LLaVA-1.5's 24x24 grid (192 px, 8 px patches: 576 visual tokens), 8 decoder layers, GQA."""
    return tiny_hf_llava(kv_heads=2, tied=False, seed=2, image_size=192, layers=8, max_positions=1024)


@pytest.fixture(scope="session")
def grid24_dir(hf_grid24, tmp_path_factory) -> Path:
    return save_checkpoint(hf_grid24, tmp_path_factory.mktemp("grid24"))


@pytest.fixture(scope="session")
def gqa_dir(hf_gqa, tmp_path_factory) -> Path:
    return save_checkpoint(hf_gqa, tmp_path_factory.mktemp("gqa"))


@pytest.fixture()
def ckpt_copy(gqa_dir, tmp_path) -> Path:
    """A private copy of the GQA checkpoint folder, for tests that damage it."""
    for f in gqa_dir.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    return tmp_path


def config_of(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())
