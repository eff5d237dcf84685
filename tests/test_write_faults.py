"""A write that fails while a result is published (full disk, I/O error) is one line naming the problem
and the fix, and leaves no half-written output: no OUT, no stale result, no staging folder unless it holds
training checkpoints, no lock file; an OUT being replaced with --force stays as it was."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import transformers
from safetensors import SafetensorError

from slimlm.errors import SlimlmError
from slimlm.output import claim_output, lock_path, publish, write_json_atomic
from test_errors import assert_one_line_error, run_cli


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def student(capsys, teacher, data, *extra):
    return run_cli(
        capsys,
        "student",
        "--teacher",
        teacher,
        "--data",
        data,
        "--keep-layers",
        "0",
        "--block-size",
        "32",
        "--out",
        "out",
        *extra,
    )


def assert_nothing_left():
    assert not Path("out").exists() and not Path("out.partial").exists()
    assert not Path("out.old").exists() and not lock_path("out").exists()


def test_full_disk_while_saving_the_model(capsys, tiny_teacher, text_dir, monkeypatch):
    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", disk_full)
    code, err = student(capsys, tiny_teacher, text_dir)
    assert_one_line_error(code, err, "disk full while writing out", "free some space", "another --out")
    assert_nothing_left()


@pytest.mark.parametrize(
    "detail,words",
    [
        (
            'IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })',
            ["disk full while writing out"],
        ),
        (
            'IoError(Os { code: 5, kind: Uncategorized, message: "Input/output error" })',
            ["cannot write out", "Input/output error"],
        ),
    ],
)
def test_safetensors_write_error(capsys, tiny_teacher, text_dir, monkeypatch, detail, words):
    def failing(*args, **kwargs):
        raise SafetensorError(f"Error while serializing: {detail}")

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", failing)
    code, err = student(capsys, tiny_teacher, text_dir)
    assert_one_line_error(code, err, *words, "another --out")
    assert_nothing_left()


def test_failed_replace_keeps_the_old_result(capsys, tiny_teacher, text_dir, monkeypatch):
    code, err = student(capsys, tiny_teacher, text_dir)
    assert code == 0, err
    before = {p.name: p.read_bytes() for p in Path("out").iterdir()}
    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", disk_full)
    code, err = student(capsys, tiny_teacher, text_dir, "--force")
    assert code == 2 and err[-1].startswith("slimlm: error: disk full while writing out"), err
    assert {p.name: p.read_bytes() for p in Path("out").iterdir()} == before
    assert not Path("out.partial").exists() and not Path("out.old").exists() and not lock_path("out").exists()


class FullDiskModel:
    def save_pretrained(self, folder, **kwargs):
        (Path(folder) / "model.safetensors").write_bytes(b"half")
        disk_full()


def test_checkpoints_survive_a_failed_publish_for_resume():
    stage = claim_output("out")
    (stage / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    with pytest.raises(SlimlmError, match="disk full while writing out"):
        publish(stage, Path("out"), FullDiskModel(), record={"stage": "test"})
    assert sorted(p.name for p in stage.iterdir()) == ["checkpoints"], "half-written result left in staging"
    assert not Path("out").exists() and not lock_path("out").exists()


def test_write_json_atomic_full_disk(monkeypatch):
    target = Path("report.json")
    target.write_text('{"old": true}')
    real = Path.write_text

    def half_then_full(self, text, *args, **kwargs):
        real(self, text[:5])
        disk_full()

    monkeypatch.setattr(Path, "write_text", half_then_full)
    with pytest.raises(SlimlmError) as exc_info:
        write_json_atomic(target, {"new": True}, force=True)
    message = str(exc_info.value)
    assert "disk full while writing report.json" in message and "another --out" in message and "\n" not in message
    assert json.loads(target.read_text()) == {"old": True}
    assert sorted(p.name for p in Path(".").iterdir()) == ["report.json"], "temporary file left behind"
