# python -m pytest tests/test_train.py -q
"""Training on the tiny 'test' preset: reproducible losses, a resume that continues exactly where
an uninterrupted run would be, and an output folder that both loaders read as llava-hf's format."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import feather_mini as fm
from feather_mini import synthetic, train
from conftest import raises, train_args, train_keeping_threads


parse = train_args  # the tiny preset: 2 chats of <= 2 questions per step, no validation


@pytest.fixture(scope="module")
def run3(tmp_path_factory):
    """(output folder, losses) of one uninterrupted 3-step run."""
    out = tmp_path_factory.mktemp("run3")
    return out, train_keeping_threads(parse(out, "--steps", "3"))

# -----------------------------------------------------------------------------
# Reproducibility and resuming


def test_same_seed_same_losses(tmp_path):
    """Two fresh 2-step runs with one seed give identical losses; another seed, other losses."""
    a = train.train(parse(tmp_path / "a", "--steps", "2"))
    b = train.train(parse(tmp_path / "b", "--steps", "2"))
    c = train.train(parse(tmp_path / "c", "--steps", "2", "--seed", "1"))
    assert len(a) == 2 and a == b
    assert c[0] != a[0] and c[1] != a[1]


def test_data_workers_change_nothing(run3, tmp_path):
    """Batches made by 2 worker processes give the losses of batches made in this process (each step's
    data comes from its own seed)."""
    _, losses = run3
    assert train.train(parse(tmp_path, "--steps", "3", "--workers", "2")) == losses


def test_resume_continues_exactly(run3, tmp_path):
    """2 steps, a checkpoint, then --resume to 3: the third loss and the final weights equal the uninterrupted run's."""
    # train() has no way to stop a 3-step run after 2 steps, so the first part runs with --steps 2.
    # Its lr schedule is then the same as the 3-step run's only because --warmup 3 (see parse)
    # keeps all three steps in the warm-up, whose lr does not depend on --steps.
    out, losses = run3
    first = train.train(parse(tmp_path, "--steps", "2", "--checkpoint-every", "1"))
    assert first == losses[:2]
    assert json.loads((tmp_path / "checkpoint" / "state.json").read_text())["step"] == 1  # the last step done
    second = train.train(parse(tmp_path, "--steps", "3", "--resume"))
    assert second == [losses[2]]
    expected, resumed = load_file(out / "model.safetensors"), load_file(tmp_path / "model.safetensors")
    assert sorted(resumed) == sorted(expected)
    for key in expected:
        assert torch.equal(resumed[key], expected[key]), key
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert log[-1]["loss"] == losses[2]


def test_resume_refuses_another_seed(tmp_path):
    """A checkpoint trained with seed 0 is not resumed with --seed 1: the setting is named."""
    train.train(parse(tmp_path, "--steps", "1"))
    with raises(ValueError, f"--resume: {tmp_path / 'checkpoint'} was trained with seed=0, "
                            "this run asks for seed=1"):
        train.train(parse(tmp_path, "--steps", "2", "--seed", "1", "--resume"))


def test_resume_refuses_another_warmup(tmp_path):
    """--warmup sets the lr of every warm-up step: resuming with another one would mix two schedules."""
    train.train(parse(tmp_path, "--steps", "1"))
    with pytest.raises(ValueError, match="warmup"):
        train.train(parse(tmp_path, "--steps", "2", "--warmup", "10", "--resume"))


def test_resume_without_checkpoint(tmp_path):
    """--resume in a folder with no checkpoint: FileNotFoundError naming the folder it looked in."""
    with raises(FileNotFoundError, f"--resume: no checkpoint in {tmp_path / 'checkpoint'} "
                                   "(expected state.json and state.safetensors)"):
        train.train(parse(tmp_path, "--steps", "2", "--resume"))


def test_fresh_run_refuses_to_overwrite_a_checkpoint(tmp_path):
    """A run without --resume into a folder that holds a checkpoint stops before training, naming it."""
    train.train(parse(tmp_path, "--steps", "1"))
    with raises(ValueError, f"{tmp_path / 'checkpoint'} already holds a checkpoint (step 1): pass --resume to "
                           "continue it, or choose another --out"):
        train.train(parse(tmp_path, "--steps", "2"))


def test_main_rejects_bad_options(tmp_path, capsys):
    """The command line names the option: --steps 0, --max-objects 9; nothing is written."""
    from feather_mini.__main__ import main

    assert main(["train", "--out", str(tmp_path / "out"), "--steps", "0"]) == 2
    assert capsys.readouterr().err == "feather-mini train: error: argument --steps: must be at least 1, got 0\n"
    with raises(ValueError, "--max-objects must be between 1 and 4, got 9"):
        train.main(parse(tmp_path / "out", "--steps", "1", "--max-objects", "9"))
    assert not (tmp_path / "out").exists()

# -----------------------------------------------------------------------------
# The output folder


def test_output_folder_layout(run3):
    """The llava-hf files, the log and checkpoint/ (safetensors and JSON), and no pickles anywhere."""
    out, losses = run3
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint", "config.json", "model.safetensors",
                                                     "preprocessor_config.json", "tokenizer.json", "train_log.jsonl"]
    assert sorted(p.name for p in (out / "checkpoint").iterdir()) == ["state.json", "state.safetensors"]
    assert [p for p in out.rglob("*") if p.suffix in (".pt", ".pth", ".bin", ".pkl", ".pickle")] == []
    meta = json.loads((out / "checkpoint" / "state.json").read_text())
    assert meta["step"] == 2  # the last step done, counted from 0
    assert {k: meta["args"][k] for k in ("preset", "seed", "batch", "turns", "lr", "steps")} == {
        "preset": "test", "seed": 0, "batch": 2, "turns": 2, "lr": 0.0005, "steps": 3}
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in log] == [(3, losses[2])]


def test_output_folder_loads_and_generates(run3):
    """load_pretrained reads the folder unchanged; greedy decoding gives ids and their text."""
    out, _ = run3
    model, processor = fm.load_pretrained(out)
    assert (model.config.vision_config.grid_side, model.config.num_visual_tokens, model.config.image_token_index) == \
        (12, 144, 114)
    ex = synthetic.example("test", 0)
    inputs = processor(ex.scene.image(), ex.question.question)
    generation = model.generate(inputs, max_new_tokens=4)
    assert 1 <= len(generation.token_ids) <= 4
    assert all(0 <= t < 115 for t in generation.token_ids)
    assert generation.text == processor.tokenizer.decode(generation.token_ids, skip_special_tokens=True)
    assert generation.token_ids[0] == model(inputs).logits[0, -1].argmax().item()


def test_transformers_reads_the_output_folder(run3):
    """transformers' LlavaForConditionalGeneration loads the folder with no missing or unexpected
    keys, and its logits equal ours."""
    from transformers import LlavaForConditionalGeneration

    out, _ = run3
    hf, info = LlavaForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert (info["missing_keys"], info["unexpected_keys"], info["mismatched_keys"]) == (set(), set(), set())
    model, processor = fm.load_pretrained(out)
    ex = synthetic.example("test", 0)
    inputs = processor(ex.scene.image(), ex.question.question)
    with torch.no_grad():
        hf_logits = hf.eval()(input_ids=inputs.input_ids, pixel_values=inputs.pixel_values).logits
        logits = model(inputs).logits
    assert logits.shape == hf_logits.shape == (1, inputs.input_ids.shape[1], 115)
    diff = (logits - hf_logits).abs().max().item()
    assert diff < 1e-5, f"logits differ by {diff:.2e}"


def test_resume_refuses_new_steps_once_the_decay_began(tmp_path):
    """The lr of the last 20% of steps depends on --steps: 2 steps done of 2 (warm-up 1) cannot be stretched to 10."""
    train.train(parse(tmp_path, "--steps", "2", "--warmup", "1"))
    with raises(ValueError, f"--resume: {tmp_path / 'checkpoint'} is at step 2, past the start of the learning-rate "
                            "decay of --steps 2; resume it with --steps 2"):
        train.train(parse(tmp_path, "--steps", "10", "--warmup", "1", "--resume"))


def test_position_probe_reads_the_grid_at_init_and_not_from_noise():
    """At init the sine/cosine position embeddings make each visual token's row and column linearly
    readable (> 0.8 on 8 scenes); with the vision tower's weights replaced by N(0, 1) noise, chance (1/12)."""
    tokenizer = train.make_tokenizer()
    config = train.model_config("test", tokenizer.get_vocab_size())
    model = fm.LlavaForConditionalGeneration(config)
    train.init_weights(model, 0)
    processor = train.make_processor(tokenizer, config)
    assert min(train.position_probe(model, processor, n=8).values()) > 0.8
    with torch.no_grad():
        for p in model.vision_tower.parameters():
            p.normal_()
    assert max(train.position_probe(model, processor, n=8).values()) < 0.15

# -----------------------------------------------------------------------------
# --init-from: a warm start from a saved model folder


def test_init_from_starts_from_the_saved_weights(run3, tmp_path):
    """With --lr 0 (no update, no weight decay) a run started --init-from run3's folder saves
    exactly run3's weights; the losses differ from a random start's."""
    out, _ = run3
    warm = train.train(parse(tmp_path / "warm", "--steps", "1", "--lr", "0", "--init-from", str(out)))
    cold = train.train(parse(tmp_path / "cold", "--steps", "1", "--lr", "0"))
    saved, started = load_file(str(out / "model.safetensors")), load_file(str(tmp_path / "warm" / "model.safetensors"))
    assert saved.keys() == started.keys() and all(torch.equal(saved[k], started[k]) for k in saved)
    assert warm != cold


def test_init_from_refuses_another_model(tmp_path):
    """The shipped model's folder does not fit the 'test' preset: the first tensor the preset lacks
    is named with the file; a folder without weights is named too."""
    from feather_mini import SHIPPED_WEIGHTS

    with raises(ValueError, "--init-from: vision_tower.vision_model.encoder.layers.1.layer_norm1.bias is not a "
                            f"tensor of this model, found in {SHIPPED_WEIGHTS / 'model.safetensors'}"):
        train.train(parse(tmp_path / "a", "--steps", "1", "--init-from", str(SHIPPED_WEIGHTS)))
    with raises(FileNotFoundError, f"--init-from: no model.safetensors in {tmp_path}"):
        train.train(parse(tmp_path / "b", "--steps", "1", "--init-from", str(tmp_path)))


def test_init_from_names_a_tensor_of_another_shape(run3, tmp_path):
    """A folder whose lm_head has one row too few: the key, both shapes and dtypes, and the file."""
    out, _ = run3
    tensors = load_file(str(out / "model.safetensors"))
    tensors["language_model.lm_head.weight"] = tensors["language_model.lm_head.weight"][:-1].contiguous()
    save_file(tensors, str(tmp_path / "model.safetensors"))
    file = tmp_path / "model.safetensors"
    with raises(ValueError, f"--init-from: language_model.lm_head.weight is torch.float32 (114, 32) in {file}, "
                            "this model needs torch.float32 (115, 32)"):
        train.train(parse(tmp_path / "a", "--steps", "1", "--init-from", str(tmp_path)))


def test_resume_of_a_warm_start_needs_neither_the_init_folder_nor_its_spelling(run3, tmp_path):
    """A run started --init-from a copy of run3's folder resumes after the copy is gone (its
    weights are in the checkpoint), given the same folder spelled another way; and like an
    uninterrupted warm start. Another folder is refused, naming both."""
    out, _ = run3
    source = tmp_path / "source"
    source.mkdir()
    (source / "model.safetensors").write_bytes((out / "model.safetensors").read_bytes())
    whole = train.train(parse(tmp_path / "whole", "--steps", "2", "--init-from", str(source)))
    first = train.train(parse(tmp_path / "split1", "--steps", "1", "--init-from", str(source)))
    (source / "model.safetensors").unlink()
    second = train.train(parse(tmp_path / "split1", "--steps", "2", "--init-from", str(source / ".." / "source"),
                               "--resume"))
    assert first + second == whole
    with raises(ValueError, f"--resume: {tmp_path / 'split1' / 'checkpoint'} was trained with "
                            f"init_from={str(source.resolve())!r}, this run asks for init_from={str(out.resolve())!r}"):
        train.train(parse(tmp_path / "split1", "--steps", "2", "--init-from", str(out), "--resume"))


def test_resume_of_a_checkpoint_older_than_the_lookalike_and_init_from_settings(tmp_path):
    """state.json files written before --lookalike and --init-from existed lack them: they read as
    the defaults (0 and none), so such a run resumes. Those checkpoints kept their step and settings
    in state.json only (no metadata in state.safetensors): made here by saving the tensors again bare."""
    train.train(parse(tmp_path, "--steps", "1"))
    state, tensors = tmp_path / "checkpoint" / "state.json", tmp_path / "checkpoint" / "state.safetensors"
    save_file(load_file(tensors), str(tensors))
    meta = json.loads(state.read_text())
    del meta["args"]["lookalike"], meta["args"]["init_from"], meta["sha256"]
    state.write_text(json.dumps(meta))
    assert len(train.train(parse(tmp_path, "--steps", "2", "--resume"))) == 1


def test_main_rejects_a_lookalike_share_out_of_range(tmp_path):
    """--lookalike is a share: 1.5 is refused before anything is written."""
    with raises(ValueError, "--lookalike must be a share between 0 and 1, got 1.5"):
        train.main(parse(tmp_path / "out", "--steps", "1", "--lookalike", "1.5"))
    assert not (tmp_path / "out").exists()

# -----------------------------------------------------------------------------
# The '576' preset (feather-576) and the warm start that grows a smaller model into it


def test_576_preset_is_llava_15s_layout():
    """24x24 = 576 visual tokens (the 96 px scenes resized to 192 px, 8 px patches) and feather-tiny's
    decoder (8 layers, 4 heads of 32), 2,562,432 parameters."""
    config = train.model_config("576", train.make_tokenizer().get_vocab_size())
    assert (config.vision_config.image_size, config.vision_config.patch_size, config.num_visual_tokens) == (192, 8, 576)
    text = config.text_config
    assert (text.num_hidden_layers, text.num_attention_heads, text.head_dim, text.hidden_size) == (8, 4, 32, 128)
    assert sum(p.numel() for p in fm.LlavaForConditionalGeneration(config).parameters()) == 2_562_432


def test_576_preset_trains_3_steps_and_resumes_exactly(tmp_path):
    """As for the test preset: 2 steps, a checkpoint, --resume to 3 equals an uninterrupted 3-step run."""
    whole = train.train(parse(tmp_path / "a", "--preset", "576", "--steps", "3", "--batch", "1"))
    first = train.train(parse(tmp_path / "b", "--preset", "576", "--steps", "2", "--batch", "1", "--checkpoint-every", "1"))
    second = train.train(parse(tmp_path / "b", "--preset", "576", "--steps", "3", "--batch", "1", "--resume"))
    assert len(whole) == 3 and first + second == whole
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    model, processor = fm.load_pretrained(tmp_path / "b")
    assert processor.grid_shape == (24, 24) and model.config.num_visual_tokens == 576


def test_grow_repeats_each_layer_as_an_identity_copy_and_resizes_the_positions(run3):
    """run3's 8-layer decoder grown to 16 layers computes the same function (every second layer's
    o_proj and down_proj are zero); its 12x12 patch positions become 24x24 with the CLS row kept,
    and a constant grid stays constant under the bicubic resize."""
    from dataclasses import replace

    out, _ = run3
    small = fm.load_pretrained(out)[0]
    cfg = small.config
    big_cfg = replace(cfg, text_config=replace(cfg.text_config, num_hidden_layers=16),
                      vision_config=replace(cfg.vision_config, image_size=192))
    tensors = load_file(str(out / "model.safetensors"))
    tensors[train.POSITIONS][1:] = 0.25
    grown = train.grow(tensors, big_cfg)
    assert grown[train.POSITIONS].shape == (577, 32)
    assert torch.equal(grown[train.POSITIONS][0], tensors[train.POSITIONS][0])
    assert torch.allclose(grown[train.POSITIONS][1:], torch.tensor(0.25))
    assert torch.equal(grown[train.LAYER + "3.mlp.down_proj.weight"], torch.zeros(32, 64))
    assert torch.equal(grown[train.LAYER + "2.mlp.down_proj.weight"], tensors[train.LAYER + "1.mlp.down_proj.weight"])
    big = fm.LlavaForConditionalGeneration(big_cfg).eval()
    big.load_state_dict(grown)
    h = torch.randn(1, 10, 32)
    positions = torch.arange(10)[None]
    with torch.no_grad():
        expected, got = small.language_model(h, positions), big.language_model(h, positions)
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()

# -----------------------------------------------------------------------------
# --out and --threads, refused before any step runs


def test_out_over_a_model_folder_or_the_shipped_weights_is_refused(tmp_path):
    """A copy of a model folder (model.safetensors, no checkpoint/), weights/ itself and a folder in
    it, and a file, are refused before training; nothing in them changes."""
    from feather_mini import SHIPPED_WEIGHTS

    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "model.safetensors").write_bytes(b"mine")
    with raises(ValueError, f"--out: {copy} already holds a model (model.safetensors or config.json) that this "
                            "command did not train; choose another --out"):
        train.train(parse(copy, "--steps", "1"))
    assert (copy / "model.safetensors").read_bytes() == b"mine"
    root = SHIPPED_WEIGHTS.parent.resolve()
    for out in (SHIPPED_WEIGHTS, SHIPPED_WEIGHTS.parent / "new-model"):
        with raises(ValueError, f"--out: {out} is inside the shipped models' folder {root}; train into another "
                                "folder (the model card says how the shipped weights were made)"):
            train.train(parse(out, "--steps", "1", "--resume"))
    assert not (SHIPPED_WEIGHTS.parent / "new-model").exists()
    file = tmp_path / "notes.txt"
    file.write_text("x")
    with raises(NotADirectoryError, f"--out: {file} is a file; name a folder"):
        train.train(parse(file, "--steps", "1"))


def test_cli_refuses_negative_threads(tmp_path, capsys):
    """`train --threads -1` is one line and exit code 2, not torch's RuntimeError."""
    from feather_mini.__main__ import main

    assert main(["train", "--out", str(tmp_path / "a"), "--threads", "-1"]) == 2
    assert "error: argument --threads: must be at least 0, got -1" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
