"""One output folder, one writer: a second slimlm process on a live OUT is refused with one line naming
the first (never told to --resume or --force), --force never deletes the live run's staging folder, and
a lock file left by a SIGKILLed run does not block the next one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from slimlm.errors import SlimlmError
from slimlm.experiments import runner
from slimlm.output import claim_output, discard_if_unstarted, lock_path, publish, staging_dir

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="no flock on Windows: outputs are not locked")

CLAIM = """
import sys
from slimlm.output import claim_output
stage = claim_output(sys.argv[1])
(stage / "busy").write_text("training")
print("ready", flush=True)
sys.stdin.read()
"""

OPEN_RUN = """
import sys
from slimlm.experiments.runner import open_run
open_run(sys.argv[1], {"kind": "test", "arms": [], "seeds": [0]})
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def holder():
    """Start a process that takes OUT's lock and keeps it until killed; returns it once it holds the lock."""
    procs = []

    def start(out, script=CLAIM):
        proc = subprocess.Popen(
            [sys.executable, "-c", script, str(out)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        line = proc.stdout.readline()  # waits for the lock, however long the imports take
        assert line.strip() == "ready", proc.stderr.read()
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def kill(proc):
    proc.kill()  # SIGKILL: no cleanup runs, the lock file stays behind
    proc.wait()


def assert_refused(exc_info, proc, out):
    message = str(exc_info.value)
    assert f"another slimlm process (pid {proc.pid}) is writing {out}" in message, message
    assert "choose another --out" in message and "\n" not in message
    assert "--resume" not in message and "--force" not in message


@pytest.mark.parametrize("options", [{}, {"force": True}, {"resume": True}, {"force": True, "resume": True}])
def test_second_claim_is_refused_and_force_keeps_the_live_staging(tmp_path, holder, options):
    out = tmp_path / "out"
    proc = holder(out)
    with pytest.raises(SlimlmError) as exc_info:
        claim_output(out, **options)
    assert_refused(exc_info, proc, out)
    assert (staging_dir(out) / "busy").exists(), "--force deleted a live run's staging folder"
    discard_if_unstarted(staging_dir(out))  # another process's cleanup path must not remove it either
    assert (staging_dir(out) / "busy").exists()


def test_a_lock_left_by_a_killed_run_does_not_block_the_next(tmp_path, holder):
    out = tmp_path / "out"
    kill(holder(out))
    assert lock_path(out).exists() and staging_dir(out).exists()
    with pytest.raises(SlimlmError, match="interrupted run"):  # the usual message, not "another process"
        claim_output(out)
    stage = claim_output(out, force=True)
    assert not (stage / "busy").exists()
    assert publish(stage, out, record={"stage": "test"}) == out
    assert (out / "slimlm.json").exists() and not stage.exists() and not lock_path(out).exists()


def test_claiming_twice_in_one_process_does_not_deadlock(tmp_path):
    out = tmp_path / "out"
    stage = claim_output(out)
    assert claim_output(out, resume=True) == stage
    with pytest.raises(SlimlmError, match="interrupted run"):  # a refused re-claim keeps the first one's lock
        claim_output(out)
    assert lock_path(out).exists()
    discard_if_unstarted(stage)
    assert not stage.exists() and not lock_path(out).exists()


def test_released_lock_lets_another_process_in(tmp_path, holder):
    out = tmp_path / "out"
    stage = claim_output(out)
    publish(stage, out, record={"stage": "test"})
    proc = holder(tmp_path / "out", CLAIM.replace("claim_output(sys.argv[1])", "claim_output(sys.argv[1], force=True)"))
    with pytest.raises(SlimlmError) as exc_info:
        claim_output(out, force=True)
    assert_refused(exc_info, proc, out)
    assert (out / "slimlm.json").exists()


def test_cli_is_refused_before_the_model_loads(capsys, tiny_teacher, text_dir, holder, monkeypatch):
    from slimlm.cli import main
    from slimlm.stages import student as stage

    proc = holder("out")

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the output's lock was checked")

    monkeypatch.setattr(stage, "load_model", no_load)
    for extra in ([], ["--force"]):
        code = main(
            [
                "student",
                "--teacher",
                str(tiny_teacher),
                "--data",
                str(text_dir),
                "--keep-layers",
                "0",
                "--block-size",
                "32",
                "--out",
                "out",
                *extra,
            ]
        )
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith("slimlm: error: "), err
        assert f"another slimlm process (pid {proc.pid}) is writing out;" in err[0], err
        assert "--resume" not in err[0] and "--force" not in err[0]
        assert (Path("out.partial") / "busy").exists() and not Path("out").exists()


def test_open_run_is_refused_while_another_process_runs_the_experiment(tmp_path, holder):
    run_dir = tmp_path / "run"
    proc = holder(run_dir, OPEN_RUN)
    for force in (False, True):
        with pytest.raises(SlimlmError) as exc_info:
            runner.open_run(run_dir, {"kind": "other", "arms": [], "seeds": [1]}, force=force)
        assert_refused(exc_info, proc, run_dir)
        assert (run_dir / "experiment.json").exists(), "--force deleted a live experiment"
    kill(proc)
    assert runner.open_run(run_dir, {"kind": "other", "arms": [], "seeds": [1]}, force=True) == run_dir
    assert runner.open_run(run_dir, {"kind": "other", "arms": [], "seeds": [1]}) == run_dir  # same process: fine
