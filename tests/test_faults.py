# python -m pytest tests/test_faults.py -q
"""Training that survives a kill at any moment, checkpoints that are checked before they are
trusted, one run per --out, and a diverged run that stops before it overwrites anything: each
case a hostile user tried (the faults issue), on the tiny 'test' preset."""
import json
import os
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from feather_mini import checkpoint, train
from feather_mini.checkpoint import CheckpointError
from conftest import raises, train_args, train_keeping_threads


def parse(out, *options):
    """1 chat of 1 question per step, a checkpoint after every step."""
    return train_args(out, "--checkpoint-every", "1", *options, batch=1, turns=1)


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """(folder, losses) of an uninterrupted 3-step run."""
    out = tmp_path_factory.mktemp("whole")
    return out, train_keeping_threads(parse(out, "--steps", "3"))


def resign(folder, change):
    """Rewrite a checkpoint with change(meta, tensors) applied and a checksum that matches, as a
    careful forger (or a bug) would: only the structural checks can then catch it."""
    file = folder / "state.safetensors"
    tensors = load_file(file)
    with checkpoint.safe_open(file, framework="pt") as f:
        meta = json.loads(f.metadata()["meta"])
    change(meta, tensors)
    text = json.dumps(meta, sort_keys=True)
    save_file(tensors, str(file), metadata={"meta": text, "sha256": checkpoint.checkpoint_digest(tensors, text)})
    (folder / "state.json").unlink()

# -----------------------------------------------------------------------------
# A kill at any moment


def test_kill_while_the_checkpoint_is_written_resumes_from_the_previous_one(whole, tmp_path, monkeypatch):
    """A kill after state.safetensors' temporary file is written but before it replaces the old one
    (here: at step 3's save) leaves step 2's checkpoint whole; --resume then gives the uninterrupted run."""
    out, losses = whole
    real_replace = os.replace

    def killed(src, dst):
        if str(dst).endswith("state.safetensors") and checkpoint.checkpoint_step(tmp_path / "checkpoint") == 1:
            raise KeyboardInterrupt  # the kill, between writing and renaming
        real_replace(src, dst)
    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        train.train(parse(tmp_path, "--steps", "3"))
    monkeypatch.setattr(os, "replace", real_replace)
    assert checkpoint.checkpoint_step(tmp_path / "checkpoint") == 1  # step 2 of 3 done
    assert not list((tmp_path / "checkpoint").glob(".*.tmp"))  # the half-written file is gone
    assert train.train(parse(tmp_path, "--steps", "3", "--resume")) == losses[2:]
    a, b = load_file(out / "model.safetensors"), load_file(tmp_path / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_state_json_lost_between_the_two_writes_is_not_needed(whole, tmp_path):
    """The checkpoint is state.safetensors alone; state.json is its readable copy."""
    train.train(parse(tmp_path, "--steps", "2"))
    (tmp_path / "checkpoint" / "state.json").unlink()
    assert train.train(parse(tmp_path, "--steps", "3", "--resume")) == whole[1][2:]


def test_a_finished_run_resumed_rewrites_a_cut_output(whole, tmp_path, capsys):
    """model.safetensors cut short (a kill while the final model was written): --resume at the last step
    writes it again from the checkpoint, and it equals the uninterrupted run's."""
    out, _ = whole
    train.train(parse(tmp_path, "--steps", "3"))
    model_file = tmp_path / "model.safetensors"
    model_file.write_bytes(model_file.read_bytes()[:1000])
    assert train.train(parse(tmp_path, "--steps", "3", "--resume")) == []
    assert capsys.readouterr().out.splitlines()[-1] == (f"train: {tmp_path / 'checkpoint'} is at the last step; "
                                                        f"{tmp_path} was written again from it")
    a, b = load_file(out / "model.safetensors"), load_file(model_file)
    assert all(torch.equal(a[k], b[k]) for k in a)

# -----------------------------------------------------------------------------
# Checked before trusted


@pytest.fixture
def saved(tmp_path):
    """A 2-step run's folder, checkpoint at step 2."""
    train.train(parse(tmp_path, "--steps", "2"))
    return tmp_path


def test_edited_state_json_is_refused(saved):
    """state.json's step changed from 1 to 0 would have resumed into another model: refused, naming both."""
    state = saved / "checkpoint" / "state.json"
    meta = json.loads(state.read_text())
    meta["step"] = 0
    state.write_text(json.dumps(meta))
    with raises(CheckpointError, f"{state} does not match {saved / 'checkpoint' / 'state.safetensors'}, which holds "
                                 f"the checkpoint (step 0 there, 1 here): was it edited? Delete {state} to resume "
                                 f"from {saved / 'checkpoint' / 'state.safetensors'}"):
        train.train(parse(saved, "--steps", "3", "--resume"))


def test_empty_state_json_is_named(saved):
    state = saved / "checkpoint" / "state.json"
    state.write_text("")
    with pytest.raises(CheckpointError, match=re.escape(f"{state}: not valid JSON") + ".*; delete it to resume from"):
        train.train(parse(saved, "--steps", "3", "--resume"))


@pytest.mark.parametrize("damage", ["cut", "empty", "header", "middle"])
def test_damaged_checkpoint_is_one_line(saved, damage):
    """Cut in half, emptied, a flipped header byte: unreadable; 64 flipped bytes in the middle: the checksum.
    Each is one error naming the file, and the good model.safetensors is left as it was."""
    file = saved / "checkpoint" / "state.safetensors"
    model_before = (saved / "model.safetensors").read_bytes()
    data = bytearray(file.read_bytes())
    if damage == "cut":
        data = data[:len(data) // 2]
    elif damage == "empty":
        data = bytearray()
    elif damage == "header":
        data[20] ^= 0xFF
    else:
        middle = len(data) // 2
        data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    file.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as error:
        train.train(parse(saved, "--steps", "3", "--resume"))
    message = str(error.value)
    if damage == "middle":
        assert message == (f"{file} is damaged: its contents do not match the checksum saved with them; train "
                           f"afresh into another --out (or delete {saved / 'checkpoint'})")
    else:
        assert message.startswith(f"{file}: not a readable safetensors file (") and "\n" not in message
    assert (saved / "model.safetensors").read_bytes() == model_before


@pytest.mark.parametrize("change, message", [
    (lambda m, t: t.pop("optim/0/exp_avg"), "tensor optim/0/exp_avg is missing"),
    (lambda m, t: [t.pop(k) for k in [k for k in t if k.startswith("optim/")]],
     "holds no optimizer state (AdamW's moments): resuming would start a different run"),
    (lambda m, t: t.pop("model/multi_modal_projector.linear_2.bias"),
     "tensor model/multi_modal_projector.linear_2.bias is missing"),
    (lambda m, t: t.update({"model/extra": torch.zeros(2)}), "tensor model/extra is not a tensor of this model or "
                                                            "its optimizer"),
    (lambda m, t: t.update({"model/multi_modal_projector.linear_2.bias": torch.zeros(3)}),
     "tensor model/multi_modal_projector.linear_2.bias has shape (3,); this model or its optimizer needs (32,)"),
])
def test_consistent_but_wrong_tensors_are_named(saved, change, message):
    """A checkpoint whose checksum matches but whose tensors are not this model's and AdamW's: the first is named."""
    resign(saved / "checkpoint", change)
    with raises(CheckpointError, f"--resume: {saved / 'checkpoint' / 'state.safetensors'}"
                                 + (" " if message.startswith("holds") else ": ") + message):
        train.train(parse(saved, "--steps", "3", "--resume"))


@pytest.mark.parametrize("step", ["19", 19.5, -5, True, 999])
def test_bad_step_is_named(saved, step):
    """A step that is not an int from 0 to steps - 1 is refused (999 would have trained nothing, silently)."""
    resign(saved / "checkpoint", lambda m, t: m.update(step=step))
    with raises(CheckpointError, f"{saved / 'checkpoint' / 'state.safetensors'}: step {step!r} must be an int from 0 "
                                 "to the run's steps - 1 (1)"):
        train.train(parse(saved, "--steps", "3", "--resume"))


@pytest.mark.parametrize("args", [None, [], {"seed": 0}])
def test_bad_args_are_named(saved, args):
    resign(saved / "checkpoint", lambda m, t: m.update(args=args))
    with raises(CheckpointError, f"{saved / 'checkpoint' / 'state.safetensors'}: 'args' must be an object of the "
                                 "run's settings, with 'steps' an int >= 1"):
        train.train(parse(saved, "--steps", "3", "--resume"))


def test_nan_in_a_checkpoint_is_refused(saved):
    resign(saved / "checkpoint", lambda m, t: t["model/multi_modal_projector.linear_2.bias"].fill_(float("nan")))
    with raises(CheckpointError, f"{saved / 'checkpoint' / 'state.safetensors'}: tensor "
                                 "'model/multi_modal_projector.linear_2.bias' holds NaN or inf; the run diverged "
                                 "before this checkpoint, or the file is damaged"):
        train.train(parse(saved, "--steps", "3", "--resume"))


def test_init_from_a_cut_model_is_one_line(saved, tmp_path):
    file = saved / "model.safetensors"
    file.write_bytes(file.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="^" + re.escape(f"{file}: not a readable safetensors file (")):
        train.train(parse(tmp_path / "warm", "--steps", "1", "--init-from", str(saved)))

# -----------------------------------------------------------------------------
# One run per folder, and a diverged run


def test_second_run_on_the_same_out_is_refused(tmp_path):
    """While one run holds --out, another is refused before it writes anything, naming the holder's pid."""
    with train.training_lock(tmp_path):
        with raises(ValueError, f"--out: {tmp_path} is being trained by another process (pid {os.getpid()}); wait "
                                "for it to finish, or choose another --out"):
            train.train(parse(tmp_path, "--steps", "1"))
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # the lock is gone with its run
    train.train(parse(tmp_path, "--steps", "1"))  # and the folder is free again


def test_a_nan_loss_stops_before_anything_is_overwritten(saved, monkeypatch):
    """A step whose loss is NaN stops the run: the checkpoint, the model and the log stay at step 2."""
    before = {name: (saved / name).read_bytes() for name in ("model.safetensors", "train_log.jsonl")}
    monkeypatch.setattr(train, "train_step", lambda model, optimizer, batch: float("nan"))
    with raises(ValueError, f"step 3: the loss is nan; stopped before saving anything, so {saved / 'checkpoint'} "
                            "keeps the last good checkpoint"):
        train.train(parse(saved, "--steps", "3", "--resume"))
    assert {name: (saved / name).read_bytes() for name in before} == before
    assert checkpoint.checkpoint_step(saved / "checkpoint") == 1
