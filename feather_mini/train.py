"""Train the tiny LLaVAs that ship in weights/, on synthetic scenes (synthetic.py); with
--preset smol, the LoRA delta of feather-smol on the pretrained SmolLM2 decoder (smol.py).

It trains the very classes of model.py, end to end, from scratch or (--init-from) from a
saved model, on multi-turn chats: each chat is one scene and a few different questions about
it (localization boxes, colour, count, existence), half the time closed by a caption that
lists every object with its box (a dense, LLaVA-pretraining-like signal that ties visual
tokens to positions). --lookalike adds scenes whose objects differ in one word only. The loss
is the next-token cross-entropy on answer tokens only.

Reproducible: the chats of step s come from random.Random(f"train:{seed}:{s}") and the
initial weights from torch.manual_seed(seed) (or the --init-from folder), so a run resumed
from a checkpoint continues exactly as an uninterrupted one. Checkpoints (model and AdamW
state) are safetensors, never pickles. The output folder is a llava-hf checkpoint that
load_pretrained reads unchanged: config.json, model.safetensors, tokenizer.json,
preprocessor_config.json.

    python -m feather_mini train --out runs/tiny --steps 12000      # logs a progress line
    python -m feather_mini train --out runs/tiny --steps 12000 --resume
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, processors

from . import cli, smol, synthetic
from .checkpoint import (cache_dir, checkpoint_step, holds_checkpoint, load_checkpoint, read_tensors, resolve_device, save_checkpoint, save_config_files,
                         save_pretrained, shipped_weights, trained_parameters)
from .model import LlavaConfig, LlavaForConditionalGeneration, TextConfig, VisionConfig
from .processing import Inputs, Processor

try:
    import fcntl  # the training lock
except ImportError:  # Windows
    fcntl = None

SPECIALS = ["<unk>", "<s>", "</s>"]
IMAGE_TOKEN = "<image>"

# -----------------------------------------------------------------------------
# The model and its tokenizer


MODEL_PRESETS = ("shipped", "576", "test", "smol")


def model_config(preset: str, vocab_size: int) -> LlavaConfig:
    """'shipped': feather-tiny (96 px, 12x12 grid, 8-layer decoder, 4 heads of 32, 2.5 M parameters);
    '576': feather-576, LLaVA-1.5's layout (the same 96 px scenes resized to 192 px, 8 px patches: a
    24x24 grid of 576 visual tokens; feather-tiny's decoder, 8 layers, 4 heads of 32, 2.6 M);
    'test': a very small one for the tests: widths of 32, but the shipped model's 12x12 grid and 8
    decoder layers, so that every preset's budgets and layers are those of the shipped model."""
    if preset == "shipped":
        vision = VisionConfig(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                              image_size=synthetic.IMAGE_SIZE, patch_size=8)
        text = TextConfig(vocab_size=vocab_size, hidden_size=128, intermediate_size=352, num_hidden_layers=8,
                          num_attention_heads=4, max_position_embeddings=512)
    elif preset == "576":
        # feather-tiny at twice the resolution, so that --init-from weights/feather-tiny reuses every
        # tensor as it was (its ViT's position embeddings resized by `grow`; one head of 128 would
        # split its attention otherwise): a run has to fit one session of this machine, which 16
        # layers, at twice the step time, did not (model card).
        vision = VisionConfig(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                              image_size=2 * synthetic.IMAGE_SIZE, patch_size=8)
        text = TextConfig(vocab_size=vocab_size, hidden_size=128, intermediate_size=352, num_hidden_layers=8,
                          num_attention_heads=4, max_position_embeddings=1024)
    elif preset == "test":
        vision = VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                              image_size=synthetic.IMAGE_SIZE, patch_size=8)
        text = TextConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=8,
                          num_attention_heads=2, max_position_embeddings=256)
    else:
        raise ValueError(f"unknown model preset {preset!r}; expected one of {', '.join(MODEL_PRESETS[:3])} "
                         "(smol: smol_config)")
    # Every ViT layer feeds the projector (-1): LLaVA's -2 would leave the last layer untrained.
    return LlavaConfig(vision_config=vision, text_config=text, image_token_index=vocab_size - 1,
                       vision_feature_layer=-1)


def make_tokenizer() -> Tokenizer:
    """Word level over synthetic.vocabulary(): ids 0-2 are <unk> <s> </s>, <image> is the last id
    (as in llava-hf), and encode() prepends <s> as Llama's tokenizer does."""
    words = SPECIALS + synthetic.vocabulary() + [IMAGE_TOKEN]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens([AddedToken(t, special=True) for t in SPECIALS + [IMAGE_TOKEN]])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tok


def init_weights(model: LlavaForConditionalGeneration, seed: int) -> None:
    """GPT-2 style: matrices N(0, 0.02), the projections that write into a residual stream
    scaled down by sqrt(2 * its depth), biases 0, norms 1. The ViT's position embeddings
    start as 2-D sine/cosine waves (MAE's), so that every patch knows its row and column from
    step 0; they are still trained."""
    torch.manual_seed(seed)
    cfg = model.config
    depth = {"vision_tower": cfg.vision_config.num_hidden_layers, "language_model": cfg.text_config.num_hidden_layers}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif "norm" in name or "layrnorm" in name:
                p.fill_(1.0)
            else:
                std = 0.02
                if name.endswith(("o_proj.weight", "down_proj.weight", "out_proj.weight", "fc2.weight")):
                    std /= math.sqrt(2 * depth[name.split(".")[0]])
                p.normal_(0.0, std)
        emb = model.vision_tower.vision_model.embeddings
        emb.position_embedding.weight[1:] = sincos_2d(cfg.vision_config.grid_side, cfg.vision_config.hidden_size)


def sincos_2d(side: int, dim: int) -> torch.Tensor:
    """(side * side, dim) in raster order: half the channels encode the row, half the column."""
    quarter = dim // 4
    freq = 1.0 / 10000 ** (torch.arange(quarter).float() / quarter)
    pos = torch.arange(side).float()[:, None] * freq  # (side, quarter)
    wave = torch.cat([pos.sin(), pos.cos()], dim=1)  # (side, dim/2)
    rows = wave[:, None].expand(side, side, -1)
    cols = wave[None, :].expand(side, side, -1)
    return torch.cat([rows, cols], dim=-1).reshape(side * side, dim)


# -----------------------------------------------------------------------------
# Data: one step's chats as padded tensors


def encode_chat(processor: Processor, chat: list[synthetic.Question], eos: int) -> tuple[list[int], list[int]]:
    """Token ids of a multi-turn LLaVA-1.5 chat and its labels (-100 except on answers and their eos).
    The first turn is exactly the processor's prompt, as at inference."""
    tok = processor.tokenizer
    ids, _ = processor.input_ids(chat[0].question)
    ids = ids[0].tolist()
    labels = [-100] * len(ids)
    for i, q in enumerate(chat):
        if i:
            prompt = tok.encode(f"USER: {q.question} ASSISTANT:", add_special_tokens=False).ids
            ids += prompt
            labels += [-100] * len(prompt)
        # " answer": a BPE tokenizer's word-initial tokens carry the space (a word-level one ignores it).
        answer = tok.encode(" " + q.answer, add_special_tokens=False).ids + [eos]
        ids += answer
        labels += answer
    return ids, labels


def objects_at(step: int, max_objects: int, curriculum: int) -> int:
    """The curriculum: scenes hold at most 1 object for the first `curriculum` steps, at most 2 for
    the next `curriculum`, and so on up to max_objects (0: no curriculum). With one object the
    model first learns to read colour, shape and position off the visual tokens; binding a
    question to one of several objects comes after."""
    return max_objects if curriculum == 0 else min(max_objects, 1 + step // curriculum)


def make_batch(processor: Processor, step: int, seed: int, batch: int, turns: int, max_objects: int,
               lookalike: float, eos: int) -> tuple[Inputs, torch.Tensor]:
    """(inputs, labels) for one step; right-padded, which a causal decoder never sees.
    eos: the id that ends each answer (text_config.eos_token_id: </s>, or SmolLM2's <|im_end|>)."""
    rng = random.Random(f"train:{seed}:{step}")
    pixels, rows = [], []
    for _ in range(batch):
        scene, chat = synthetic.training_chat(rng, turns, max_objects=max_objects, lookalike=lookalike)
        pixels.append(processor.pixel_values(scene.image()))
        rows.append(encode_chat(processor, chat, eos))
    T = max(len(ids) for ids, _ in rows)
    input_ids = torch.tensor([ids + [eos] * (T - len(ids)) for ids, _ in rows])
    labels = torch.tensor([lab + [-100] * (T - len(lab)) for _, lab in rows])
    _, start = processor.input_ids(chat[0].question)  # every chat opens with the same prompt head
    return Inputs(input_ids, torch.stack(pixels), start, processor.num_visual_tokens, processor.grid_shape), labels


def loss_on(model: LlavaForConditionalGeneration, inputs: Inputs, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the answer tokens of the batch, through the model's one
    forward (in bfloat16 autocast on CUDA)."""
    with torch.autocast("cuda", torch.bfloat16, enabled=model.device.type == "cuda"):
        return model(inputs, labels=labels).loss


def make_processor(tokenizer: Tokenizer, config: LlavaConfig) -> Processor:
    """The processor of a model being trained (a saved one reads its folder: Processor.from_pretrained)."""
    return Processor(tokenizer, config.vision_config.image_size, config.vision_config.patch_size,
                     config.image_token_index, config.num_visual_tokens)


def make_optimizer(model: LlavaForConditionalGeneration, lr: float) -> torch.optim.AdamW:
    """AdamW over the trained parameters, with weight decay on the matrices only (not on biases and norms)."""
    trained = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trained if p.ndim >= 2]
    no_decay = [p for p in trained if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.98))


def train_step(model: LlavaForConditionalGeneration, optimizer, batch) -> float:
    """One optimizer step on (inputs, labels), gradients clipped to norm 1; the loss."""
    loss = loss_on(model, *batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    optimizer.step()
    return loss.item()

# -----------------------------------------------------------------------------
# Held-out accuracy: single-turn questions, greedy answers, as the evaluation asks them


@torch.no_grad()
def validate(model, processor, n: int, seed: int) -> dict[str, float]:
    """Accuracy per task on n examples of the 'val' split (never the test split)."""
    hits: dict[str, list[bool]] = {}
    for i in range(n):
        ex = synthetic.example("val", i, seed)
        answer = model.generate(processor(ex.scene.image(), ex.question.question),
                                synthetic.ANSWER_TOKENS).text
        hits.setdefault(ex.question.task, []).append(synthetic.answer_correct(ex.question, answer, ex.scene.size))
    return {task: sum(h) / len(h) for task, h in sorted(hits.items())}


@torch.no_grad()
def position_probe(model, processor, n: int = 40, seed: int = 0) -> dict[str, float]:
    """Can a linear map read each visual token's grid row and column off the vision tower's
    features? Least squares onto one-hot rows/columns, fitted on 3/4 of the tokens of n 'val'
    scenes, accuracy on the rest (chance: 1 / grid). Boxes need both; a learning rate that is too
    high wipes them out within a few hundred steps while the loss still falls (see --lr)."""
    pixels = [processor.pixel_values(synthetic.example("val", i, seed).scene.image())[None] for i in range(n)]
    x = torch.cat([model.patch_features(p.to(model.device))[0] for p in pixels]).float().cpu()
    x = torch.cat([(x - x.mean(0)) / (x.std(0) + 1e-6), torch.ones(len(x), 1)], dim=1)
    cols = processor.grid_shape[1]
    index = torch.arange(x.shape[0] // n).repeat(n)
    fit = x.shape[0] * 3 // 4
    accuracy = {}
    for name, target in (("row", index // cols), ("col", index % cols)):
        onehot = F.one_hot(target, int(target.max()) + 1).float()
        weights = torch.linalg.lstsq(x[:fit], onehot[:fit]).solution
        accuracy[name] = (x[fit:] @ weights).argmax(1).eq(target[fit:]).float().mean().item()
    return accuracy

# -----------------------------------------------------------------------------
# Warm starts (--init-from): a smaller saved model grown into this one


def load_weights(model: LlavaForConditionalGeneration, folder: Path) -> None:
    """--init-from: the weights of a saved model folder. They must be this model's tensors with the
    same shapes, except for the two changes `grow` makes (a smaller grid, fewer decoder layers);
    the file and the first mismatch are named otherwise."""
    file = folder / "model.safetensors"
    if not file.is_file():
        raise FileNotFoundError(f"--init-from: no model.safetensors in {folder}")
    tensors, expected = grow(read_tensors(file), model.config), model.state_dict()
    unmatched = sorted(set(tensors) ^ set(expected))
    if unmatched:
        key = unmatched[0]
        where = "is missing from" if key in expected else "is not a tensor of this model, found in"
        raise ValueError(f"--init-from: {key} {where} {file}")
    for key, value in tensors.items():
        if value.shape != expected[key].shape or value.dtype != expected[key].dtype:
            raise ValueError(f"--init-from: {key} is {value.dtype} {tuple(value.shape)} in {file}, "
                             f"this model needs {expected[key].dtype} {tuple(expected[key].shape)}")
    model.load_state_dict(tensors)


POSITIONS = "vision_tower.vision_model.embeddings.position_embedding.weight"
LAYER = "language_model.model.layers."


def grow(tensors: dict[str, torch.Tensor], config: LlavaConfig) -> dict[str, torch.Tensor]:
    """A smaller model's tensors made into a warm start for `config`, which may have
    - a bigger grid: the ViT's patch position embeddings resized bicubically (as ViT fine-tuning
      at a higher resolution does), the CLS position kept;
    - k times the decoder layers: each layer repeated k times in place, the copies' o_proj and
      down_proj zeroed, so that each copy starts as the identity on the residual stream.
    Anything else is returned unchanged (load_weights then names what does not fit)."""
    out = dict(tensors)
    side, pos = config.vision_config.grid_side, tensors.get(POSITIONS)
    old_side = math.isqrt(pos.shape[0] - 1) if pos is not None else side
    if pos is not None and old_side < side and old_side ** 2 == pos.shape[0] - 1:
        cells = pos[1:].T.reshape(1, -1, old_side, old_side).float()
        cells = F.interpolate(cells, size=(side, side), mode="bicubic", align_corners=False)
        out[POSITIONS] = torch.cat([pos[:1], cells.reshape(pos.shape[1], -1).T.to(pos.dtype)])
    old_layers = len({k[len(LAYER):].split(".")[0] for k in tensors if k.startswith(LAYER)})
    layers = config.text_config.num_hidden_layers
    if 0 < old_layers < layers and layers % old_layers == 0:
        k = layers // old_layers
        out = {key: v for key, v in out.items() if not key.startswith(LAYER)}
        for key, value in tensors.items():
            if key.startswith(LAYER):
                i, rest = key[len(LAYER):].split(".", 1)
                for copy in range(k):
                    zero = copy > 0 and rest in ("self_attn.o_proj.weight", "mlp.down_proj.weight")
                    out[f"{LAYER}{int(i) * k + copy}.{rest}"] = torch.zeros_like(value) if zero else value.clone()
    return out


# -----------------------------------------------------------------------------
# The training loop


def learning_rate(step: int, args) -> float:
    """Warm-up, then constant, then a linear decay over the last 20% of steps to 10%
    ("warmup-stable-decay"): a run can be extended while it is still in the constant phase."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    decay_start = int(0.8 * args.steps)
    if step < decay_start:
        return args.lr
    return args.lr * (1 - 0.9 * (step - decay_start) / max(1, args.steps - decay_start))


class StepBatches(torch.utils.data.Dataset):
    """Step s -> its batch, so that a DataLoader's workers can make the next steps' batches while the
    GPU trains; each is drawn from its own step's seed, so workers change nothing in the data."""

    def __init__(self, processor: Processor, args, eos: int):
        self.processor, self.args, self.eos = processor, args, eos

    def __len__(self) -> int:
        return self.args.steps

    def __getitem__(self, step: int):
        a = self.args
        objects = objects_at(step, a.max_objects, a.curriculum)
        return make_batch(self.processor, step, a.seed, a.batch, a.turns, objects, a.lookalike, self.eos)


def build_model(args) -> tuple[LlavaForConditionalGeneration, Tokenizer]:
    """The preset's model, weights drawn from --seed (then --init-from, for the small presets; the
    smol preset reads feather-576's vision tower and the --base decoder and adds LoRA adapters)."""
    if args.preset == "smol":
        return smol.build(Path(args.base), args.seed, args.lora_rank, args.lora_alpha, init_weights)
    tokenizer = make_tokenizer()
    model = LlavaForConditionalGeneration(model_config(args.preset, tokenizer.get_vocab_size()))
    init_weights(model, args.seed)
    if args.init_from and not args.resume:  # a resumed run takes its weights from the checkpoint
        load_weights(model, Path(args.init_from))
    return model, tokenizer


def save_model(model, tokenizer, out: Path, args) -> None:
    """The output folder: a llava-hf checkpoint, or for the smol preset the delta on its base."""
    if args.preset == "smol":
        smol.save_delta(model, tokenizer, out, Path(args.base), args.lora_rank, args.lora_alpha, save_config_files)
    else:
        save_pretrained(model, tokenizer, out)


def train(args) -> list[float]:
    """Run (or resume) training; returns the loss of every step run in this call. One run at a
    time per --out: a second is refused while the first holds the folder's lock."""
    out = Path(args.out)
    check_out(out, args.resume)
    with training_lock(out):
        return run(args)


def run(args) -> list[float]:
    if args.threads:
        torch.set_num_threads(args.threads)
    out, ckpt = Path(args.out), Path(args.out) / "checkpoint"
    device = resolve_device(args.device)
    model, tokenizer = build_model(args)
    config = model.config
    processor = make_processor(tokenizer, config)
    model.to(device)
    optimizer = make_optimizer(model, args.lr)
    settings = {k: getattr(args, k) for k in ("preset", "seed", "batch", "turns", "max_objects", "curriculum", "lr",
                                               "warmup", "steps", "lookalike")}
    # Resolved, so that "runs/a" and "./runs/a" are one setting on --resume.
    settings["init_from"] = str(Path(args.init_from).resolve()) if args.init_from else None
    if args.preset == "smol":
        settings.update(lora_rank=args.lora_rank, lora_alpha=args.lora_alpha,
                        base_sha256=smol.read_base_source(Path(args.base)).get("sha256"))
    if not args.resume and holds_checkpoint(ckpt):
        step = checkpoint_step(ckpt)
        raise ValueError(f"{ckpt} already holds a checkpoint{'' if step is None else f' (step {step + 1})'}: "
                         "pass --resume to continue it, or choose another --out")
    start = load_checkpoint(ckpt, model, optimizer, settings) + 1 if args.resume else 0
    params = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in trained_parameters(model).values())
    side = config.vision_config.grid_side
    print(f"train: {args.preset} model, {params / 1e6:.2f} M parameters ({trained / 1e6:.2f} M trained), "
          f"grid {side}x{side}, steps {start}..{args.steps - 1}, batch {args.batch} chats of <= {args.turns} questions, "
          f"lr {args.lr:g}, curriculum {args.curriculum}, lookalike {args.lookalike:g}, "
          f"from {settings['init_from'] or (args.base if args.preset == 'smol' else 'random weights')}, "
          f"seed {args.seed}, {device}, {torch.get_num_threads()} threads, {args.workers} data workers", flush=True)
    losses, t0, log = [], time.time(), out / "train_log.jsonl"
    if args.workers:  # the tokenizer's own threads would deadlock in forked workers; it says so and stops using them
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # batch_size=None: each item is already a step's batch; the sampler yields the steps still to run.
    batches = torch.utils.data.DataLoader(StepBatches(processor, args, config.text_config.eos_token_id),
                                          batch_size=None, sampler=range(start, args.steps),
                                          num_workers=args.workers)
    if start == args.steps:  # nothing left: rewrite the output from the checkpoint, should a kill have cut it
        save_model(model, tokenizer, out, args)
        print(f"train: {ckpt} is at the last step; {out} was written again from it", flush=True)
    model.train()
    for step, batch in zip(range(start, args.steps), batches):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args)
        losses.append(train_step(model, optimizer, batch))
        done = step + 1
        if not math.isfinite(losses[-1]):
            raise ValueError(f"step {done}: the loss is {losses[-1]}; stopped before saving anything, so {ckpt} "
                             "keeps the last good checkpoint")
        if done % args.log_every == 0 or done in (start + 1, args.steps):  # the first: seconds a step, early
            elapsed = time.time() - t0
            eta = elapsed / (done - start) * (args.steps - done)
            objects = objects_at(step, args.max_objects, args.curriculum)
            print(f"step {done}/{args.steps} | objects <= {objects} | loss {sum(losses[-args.log_every:]) / len(losses[-args.log_every:]):.4f} "
                  f"| lr {learning_rate(step, args):.2e} | {elapsed / (done - start):.2f} s/step "
                  f"| elapsed {_hms(elapsed)} | ETA {_hms(eta)}", flush=True)
        if done % args.checkpoint_every == 0 or done == args.steps:
            save_checkpoint(ckpt, model, optimizer, step, settings)
            save_model(model, tokenizer, out, args)
            record = {"step": done, "loss": losses[-1], "elapsed_s": round(time.time() - t0, 1)}
            if args.val:
                model.eval()
                record["val"] = validate(model, processor, args.val, args.seed)
                record["position_probe"] = position_probe(model, processor)
                model.train()
                print(f"val at step {done} ({args.val} questions): "
                      + ", ".join(f"{k} {v:.2f}" for k, v in record["val"].items())
                      + "; position probe: " + ", ".join(f"{k} {v:.2f}" for k, v in record["position_probe"].items()),
                      flush=True)
            with log.open("a") as f:
                f.write(json.dumps(record) + "\n")
    return losses


def check_out(out: Path, resume: bool) -> None:
    """Refuse, before any step runs, an --out that would fail at the first checkpoint or overwrite
    a model: a file, an unwritable folder, the shipped weights/, or a model folder that is not
    this run's (no checkpoint/ to --resume)."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out: {out} is a file; name a folder")
    shipped = shipped_weights().parent.resolve()
    if out.resolve() == shipped or shipped in out.resolve().parents:
        raise ValueError(f"--out: {out} is inside the shipped models' folder {shipped}; train into another "
                         "folder (the model card says how the shipped weights were made)")
    existing = next((folder for folder in (out, *out.parents) if folder.exists()), None)
    if existing is not None and not os.access(existing, os.W_OK):
        raise PermissionError(f"--out: {existing} is not writable")
    if not resume and not holds_checkpoint(out / "checkpoint") and any((out / f).exists() for f in ("model.safetensors", "config.json")):
        raise ValueError(f"--out: {out} already holds a model (model.safetensors or config.json) that this "
                         "command did not train; choose another --out")


@contextmanager
def training_lock(out: Path):
    """Hold an exclusive lock on --out (the file .train.lock in it) while training, so that two runs
    into one folder cannot mix their logs and checkpoints; the system drops it if the process dies.
    (On systems without fcntl, Windows, there is no lock.)"""
    out.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    path = out / ".train.lock"
    while True:
        f = open(path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            f.close()
            raise ValueError(f"--out: {out} is being trained by another process (pid {holder}); wait for it to "
                             "finish, or choose another --out") from None
        if path.exists() and os.fstat(f.fileno()).st_ino == os.stat(path).st_ino:
            break  # still the file at that path (a run that just finished unlinks its own)
        f.close()
    try:
        f.truncate(0)
        f.write(str(os.getpid()))
        f.flush()
        yield
    finally:
        path.unlink(missing_ok=True)
        f.close()


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"

# -----------------------------------------------------------------------------
# Command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder: the checkpoint load_pretrained reads, plus checkpoint/")
    p.add_argument("--preset", default="shipped", choices=MODEL_PRESETS,
                   help="model: shipped (feather-tiny), 576 (feather-576), test, or smol (feather-smol: "
                        "feather-576's vision tower on the pretrained SmolLM2 decoder, adapted with LoRA)")
    p.add_argument("--base", default=None, metavar="DIR",
                   help="smol preset: the SmolLM2 text checkpoint (default: where `fetch smollm2` puts it)")
    p.add_argument("--lora-rank", type=cli.positive_int, default=16, help="smol preset: the adapters' rank")
    p.add_argument("--lora-alpha", type=float, default=32.0, help="smol preset: adapters scaled by alpha / rank")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto (bfloat16 autocast on CUDA)")
    p.add_argument("--workers", type=cli.at_least(0), default=0,
                   help="processes making the next steps' batches while this one trains (0: in this process)")
    p.add_argument("--steps", type=cli.positive_int, default=12000, help="total optimizer steps (default 12000)")
    p.add_argument("--batch", type=cli.positive_int, default=8, help="chats (scenes) per step")
    p.add_argument("--turns", type=cli.positive_int, default=4, help="questions per chat, before the optional caption")
    p.add_argument("--max-objects", type=int, default=synthetic.MAX_OBJECTS, help="objects per training scene, at most")
    p.add_argument("--curriculum", type=cli.at_least(0), default=1000,
                   help="steps per curriculum stage: at most 1 object a scene, then 2, ... (0: none)")
    # 5e-4, not higher: at 1e-3 and 2e-3 the ViT's output lost its patch positions within 300-400
    # steps (a linear probe for the row and column of each visual token fell from 0.97 to chance,
    # with gradient-norm spikes); the decoder then read rows off RoPE and never learned columns.
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (AdamW)")
    p.add_argument("--warmup", type=cli.positive_int, default=200, help="warm-up steps")
    p.add_argument("--lookalike", type=float, default=0.0,
                   help="share of training scenes with two look-alike objects (one shape in two colours, or one "
                        "colour in two shapes), both localized in the chat; none while scenes hold at most 1 "
                        "object (default 0)")
    p.add_argument("--init-from", default=None, metavar="DIR",
                   help="start from the weights of a saved model folder (e.g. weights/feather-tiny) instead of "
                        "random ones; the optimizer starts fresh")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=cli.at_least(0), default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--log-every", type=cli.positive_int, default=50)
    p.add_argument("--checkpoint-every", type=cli.positive_int, default=500)
    p.add_argument("--val", type=cli.at_least(0), default=64,
                   help="held-out questions answered at each checkpoint (0: none)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")


def main(args) -> int:
    if not 0.0 <= args.lookalike <= 1.0:
        raise ValueError(f"--lookalike must be a share between 0 and 1, got {args.lookalike}")
    if not 1 <= args.max_objects <= synthetic.MAX_OBJECTS:
        raise ValueError(f"--max-objects must be between 1 and {synthetic.MAX_OBJECTS}, got {args.max_objects}")
    if args.preset == "smol" and args.base is None:
        args.base = str(cache_dir() / smol.BASE_NAME)
    train(args)
    return 0
