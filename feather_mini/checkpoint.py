"""Checkpoint folders: reading and writing them, in one place.

- Where models live: the shipped ones (weights/, or inside the installed package), the cache
  that `python -m feather_mini fetch` fills, and model names (feather-tiny, feather-576,
  feather-smol) that stand for those folders.
- config.json -> LlavaConfig, with the quirks of the versions of transformers that wrote it.
- Weights: the key layouts transformers has written (all rewritten to llava-hf's), one file or
  shards, and the strict loader: every tensor the config implies, with its shape, finite, and
  nothing else. A Llama text checkpoint (what `fetch smollm2` writes) is read strictly too.
- Writing: save_pretrained's llava-hf folder, which both this loader and transformers read.
- Training checkpoints: the trained tensors and AdamW's state in one safetensors file, the
  step and settings in state.json, so that --resume continues a run exactly.
Never a pickle: weights are safetensors, everything else JSON.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, fields
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from .model import LlamaForCausalLM, LlavaConfig, LlavaForConditionalGeneration, TextConfig, VisionConfig, is_int
from .processing import CLIP_MEAN, CLIP_STD, Processor, json_object, read_json


class CheckpointError(ValueError):
    """A checkpoint folder or file that does not match the model its config.json describes."""

# -----------------------------------------------------------------------------
# Where models live


def shipped_weights(name: str = "feather-tiny") -> Path:
    """A model shipped in weights/: inside the installed package (pyproject maps weights/ to
    feather_mini/weights), or in the checkout beside it (an editable install, the tests)."""
    here = Path(__file__).resolve().parent
    installed, checkout = here / "weights" / name, here.parent / "weights" / name
    return installed if installed.is_dir() else checkout


SHIPPED_WEIGHTS = shipped_weights()  # feather-tiny (144 visual tokens): eval's, heatmap's and the tests' default
WEIGHTS_576 = shipped_weights("feather-576")  # LLaVA-1.5's 576-token layout: the demo's default
FEATHER_SMOL = "feather-smol"  # built in the cache by `fetch feather-smol`, from weights/feather-smol's delta


def cache_dir(flag: str | None = None) -> Path:
    """Where fetched models live: --cache, else $FEATHER_MINI_CACHE, else $XDG_CACHE_HOME/feather_mini,
    else ~/.cache/feather_mini (the XDG default; a relative XDG_CACHE_HOME is invalid and ignored)."""
    if flag:
        return Path(flag).expanduser()
    if os.environ.get("FEATHER_MINI_CACHE"):
        return Path(os.environ["FEATHER_MINI_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache") / "feather_mini"


def model_folder(path: str | Path) -> Path:
    """A checkpoint folder, or a model's name: feather-tiny and feather-576 (shipped), feather-smol
    (built from its shipped delta and the fetched SmolLM2 by `fetch`). A folder of that name wins."""
    if Path(path).exists() or str(path) not in ("feather-tiny", "feather-576", FEATHER_SMOL):
        return Path(path)
    if str(path) != FEATHER_SMOL:
        return shipped_weights(str(path))
    folder = cache_dir() / FEATHER_SMOL
    if not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"feather-smol is not built in {folder.parent}: run `python -m feather_mini fetch "
                                "smollm2`, then `python -m feather_mini fetch feather-smol`")
    return folder

# -----------------------------------------------------------------------------
# config.json


def read_config(path: str | Path) -> LlavaConfig:
    path = Path(path)
    return config_from_dict(read_json(path), source=str(path))


def config_from_dict(raw: dict, source: str = "config") -> LlavaConfig:
    """A llava-hf config.json dict -> LlavaConfig; errors are prefixed with `source`."""
    try:
        return _config_from_dict(raw)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{source}: {e}") from None


def _config_from_dict(raw: dict) -> LlavaConfig:
    raw = json_object(raw, "the config")
    # A missing or null section means the defaults; anything else must be an object.
    text, vision = ({} if raw.get(k) is None else json_object(raw[k], k) for k in ("text_config", "vision_config"))
    for where, d, expected in [("model_type", raw, "llava"), ("text_config.model_type", text, "llama"),
                               ("vision_config.model_type", vision, "clip_vision_model")]:
        if d.get("model_type", expected) != expected:
            raise ValueError(f"{where} is {d['model_type']!r}; this file implements {expected!r}")
    text = dict(text)
    # transformers 5 writes rope_parameters; earlier versions rope_theta and rope_scaling.
    key = "rope_parameters" if text.get("rope_parameters") else "rope_scaling"
    rope = json_object(text.get(key) or {}, f"text_config.{key}")
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ValueError(f"text_config RoPE type {rope_type!r} is not supported "
                         "(only the default, unscaled RoPE of LLaVA-1.5)")
    if "rope_theta" in rope:
        text["rope_theta"] = rope["rope_theta"]
    top = _known_fields(LlavaConfig, raw)
    if "image_token_id" in raw and "image_token_index" not in raw:
        top["image_token_index"] = raw["image_token_id"]
    # Old llava-hf configs stored the tie flag inside text_config.
    top["tie_word_embeddings"] = raw.get("tie_word_embeddings") or text.get("tie_word_embeddings") or False
    return LlavaConfig(**top, vision_config=_section(VisionConfig, "vision_config", vision),
                       text_config=_section(TextConfig, "text_config", text))


def _known_fields(cls, raw: dict) -> dict:
    """The entries of a config.json dict that `cls` declares (model_type, dtype... are ignored)."""
    names = {f.name for f in fields(cls)} - {"vision_config", "text_config"}
    return {k: v for k, v in raw.items() if k in names}


def _section(cls, name: str, raw: dict):
    """cls built from config.json's `name` section; its errors name the key as name.key."""
    try:
        return cls(**_known_fields(cls, raw))
    except ValueError as e:
        raise ValueError(f"{name}.{e}") from None


def text_config_from_dict(raw, source: str) -> tuple[TextConfig, bool]:
    """A Llama text checkpoint's config.json dict -> (TextConfig, whether the embeddings are tied)."""
    raw = json_object(raw, source)
    if raw.get("model_type") != "llama":
        raise CheckpointError(f"{source}: model_type is {raw.get('model_type')!r}; a Llama text checkpoint "
                              "says 'llama'")
    try:
        return TextConfig(**_known_fields(TextConfig, raw)), raw.get("tie_word_embeddings") is True
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{source}: {e}") from None

# -----------------------------------------------------------------------------
# Device and dtype


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None/'cpu' -> CPU; 'auto' -> CUDA, else MPS, else CPU; 'cuda'/'mps' only where available."""
    if device is None:
        return torch.device("cpu")
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device {str(device)!r} is not a torch device ({str(e).splitlines()[0]})") from None
    if device.type not in ("cpu", "cuda", "mps"):  # meta, xpu, hpu...: nothing here is tested on them
        raise ValueError(f"device {str(device)!r} is not supported; expected 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto'")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested but CUDA is not available on this machine")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device {str(device)!r} requested but this machine has {torch.cuda.device_count()} GPU(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(device)!r} requested but MPS is not available on this machine")
    return device


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """None -> float32 on CPU, float16 on CUDA and MPS."""
    if dtype is None:
        return torch.float32 if device.type == "cpu" else torch.float16
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in _DTYPES:
        return _DTYPES[dtype]
    raise ValueError(f"dtype {dtype!r} is not one of {sorted(_DTYPES)}")

# -----------------------------------------------------------------------------
# Weights: key layouts, files, the strict loader


# Prefix rewrites from the layouts transformers has written to ours (= llava-hf's).
# 4.52+ in memory and on disk: model.language_model.*, model.vision_tower.*, lm_head.*;
# 5.x on disk: language_model.model.* but vision_tower.* without CLIP's vision_model level.
_PREFIXES = [
    ("model.language_model.", "language_model.model."),
    ("model.vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("lm_head.", "language_model.lm_head."),
]
# Buffers some checkpoints carry; this file recomputes them.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq", "embeddings.position_ids")


def canonical_key(key: str) -> str | None:
    """A checkpoint key in any of the three layouts -> our module's key; None for a buffer we recompute."""
    if key.endswith(_IGNORED_SUFFIXES):
        return None
    for old, new in _PREFIXES:
        if key.startswith(old):
            key = new + key[len(old):]
            break
    if key.startswith("vision_tower.") and not key.startswith("vision_tower.vision_model."):
        key = "vision_tower.vision_model." + key[len("vision_tower."):]
    return key


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a checkpoint folder: one model.safetensors or the shards its index lists."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        raw = read_json(index)
        weight_map = raw.get("weight_map") if isinstance(raw, dict) else None
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: not a safetensors index (a JSON object with a 'weight_map' object)")
        for key, shard in weight_map.items():
            # Lexical check, not resolve(): a Hugging Face cache's files are symlinks into ../../blobs.
            if not isinstance(shard, str) or not shard or Path(shard).is_absolute() or ".." in Path(shard).parts:
                raise CheckpointError(f"{index}: weight_map entry '{key}' -> {shard!r} is not a file name "
                                      f"inside {folder}")
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise CheckpointError(f"{index} lists shard {missing[0]}, which is not in {folder}")
        return [folder / s for s in shards]
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    if (folder / "delta.safetensors").is_file():  # lora.DELTA_FILE: train's smol preset writes one
        raise CheckpointError(f"{folder} holds a delta on smollm2 (delta.safetensors), not full weights: build them "
                              f"with `python -m feather_mini fetch feather-smol --delta {folder} --out DIR`")
    pickles = sorted(p.name for p in folder.glob("*.bin"))
    hint = (f" (found {', '.join(pickles)}: pickled weights are never loaded; convert them to safetensors)"
            if pickles else "")
    raise CheckpointError(f"{folder}: no weights: expected model.safetensors or model.safetensors.index.json{hint}")


def load_model(path: str | Path, device=None, dtype=None) -> LlavaForConditionalGeneration:
    """Build the model config.json describes and fill it from safetensors, strictly.

    Every tensor must be present with the shape the config implies, as finite floats, and
    nothing else may be (apart from recomputed buffers such as rotary_emb.inv_freq); a tied
    lm_head may be absent. Tensors go straight to `device` in `dtype`: the model is built on
    the meta device, so a 7B checkpoint needs its own size in memory, not twice that.
    """
    folder = model_folder(path)
    if folder.is_file():
        raise NotADirectoryError(f"{folder} is a file; the weights are a checkpoint folder (config.json, safetensors)")
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint folder not found: {folder}")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: no config.json (a llava-hf style checkpoint folder needs one)")
    config = read_config(folder / "config.json")
    files = weight_files(folder)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    try:
        with torch.device("meta"):
            model = LlavaForConditionalGeneration(config)
    except (RuntimeError, TypeError) as e:  # a tensor of over 2**63 elements: torch cannot even describe it
        raise CheckpointError(f"{folder / 'config.json'}: sizes too large for torch "
                              f"({str(e).splitlines()[0]})") from None
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    state, origin = {}, {}
    for file in files:
        if not os.access(file, os.R_OK):  # safetensors would report "No such file or directory"
            raise PermissionError(f"{file}: permission denied (cannot read the weights)")
        try:
            with safe_open(file, framework="pt", device="cpu") as f:
                for raw_key in f.keys():
                    key = canonical_key(raw_key)
                    if key is None:
                        continue
                    shape = tuple(f.get_slice(raw_key).get_shape())
                    if key not in expected:
                        raise CheckpointError(f"{file}: unexpected tensor '{raw_key}' {shape}: the model built "
                                              "from config.json has no such parameter")
                    if key in state:
                        raise CheckpointError(f"{file}: tensor '{raw_key}' is a second copy of "
                                              f"'{key}', already read from {origin[key]}")
                    if shape != expected[key]:
                        raise CheckpointError(f"{file}: tensor '{raw_key}' has shape {shape}, but config.json "
                                              f"implies {expected[key]}")
                    tensor = f.get_tensor(raw_key)
                    if not tensor.is_floating_point():  # every parameter of this model is
                        raise CheckpointError(f"{file}: tensor '{raw_key}' is stored as {tensor.dtype}; "
                                              "the model's weights are floats")
                    state[key] = tensor.to(device, dtype)
                    # NaN or inf in the file, or a value past float16's 65504: the model would answer nonsense.
                    if not torch.isfinite(state[key]).all():
                        raise CheckpointError(f"{file}: tensor '{raw_key}' holds NaN or inf (as {dtype})")
                    origin[key] = file
        except SafetensorError as e:
            raise CheckpointError(f"{file}: not a readable safetensors file ({e})") from None
    tied = "language_model.lm_head.weight"
    if config.tie_word_embeddings and tied not in state and "language_model.model.embed_tokens.weight" in state:
        state[tied] = state["language_model.model.embed_tokens.weight"]
    missing = [k for k in expected if k not in state]
    if missing:
        names = ", ".join(f"'{k}' {expected[k]}" for k in missing[:3])
        raise CheckpointError(f"{folder}: {len(missing)} tensor(s) missing from {', '.join(f.name for f in files)}: "
                              f"{names}{' ...' if len(missing) > 3 else ''}")
    model.load_state_dict(state, strict=True, assign=True)
    if config.tie_word_embeddings:  # assign=True replaced both Parameters; share one again
        model.language_model.lm_head.weight = model.language_model.model.embed_tokens.weight
    return model.eval().requires_grad_(False)


def load_pretrained(path: str | Path, device=None, dtype=None):
    """(model, processor) from a folder with config.json, safetensors weights and tokenizer.json.

    device: None/'cpu' (default), 'cuda', 'mps' or 'auto'; dtype: None (float32 on CPU,
    float16 on GPUs), a torch dtype or its name. The model is in eval mode with gradients off.
    """
    model = load_model(path, device, dtype)
    return model, Processor.from_pretrained(model_folder(path), model.config)


def read_tensors(file: Path) -> dict[str, torch.Tensor]:
    """Every tensor of one safetensors file; an unreadable file is one error naming it."""
    if not file.is_file():
        raise FileNotFoundError(f"{file} does not exist")
    try:
        return load_file(str(file))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{file}: not a readable safetensors file ({e})") from None


def read_text_checkpoint(folder: str | Path) -> tuple[TextConfig, dict[str, torch.Tensor], bool]:
    """(config, float32 tensors under HF Llama keys 'model.*', tied) of a Llama text checkpoint folder,
    strictly: every tensor present with the shape config.json implies, nothing extra (a tied lm_head
    may be absent)."""
    folder = Path(folder)
    config, tied = text_config_from_dict(read_json(folder / "config.json"), str(folder / "config.json"))
    expected = text_shapes(config, tied)
    file = folder / "model.safetensors"
    state = {k: v.float() for k, v in read_tensors(file).items()}
    wrong = first_mismatch(expected, state, "the model in config.json")
    if wrong:
        raise CheckpointError(f"{file}: {wrong}")
    return config, state, tied


def text_shapes(config: TextConfig, tied: bool) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape in a Llama text checkpoint of `config`, from model.py's own module (built on
    the meta device: no memory, no init); a tied lm_head is the embedding, so not listed."""
    with torch.device("meta"):
        model = LlamaForCausalLM(config, tied)
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}


def first_mismatch(expected: dict[str, tuple], tensors: dict[str, torch.Tensor], whose: str) -> str | None:
    """The first tensor (by name) missing from `tensors`, extra, or of another shape than `expected`, in words."""
    for key in sorted(expected.keys() | tensors.keys()):
        found = tuple(tensors[key].shape) if key in tensors else None
        if found != expected.get(key):
            what = ("is missing" if found is None else f"is not a tensor of {whose}" if key not in expected
                    else f"has shape {found}; {whose} needs {expected[key]}")
            return f"tensor {key} {what}"
    return None

# -----------------------------------------------------------------------------
# Writing a llava-hf folder


def write_atomically(path: Path, write) -> None:
    """write(tmp) beside `path`, flushed to disk, then renamed over it: a reader, or a kill at any
    moment, finds the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, value) -> None:
    write_atomically(path, lambda tmp: tmp.write_text(json.dumps(value, indent=2) + "\n"))


def save_pretrained(model: LlavaForConditionalGeneration, tokenizer: Tokenizer, folder: Path) -> None:
    """A llava-hf checkpoint folder: config.json, model.safetensors (llava-hf key layout),
    tokenizer.json and preprocessor_config.json, each file replaced whole."""
    folder.mkdir(parents=True, exist_ok=True)
    save_config_files(model.config, tokenizer, folder)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    write_atomically(folder / "model.safetensors", lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))


def save_config_files(cfg: LlavaConfig, tokenizer: Tokenizer, folder: Path) -> None:
    """config.json, tokenizer.json and preprocessor_config.json: a checkpoint folder but its weights."""
    text, vision = asdict(cfg.text_config), asdict(cfg.vision_config)
    config = {"architectures": ["LlavaForConditionalGeneration"], "model_type": "llava",
              **{k: v for k, v in asdict(cfg).items() if k not in ("text_config", "vision_config")},
              "text_config": {"model_type": "llama", **text}, "vision_config": {"model_type": "clip_vision_model", **vision},
              "torch_dtype": "float32"}
    write_json(folder / "config.json", config)
    write_atomically(folder / "tokenizer.json", lambda tmp: tokenizer.save(str(tmp)))
    S = cfg.vision_config.image_size
    pre = {"image_processor_type": "CLIPImageProcessor", "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD),
           "size": {"shortest_edge": S}, "crop_size": {"height": S, "width": S}, "do_resize": True,
           "do_center_crop": True, "do_normalize": True, "do_rescale": True, "do_convert_rgb": True}
    write_json(folder / "preprocessor_config.json", pre)

# -----------------------------------------------------------------------------
# Training checkpoints: the trained tensors, AdamW's state, the step and the settings in ONE
# safetensors file (its metadata holds the step, the settings and a sha256 of all of it), replaced
# whole, so a kill at any moment leaves the last checkpoint or the new one. state.json repeats the
# metadata for people to read; an edited one is refused, a missing one is not needed.


def trained_parameters(model) -> dict[str, torch.Tensor]:
    """The parameters training changes, by name: all of them, but for the smol preset's frozen base
    (then the projector and the LoRA adapters), so a checkpoint holds what it needs and no more."""
    return {k: p for k, p in model.named_parameters() if p.requires_grad}


def checkpoint_digest(tensors: dict[str, torch.Tensor], meta_text: str) -> str:
    """sha256 over the metadata and every tensor's name, dtype, shape and bytes."""
    h = hashlib.sha256(meta_text.encode())
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def save_checkpoint(folder: Path, model, optimizer, step: int, args: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"model/{k}": v.detach().contiguous() for k, v in trained_parameters(model).items()}
    for i, state in optimizer.state_dict()["state"].items():
        for name, value in state.items():
            tensors[f"optim/{i}/{name}"] = torch.as_tensor(value).contiguous()
    meta = {"step": step, "args": args}
    text = json.dumps(meta, sort_keys=True)
    digest = checkpoint_digest(tensors, text)
    write_atomically(folder / "state.safetensors", lambda tmp: save_file(
        tensors, str(tmp), metadata={"format": "pt", "meta": text, "sha256": digest}))
    write_json(folder / "state.json", {**meta, "sha256": digest})


def holds_checkpoint(folder: Path) -> bool:
    return (folder / "state.safetensors").is_file() or (folder / "state.json").is_file()


def checkpoint_step(folder: Path) -> int | None:
    """The last step a checkpoint completed (0-based), from its metadata alone; None when unreadable."""
    try:
        with safe_open(folder / "state.safetensors", framework="pt") as f:
            return json.loads((f.metadata() or {})["meta"])["step"]
    except Exception:  # noqa: BLE001 (any damage: the caller only words a message with it)
        return None


ADDED_SETTINGS = {"lookalike": 0.0, "init_from": None}  # settings added after the first checkpoints were written


def read_checkpoint(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """({"step", "args"}, tensors) of a training checkpoint, checked before anything is trusted:
    readable, its checksum right, the step and settings well-formed, state.json unedited, every
    tensor finite. (Checkpoints written before the metadata moved into the safetensors file are
    read from state.json, unchecked.)"""
    meta_file, tensor_file = folder / "state.json", folder / "state.safetensors"
    if not tensor_file.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint in {folder} (expected state.json and state.safetensors)")
    tensors = read_tensors(tensor_file)
    with safe_open(tensor_file, framework="pt") as f:
        saved = f.metadata() or {}
    legacy = "meta" not in saved
    if legacy:
        if not meta_file.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint in {folder} (expected state.json and state.safetensors)")
        meta = json_object(read_json(meta_file), str(meta_file))
    elif checkpoint_digest(tensors, saved["meta"]) != saved.get("sha256"):
        raise CheckpointError(f"{tensor_file} is damaged: its contents do not match the checksum saved with "
                              f"them; train afresh into another --out (or delete {folder})")
    else:
        meta = json.loads(saved["meta"])
    where = meta_file if legacy else tensor_file
    step, args = meta.get("step"), meta.get("args")
    if not isinstance(args, dict) or not is_int(args.get("steps")) or args["steps"] < 1:
        raise CheckpointError(f"{where}: 'args' must be an object of the run's settings, with 'steps' an int >= 1")
    if not is_int(step) or not 0 <= step < args["steps"]:
        raise CheckpointError(f"{where}: step {step!r} must be an int from 0 to the run's steps - 1 "
                              f"({args['steps'] - 1})")
    if not legacy and meta_file.is_file():  # the readable copy must say what the checkpoint says
        try:
            differs = mirror_difference(read_json(meta_file), meta)
        except ValueError as e:
            raise CheckpointError(f"{e}; delete it to resume from {tensor_file}, which holds the checkpoint") from None
        if differs:
            raise CheckpointError(f"{meta_file} does not match {tensor_file}, which holds the checkpoint ({differs}): "
                                  f"was it edited? Delete {meta_file} to resume from {tensor_file}")
    bad = next((k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:
        raise CheckpointError(f"{tensor_file}: tensor '{bad}' holds NaN or inf; the run diverged before this "
                              "checkpoint, or the file is damaged")
    return {"step": step, "args": args}, tensors


def mirror_difference(mirror, meta: dict) -> str | None:
    """What state.json says otherwise than the checkpoint's own metadata, as "step 9 there, 19 here"."""
    if not isinstance(mirror, dict) or not isinstance(mirror.get("args"), dict):
        return "it is not an object with 'step' and 'args'"
    if mirror.get("step") != meta["step"]:
        return f"step {mirror.get('step')!r} there, {meta['step']} here"
    for key in sorted(mirror["args"].keys() | meta["args"].keys()):
        if mirror["args"].get(key) != meta["args"].get(key):
            return f"{key} {mirror['args'].get(key)!r} there, {meta['args'].get(key)!r} here"
    return None


def load_checkpoint(folder: Path, model, optimizer, args: dict) -> int:
    """Restore model and optimizer; return the last completed step. Refuses a checkpoint of
    another configuration (naming the setting), since resuming it would mix two runs, and one
    whose tensors are not this model's and AdamW's (naming the first that is missing or wrong)."""
    meta, tensors = read_checkpoint(folder)
    for key in (k for k in args if k != "steps"):  # every setting but --steps, which is checked below
        saved = meta["args"].get(key, ADDED_SETTINGS.get(key))  # checkpoints older than a setting: its default
        if saved != args.get(key):
            raise ValueError(f"--resume: {folder} was trained with {key}={saved!r}, "
                             f"this run asks for {key}={args.get(key)!r}")
    # --steps may change only while every step done so far had a learning rate that does not
    # depend on it: in the warm-up, or before the decay of both the old and the new --steps.
    old_steps, done = meta["args"]["steps"], meta["step"] + 1
    if args["steps"] != old_steps and done > max(args["warmup"], int(0.8 * min(old_steps, args["steps"]))):
        raise ValueError(f"--resume: {folder} is at step {done}, past the start of the learning-rate decay of "
                         f"--steps {min(old_steps, args['steps'])}; resume it with --steps {old_steps}")
    file = folder / "state.safetensors"
    trained = trained_parameters(model)
    params = [p for group in optimizer.param_groups for p in group["params"]]  # AdamW's numbering of its state
    expected = {f"model/{k}": tuple(p.shape) for k, p in trained.items()}
    # AdamW keeps (step, exp_avg, exp_avg_sq) for each parameter that has had a gradient: all three or none.
    has_state = {key.split("/")[1] for key in tensors if key.startswith("optim/")}
    expected.update({f"optim/{i}/{name}": shape for i, p in enumerate(params) if str(i) in has_state
                     for name, shape in (("step", ()), ("exp_avg", tuple(p.shape)), ("exp_avg_sq", tuple(p.shape)))})
    wrong = first_mismatch(expected, tensors, "this model or its optimizer")
    if wrong:
        raise CheckpointError(f"--resume: {file}: {wrong}")
    if not has_state:
        raise CheckpointError(f"--resume: {file} holds no optimizer state (AdamW's moments): resuming would start "
                              "a different run")
    with torch.no_grad():
        for key, p in trained.items():
            p.copy_(tensors[f"model/{key}"])
    state = optimizer.state_dict()
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, i, name = key.split("/")
            state["state"].setdefault(int(i), {})[name] = value
    optimizer.load_state_dict(state)
    return meta["step"]
