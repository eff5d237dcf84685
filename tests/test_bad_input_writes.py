"""Bad input that reaches the disk: a removal never leaves the cache it cleans, a full disk is one line found
before the work where it can be and leaves nothing half-written, and the advice names flags the stage has.
Full disks are injected (ENOSPC, or a small free-space figure), so no mount is needed."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

import slimlm
from slimlm.cache import remove_under
from slimlm.errors import SlimlmError
from slimlm.output import staging_dir
from test_bad_input import _no_model_load
from test_errors import assert_one_line_error, run_cli


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("SLIMLM_CACHE", str(root))
    (root / "teacher").mkdir(parents=True)
    return root


def _entry(cache: Path, name: str, meta) -> Path:
    entry = cache / "teacher" / name
    entry.mkdir()
    (entry / "meta.json").write_text(json.dumps(meta))
    (entry / "samples.safetensors").write_bytes(b"x" * 100)
    return entry


def test_cache_remove_never_leaves_the_teacher_cache(cache, capsys):
    victim = cache / "data" / "sotu-0123"
    victim.mkdir(parents=True)
    (victim / "tokens.safetensors").write_bytes(b"keep me")
    _entry(cache, "abc123", {"key": "../data/sotu-0123", "mode": "sample"})
    from slimlm.cli import main

    assert main(["cache", "list"]) == 0
    listing = capsys.readouterr().out
    assert "abc123" in listing
    assert "../data" not in listing, "an entry's key must be its folder name, never meta.json's field"
    code, err = run_cli(capsys, "cache", "remove", "../data/sotu-0123")
    assert_one_line_error(code, err, "no entry matches", "slimlm cache list")
    code, err = run_cli(capsys, "cache", "remove", str(victim))
    assert_one_line_error(code, err, "no entry matches")
    code, err = run_cli(capsys, "cache", "remove", "--all")
    assert code == 0, err
    assert (victim / "tokens.safetensors").read_bytes() == b"keep me"
    assert list((cache / "teacher").iterdir()) == []


def test_remove_under_refuses_paths_outside_its_root(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    for target in (root / ".." / "outside", outside, root, root / "."):
        with pytest.raises(SlimlmError, match="not inside"):
            remove_under(root, target)
    assert outside.exists() and root.exists()
    link = root / "link"
    link.symlink_to(outside)
    remove_under(root, link)  # the link goes, never what it points to
    assert not link.exists() and outside.exists()


@pytest.mark.parametrize("meta", [[1, 2, 3], "text", 7])
def test_cache_entry_whose_meta_is_not_a_mapping(cache, capsys, meta):
    _entry(cache, "bad0001", meta)
    _entry(cache, "bad0002", meta)
    from slimlm.cli import main

    assert main(["cache", "list"]) == 0
    assert "damaged" in capsys.readouterr().out
    code, err = run_cli(capsys, "cache", "remove", "bad0001")
    assert code == 0, err
    code, err = run_cli(capsys, "cache", "remove", "--all")
    assert code == 0, err
    assert list((cache / "teacher").iterdir()) == []


def _distill_cached(capsys, tiny_teacher, text_dir, *extra):
    return run_cli(
        capsys,
        "distill",
        "--teacher",
        tiny_teacher,
        "--keep-layers",
        "0,3",
        "--data",
        text_dir,
        "--block-size",
        "32",
        "--batch-size",
        "2",
        "--max-steps",
        "1",
        "--precision",
        "fp32",
        "--teacher-cache",
        "--out",
        "out",
        *extra,
    )


def test_teacher_cache_refused_before_the_teacher_runs_when_it_cannot_fit(
    cache, capsys, monkeypatch, tiny_teacher, text_dir
):
    import shutil as shutil_module

    from slimlm.training import teacher_cache

    real = shutil_module.disk_usage
    # the cache's disk has 1000 bytes left
    monkeypatch.setattr("slimlm.disk.shutil.disk_usage", lambda path: real(path)._replace(free=1000))
    ran = []
    monkeypatch.setattr(teacher_cache, "chunk_signal", lambda *a, **k: ran.append(1))
    code, err = _distill_cached(capsys, tiny_teacher, text_dir)
    assert_one_line_error(code, err, "teacher cache entry needs", "MiB free", "SLIMLM_CACHE")
    assert ran == [], "the teacher ran before the space check"
    assert list((cache / "teacher").iterdir()) == []


def test_teacher_cache_full_disk_mid_write_leaves_no_entry(cache, capsys, monkeypatch, tiny_teacher, text_dir):
    from slimlm.training import teacher_cache

    def full(tensors, path):
        Path(path).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(teacher_cache, "save_file", full)
    code, err = _distill_cached(capsys, tiny_teacher, text_dir)
    assert_one_line_error(code, err, "disk full while writing", "SLIMLM_CACHE")
    assert any("this entry needs" in line for line in err), "the projected size is printed before the build"
    assert list((cache / "teacher").iterdir()) == [], "a half-written teacher cache entry was left"


def test_cache_draws_bounded_by_the_vocabulary(capsys, monkeypatch, tiny_teacher, text_dir):
    _no_model_load(monkeypatch)
    code, err = _distill_cached(capsys, tiny_teacher, text_dir, "--cache-draws", "100000")
    assert_one_line_error(code, err, "--cache-draws 100000", "vocabulary", "at most")


@pytest.mark.parametrize(
    "data,words",
    [
        ("sotu:1e308,wikipedia:1e308", ["too large", "sotu:3,wikipedia:1"]),
        ("sotu:1e-320,wikipedia:1e308", ["too far apart"]),
        ("sotu:abc", ["weight after sotu:", "must be a number"]),
        ("sotu:abc,wikipedia", ["weight after sotu:", "must be a number"]),
    ],
)
def test_data_weights_checked_before_any_model_loads(capsys, monkeypatch, tiny_teacher, data, words):
    _no_model_load(monkeypatch)
    code, err = run_cli(capsys, "distill", "--teacher", tiny_teacher, "--layers", "2", "--data", data, "--out", "out")
    assert_one_line_error(code, err, *words)
    assert "network" not in err[-1]
    code, err = run_cli(capsys, "student", "--teacher", tiny_teacher, "--layers", "2", "--data", data, "--out", "out")
    assert_one_line_error(code, err, *words)


def test_student_refused_when_out_has_no_room(capsys, monkeypatch, tiny_teacher, text_dir):
    import shutil as shutil_module

    _no_model_load(monkeypatch)
    real = shutil_module.disk_usage
    monkeypatch.setattr("slimlm.disk.shutil.disk_usage", lambda path: real(path)._replace(free=1000))
    code, err = run_cli(
        capsys, "student", "--teacher", tiny_teacher, "--layers", "2", "--data", text_dir, "--out", "out"
    )
    assert_one_line_error(code, err, "the student", "MiB free", "--out")


def test_student_target_below_the_smallest_shape(capsys, monkeypatch, tiny_teacher, text_dir):
    _no_model_load(monkeypatch)
    code, err = run_cli(
        capsys, "student", "--teacher", tiny_teacher, "--target-params", "0.001", "--data", text_dir, "--out", "out"
    )
    assert_one_line_error(code, err, "--target-params 0.001", "smallest student", "of the teacher's", "or more")


def test_stale_staging_advice_names_only_the_stages_flags(capsys, monkeypatch, tiny_teacher, text_dir):
    staging_dir(Path("out")).mkdir()
    code, err = run_cli(
        capsys, "student", "--teacher", tiny_teacher, "--layers", "2", "--data", text_dir, "--out", "out"
    )
    assert code == 2 and err[-1].startswith("slimlm: error: an interrupted run left out.partial"), err
    assert "--force" in err[-1] and "--resume" not in err[-1]
    assert staging_dir(Path("out")).is_dir(), "without --force the interrupted run's folder stays"


def test_export_short_write_is_named_a_full_disk(capsys, monkeypatch, tiny_teacher):
    import gguf

    def short(self, *args, **kwargs):
        raise OSError("331776 requested and 308432 written")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", short)
    code, err = run_cli(capsys, "export", tiny_teacher, "--out", "m.gguf")
    assert_one_line_error(code, err, "disk full while writing", "MiB free", "nothing was written")
    assert list(Path(".").glob("*.gguf*")) == []


def test_help_and_api_wording(capsys):
    from slimlm.cli import main

    with pytest.raises(SystemExit):
        main(["distill", "--help"])
    assert "a bare number is seconds" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SlimlmError) as info:
        slimlm.evaluate("not-a-list")
    assert "--models" not in str(info.value) and "models" in str(info.value)
