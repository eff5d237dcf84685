"""Nothing is lost when a run dies: SIGKILL at random moments, damaged checkpoints, unwritable outputs,
and no pickle is ever loaded (weights only from safetensors; every torch.load with weights_only=True).

Resumed runs end with exactly the weights of an uninterrupted run (tolerance 0): a checkpoint holds
the weights (safetensors), optimizer, scheduler and RNG states and the data position, and both runs
use the same thread count, so every step computes the same floats in the same order.
"""

from __future__ import annotations

import ast
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import slimlm
from slimlm.output import discard_if_unstarted
from slimlm.training.checkpoints import (
    CHECKPOINT_RECORD,
    SAVING_DIR,
    checkpoint_problem,
    commit_checkpoint,
    last_good_checkpoint,
)

FAST = dict(
    block_size=32,
    batch_size=4,
    learning_rate=3e-3,
    bf16=False,
    logging_steps=1,
    calibration_blocks=4,
    eval_tokens=512,
    eval_window=32,
)


def weights(path):
    return load_file(str(Path(path) / "model.safetensors"))


def assert_identical(a, b):
    a, b = weights(a), weights(b)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), (key, (a[key] - b[key]).abs().max().item())


# ------------------------------------------------------------------------------------------ SIGKILL


def test_sigkill_at_random_moments_then_resume_ends_with_the_same_weights(tiny_teacher, text_dir, tmp_path):
    (tmp_path / "recipe.yaml").write_text("eval_window: 32\neval_tokens: 256\ncalibration_blocks: 2\n")
    argv = [
        sys.executable,
        "-m",
        "slimlm",
        "distill",
        "--recipe",
        str(tmp_path / "recipe.yaml"),
        "--teacher",
        str(tiny_teacher),
        "--data",
        str(text_dir),
        "--keep-layers",
        "0,3",
        "--block-size",
        "32",
        "--batch-size",
        "4",
        "--learning-rate",
        "3e-3",
        "--no-bf16",
        "--max-steps",
        "16",
        "--save-steps",
        "1",
        "--logging-steps",
        "4",
        "--seed",
        "5",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}

    def launch(out, *extra, log):
        with open(log, "w") as err:
            return subprocess.Popen([*argv, "--out", str(out), *extra], stdout=subprocess.DEVNULL, stderr=err, env=env)

    # the uninterrupted run, in this process with the subprocesses' single thread (same float order)
    from slimlm.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([*argv[3:], "--out", str(tmp_path / "straight")]) == 0
    finally:
        torch.set_num_threads(threads)

    out, checkpoints = tmp_path / "killed", tmp_path / "killed.partial" / "checkpoints"

    def newest_step():
        steps = [int(p.name.split("-")[1]) for p in checkpoints.glob("checkpoint-*") if p.name.split("-")[1].isdigit()]
        return max(steps, default=0)

    rng, kills, resumed_from = random.Random(20261127), [], []
    for attempt in range(6):
        log = tmp_path / f"attempt-{attempt}.log"
        proc = launch(out, *(["--resume"] if attempt else []), log=log)
        start = newest_step()
        if len(kills) < 3:
            # wait for progress (a new checkpoint), then kill at a random moment of what follows: mid-step,
            # mid-save (checkpoints are saved every step) or mid-rename; the third kill lands while a save runs
            while proc.poll() is None and newest_step() <= start:
                time.sleep(0.002)
            if len(kills) == 2:
                while proc.poll() is None and not (checkpoints / SAVING_DIR).exists():
                    time.sleep(0.0005)
            else:
                time.sleep(rng.uniform(0.0, 0.3))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills.append(attempt)
        code = proc.wait(timeout=600)
        text = log.read_text()
        if attempt:
            resumed_from += [line for line in text.splitlines() if "resuming from checkpoint-" in line]
        if code == 0:
            break
        assert code == -signal.SIGKILL, text[-3000:]
    else:
        pytest.fail("the run did not finish after 6 attempts")
    assert len(kills) >= 2, f"the run finished before it could be killed twice (kills at attempts {kills})"
    assert resumed_from, "no attempt resumed from a checkpoint"
    assert_identical(tmp_path / "straight", out)
    record = json.loads((out / "slimlm.json").read_text())
    assert record["training"]["steps"] == 16 and not (tmp_path / "killed.partial").exists()


# ------------------------------------------------------------------------------------------ damaged checkpoints


def test_truncated_checkpoint_is_skipped_for_the_one_before(tiny_teacher, text_dir, capsys, monkeypatch):
    common = dict(
        teacher=str(tiny_teacher), keep_layers="0,2", data=str(text_dir), max_steps=6, save_steps=2, seed=3, **FAST
    )
    straight = slimlm.distill(out="straight", **common)
    stage = slimlm.distill(out="damaged", stop_after=4, **common)
    folder = stage / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-2", "checkpoint-4"]  # no .saving left
    assert checkpoint_problem(folder / "checkpoint-4") is None
    assert not (folder / "checkpoint-4" / "training_args.bin").exists()  # the one pickle the Trainer writes
    model = folder / "checkpoint-4" / "model.safetensors"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])

    loads = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        loads.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    capsys.readouterr()
    resumed = slimlm.distill(out="damaged", resume=True, **common)
    err = capsys.readouterr().err
    assert "skipping checkpoint-4: model.safetensors is truncated" in err and "resuming from checkpoint-2" in err
    assert "moved it to damaged-4" in err
    assert_identical(straight, resumed)
    # the Trainer's resume reads optimizer, scheduler and RNG state with torch.load(weights_only=True)
    assert len(loads) >= 3 and all(w is True for w in loads), loads


def test_only_committed_checkpoints_count(tmp_path):
    folder = tmp_path / "checkpoints"
    for step in (2, 4):
        saved = folder / SAVING_DIR / f"checkpoint-{step}"
        saved.mkdir(parents=True)
        (saved / "model.safetensors").write_bytes(b"x" * 100)
        (saved / "optimizer.pt").write_bytes(b"y" * 50)
        commit_checkpoint(saved, folder / f"checkpoint-{step}", step)
    assert json.loads((folder / "checkpoint-4" / CHECKPOINT_RECORD).read_text())["files"] == {
        "model.safetensors": 100,
        "optimizer.pt": 50,
    }
    (folder / SAVING_DIR / "checkpoint-6").mkdir(parents=True)  # a save killed half-way: never renamed
    (folder / "checkpoint-8").mkdir()  # a folder without a completion record (e.g. copied by hand, half done)
    (folder / "checkpoint-8" / "model.safetensors").write_bytes(b"z")
    logged = []
    assert last_good_checkpoint(folder, log=logged.append) == folder / "checkpoint-4"
    assert len(logged) == 1 and "checkpoint-8" in logged[0] and "no completion record" in logged[0]
    assert (folder / "damaged-8").is_dir() and "moved it to damaged-8" in logged[0]
    (folder / "checkpoint-4" / "optimizer.pt").unlink()
    assert last_good_checkpoint(folder, log=logged.append) == folder / "checkpoint-2"
    assert "optimizer.pt is missing" in logged[-1]
    commit_checkpoint(folder / SAVING_DIR / "checkpoint-6", folder / "checkpoint-2", 2)  # same step saved again
    assert checkpoint_problem(folder / "checkpoint-2") is None and not (folder / "replaced-2").exists()


def _commit(folder, step, size=100):
    saved = folder / SAVING_DIR / f"checkpoint-{step}"
    saved.mkdir(parents=True)
    (saved / "model.safetensors").write_bytes(b"x" * size)
    return commit_checkpoint(saved, folder / f"checkpoint-{step}", step)


def test_damaged_checkpoints_are_out_of_the_way_of_rotation_and_cleanup(tmp_path):
    """A skipped checkpoint is moved to `damaged-N`, which transformers' `checkpoint-*` glob does not match:
    the rotation after resuming (save_total_limit=2, as the trainer calls it) keeps two good checkpoints, and
    a staging area whose only checkpoints are damaged counts as unstarted."""
    from transformers.trainer_utils import rotate_checkpoints

    folder = tmp_path / "run.partial" / "checkpoints"
    for step in (2, 4):
        _commit(folder, step)
    model = folder / "checkpoint-4" / "model.safetensors"
    model.write_bytes(model.read_bytes()[:50])  # truncated
    assert last_good_checkpoint(folder, log=lambda _: None) == folder / "checkpoint-2"
    for step in (4, 6):  # the resumed run saves step 4 again, then 6; the trainer rotates after each commit
        _commit(folder, step)
        rotate_checkpoints(str(folder), save_total_limit=2)
    assert sorted(p.name for p in folder.iterdir()) == [SAVING_DIR, "checkpoint-4", "checkpoint-6", "damaged-4"]
    assert checkpoint_problem(folder / "checkpoint-4") is None and checkpoint_problem(folder / "checkpoint-6") is None

    discard_if_unstarted(tmp_path / "run.partial")  # good checkpoints: kept for --resume
    assert folder.is_dir()
    stage = tmp_path / "other.partial"
    _commit(stage / "checkpoints", 2)
    (stage / "checkpoints" / "checkpoint-2" / CHECKPOINT_RECORD).unlink()
    assert last_good_checkpoint(stage / "checkpoints", log=lambda _: None) is None
    assert sorted(p.name for p in (stage / "checkpoints").iterdir()) == [SAVING_DIR, "damaged-2"]
    discard_if_unstarted(stage)  # only a damaged checkpoint: nothing to resume
    assert not stage.exists()


# ------------------------------------------------------------------------------------------ unwritable output


def test_read_only_output_folder_fails_before_training(capsys, tiny_teacher, text_dir, tmp_path):
    from slimlm.cli import main

    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        undo = lambda: folder.chmod(0o755)  # noqa: E731
    else:  # root ignores permission bits; an immutable folder is read-only for root too
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)]).returncode != 0:
            pytest.skip("running as root without chattr +i: cannot make a folder read-only here")
        undo = lambda: subprocess.run(["chattr", "-i", str(folder)], check=True)  # noqa: E731
    try:
        code = main(
            [
                "distill",
                "--teacher",
                str(tiny_teacher),
                "--data",
                str(text_dir),
                "--keep-layers",
                "0",
                "--out",
                str(folder / "out"),
                "--max-steps",
                "1",
                "--no-bf16",
            ]
        )
        err = capsys.readouterr().err.strip().splitlines()
    finally:
        undo()
    assert code == 2 and err[-1].startswith("slimlm: error: ") and "not writable" in err[-1], err
    assert len(err) == 1, err  # nothing loaded, tokenized or trained before the error
    assert not any(folder.iterdir())


# ------------------------------------------------------------------------------------------ no pickles


def test_no_pickle_is_loaded_anywhere_in_the_source():
    """Every torch.load in slimlm passes weights_only=True, and no pickle-based loader is imported."""
    src = Path(slimlm.__file__).parent
    unsafe = []
    for file in sorted(src.rglob("*.py")):
        tree = ast.parse(file.read_text(), filename=str(file))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                if any(n and n.split(".")[0] in ("pickle", "dill", "joblib", "cloudpickle") for n in names):
                    unsafe.append(f"{file.name}:{node.lineno} imports a pickle loader")
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "load"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "torch"
            ):
                safe = any(
                    k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                    for k in node.keywords
                )
                if not safe:
                    unsafe.append(f"{file.name}:{node.lineno} calls torch.load without weights_only=True")
    assert not unsafe, unsafe


def test_remote_code_is_off_unless_asked():
    from slimlm.cli import build_parser
    from slimlm.settings import DistillSettings, FinetuneSettings

    assert DistillSettings().trust_remote_code is False and FinetuneSettings().trust_remote_code is False
    args = build_parser().parse_args(["distill", "--keep-layers", "0", "--out", "x"])
    assert args.trust_remote_code is False
