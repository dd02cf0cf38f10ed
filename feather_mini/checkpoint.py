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

import json
import os
from dataclasses import asdict, fields
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from .model import LlamaForCausalLM, LlavaConfig, LlavaForConditionalGeneration, TextConfig, VisionConfig
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
        raise CheckpointError(f"{source}: model_type is {raw.get('model_type')!r}; a Llama text checkpoint says 'llama'")
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
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in LlamaForCausalLM(config, tied).state_dict().items()
                    if not (tied and k == "lm_head.weight")}
    file = folder / "model.safetensors"
    state = {k: v.float() for k, v in read_tensors(file).items()}
    for key in sorted(expected.keys() | state.keys()):
        found = tuple(state[key].shape) if key in state else None
        if found != expected.get(key):
            what = ("is missing" if found is None else "is not a parameter of the model config.json describes"
                    if key not in expected else f"has shape {found}; config.json implies {expected[key]}")
            raise CheckpointError(f"{file}: tensor {key} {what}")
    return config, state, tied

# -----------------------------------------------------------------------------
# Writing a llava-hf folder


def save_pretrained(model: LlavaForConditionalGeneration, tokenizer: Tokenizer, folder: Path) -> None:
    """A llava-hf checkpoint folder: config.json, model.safetensors (llava-hf key layout),
    tokenizer.json and preprocessor_config.json."""
    folder.mkdir(parents=True, exist_ok=True)
    save_config_files(model.config, tokenizer, folder)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


def save_config_files(cfg: LlavaConfig, tokenizer: Tokenizer, folder: Path) -> None:
    """config.json, tokenizer.json and preprocessor_config.json: a checkpoint folder but its weights."""
    text, vision = asdict(cfg.text_config), asdict(cfg.vision_config)
    config = {"architectures": ["LlavaForConditionalGeneration"], "model_type": "llava",
              **{k: v for k, v in asdict(cfg).items() if k not in ("text_config", "vision_config")},
              "text_config": {"model_type": "llama", **text}, "vision_config": {"model_type": "clip_vision_model", **vision},
              "torch_dtype": "float32"}
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tokenizer.save(str(folder / "tokenizer.json"))
    S = cfg.vision_config.image_size
    pre = {"image_processor_type": "CLIPImageProcessor", "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD),
           "size": {"shortest_edge": S}, "crop_size": {"height": S, "width": S}, "do_resize": True,
           "do_center_crop": True, "do_normalize": True, "do_rescale": True, "do_convert_rgb": True}
    (folder / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n")

# -----------------------------------------------------------------------------
# Training checkpoints: the trained tensors and AdamW's state in one safetensors file, the rest in JSON


def trained_parameters(model) -> dict[str, torch.Tensor]:
    """The parameters training changes, by name: all of them, but for the smol preset's frozen base
    (then the projector and the LoRA adapters), so a checkpoint holds what it needs and no more."""
    return {k: p for k, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(folder: Path, model, optimizer, step: int, args: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"model/{k}": v.detach().contiguous() for k, v in trained_parameters(model).items()}
    for i, state in optimizer.state_dict()["state"].items():
        for name, value in state.items():
            tensors[f"optim/{i}/{name}"] = torch.as_tensor(value).contiguous()
    tmp = folder / "state.safetensors.tmp"
    save_file(tensors, str(tmp))
    tmp.replace(folder / "state.safetensors")  # never leave a half-written checkpoint behind
    (folder / "state.json").write_text(json.dumps({"step": step, "args": args}, indent=2) + "\n")


ADDED_SETTINGS = {"lookalike": 0.0, "init_from": None}  # settings added after the first checkpoints were written


def load_checkpoint(folder: Path, model, optimizer, args: dict) -> int:
    """Restore model and optimizer; return the last completed step. Refuses a checkpoint of
    another configuration (naming the setting), since resuming it would mix two runs."""
    meta_file, tensor_file = folder / "state.json", folder / "state.safetensors"
    if not meta_file.is_file() or not tensor_file.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint in {folder} (expected state.json and state.safetensors)")
    meta = json.loads(meta_file.read_text())
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
    tensors = load_file(str(tensor_file))
    trained = trained_parameters(model)
    saved = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    for key in sorted(set(trained) ^ set(saved)):
        where = "is missing from" if key in trained else "is not a trained tensor of this model, found in"
        raise ValueError(f"--resume: {key} {where} {tensor_file}")
    with torch.no_grad():
        for key, p in trained.items():
            p.copy_(saved[key])
    state = optimizer.state_dict()
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, i, name = key.split("/")
            state["state"].setdefault(int(i), {})[name] = value
    optimizer.load_state_dict(state)
    return meta["step"]
