"""Every bad input gets one line that names the problem and the fix, exit status 2, and no output."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import save_tiny_model
from slimlm.cli import main


def run_cli(capsys, *argv):
    code = main([*map(str, argv)])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def assert_one_line_error(code, err, *words):
    assert code == 2, err
    assert len(err) >= 1 and err[-1].startswith("slimlm: error: "), err
    assert "Traceback" not in "\n".join(err)
    for word in words:
        assert word in err[-1], err[-1]
    assert not Path("out").exists() and not Path("out.partial").exists(), "half-written output left behind"


def distill(capsys, teacher, data, *extra):
    return run_cli(
        capsys,
        "distill",
        "--teacher",
        teacher,
        "--data",
        data,
        "--out",
        "out",
        "--max-steps",
        "1",
        "--block-size",
        "32",
        "--no-bf16",
        *extra,
    )


def test_missing_model_path(capsys, text_dir):
    code, err = distill(capsys, "./no/such/model", text_dir, "--keep-layers", "0")
    assert_one_line_error(code, err, "does not exist")


def test_unknown_hub_id_offline(capsys, text_dir):
    code, err = distill(capsys, "nobody-xyz/not-a-model", text_dir, "--keep-layers", "0")
    assert_one_line_error(code, err, "nobody-xyz/not-a-model", "local directory")


def test_folder_without_model(capsys, tmp_path, text_dir):
    (tmp_path / "empty").mkdir()
    code, err = distill(capsys, tmp_path / "empty", text_dir, "--keep-layers", "0")
    assert_one_line_error(code, err, "no model")


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_safetensors(capsys, tmp_path, tiny_teacher, text_dir, damage):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_teacher, broken)
    weights = broken / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x07" * 64)
    code, err = distill(capsys, broken, text_dir, "--keep-layers", "0")
    assert_one_line_error(code, err, "again")


def test_pickle_only_model_is_refused(capsys, tmp_path, tiny_teacher, text_dir):
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_teacher, pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    code, err = distill(capsys, pickled, text_dir, "--keep-layers", "0")
    assert_one_line_error(code, err, "pickled", "convert")


@pytest.mark.parametrize(
    "content,words",
    [
        (b"", ["no text"]),
        (b"   \n\n  ", ["no text"]),
        (b"\x00\x01\x02binary\x00" * 50, ["binary"]),
        ("caf\u00e9 na\u00efve ".encode("latin-1") * 100, ["not UTF-8", "iconv"]),
        (b"Too short to fill one block.", ["too short", "--block-size"]),
    ],
)
def test_bad_corpus(capsys, tmp_path, tiny_teacher, content, words):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(content)
    code, err = distill(capsys, tiny_teacher, corpus, "--keep-layers", "0")
    assert_one_line_error(code, err, *words)


def test_missing_data_path(capsys, tiny_teacher):
    code, err = distill(capsys, tiny_teacher, "./missing.txt", "--keep-layers", "0")
    assert_one_line_error(code, err, "does not exist")


@pytest.mark.parametrize(
    "flags,words",
    [
        (["--temperature", "0"], ["--temperature", "> 0"]),
        (["--temperature", "-1"], ["--temperature"]),
        (["--alpha", "1.5"], ["--alpha", "[0, 1]"]),
        (["--alpha", "-0.1"], ["--alpha"]),
        (["--feature-layers", "9:1", "--feature-weight", "1"], ["9", "range"]),
        (["--feature-layers", "2:7", "--feature-weight", "1"], ["7", "range"]),
        (["--feature-layers", "two:one"], ["two:one"]),
    ],
)
def test_bad_settings(capsys, tiny_teacher, text_dir, flags, words):
    code, err = distill(capsys, tiny_teacher, text_dir, "--keep-layers", "0,1", *flags)
    assert_one_line_error(code, err, *words)


@pytest.mark.parametrize("keep", ["0,4", "-1", "a,b"])
def test_keep_layers_out_of_range(capsys, tiny_teacher, text_dir, keep):
    code, err = distill(capsys, tiny_teacher, text_dir, "--keep-layers", keep)
    assert_one_line_error(code, err, "--keep-layers")


def test_layers_out_of_range(capsys, tiny_teacher, text_dir):
    code, err = distill(capsys, tiny_teacher, text_dir, "--layers", "9")
    assert_one_line_error(code, err, "--layers", "1..4")


def test_different_tokenizers(capsys, tmp_path, tiny_teacher, text_dir, speeches):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    other = Tokenizer(models.BPE())
    other.pre_tokenizer = pre_tokenizers.Whitespace()
    other.train_from_iterator(speeches[:5], trainers.BpeTrainer(vocab_size=200, special_tokens=["<|endoftext|>"]))
    tok = PreTrainedTokenizerFast(tokenizer_object=other, eos_token="<|endoftext|>")
    student = save_tiny_model(tmp_path / "foreign", tok, layers=2)
    # another tokenizer is distilled across tokenizers (tests/test_cross_tokenizer.py); what cannot pair
    # positions across them is refused in one line, before anything is written
    code, err = distill(capsys, tiny_teacher, text_dir, "--student", student, "--feature-layers", "2:1")
    assert_one_line_error(code, err, "different tokenizers", "--feature-layers")


def test_existing_output_is_refused(capsys, tiny_teacher, text_dir):
    Path("out").mkdir()
    (Path("out") / "keep.txt").write_text("a result")
    code, err = distill(capsys, tiny_teacher, text_dir, "--keep-layers", "0")
    assert code == 2 and "already exists" in err[-1] and "--force" in err[-1]
    assert (Path("out") / "keep.txt").read_text() == "a result"


def test_unwritable_output_parent(capsys, tiny_teacher, text_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, err = run_cli(
        capsys,
        "distill",
        "--teacher",
        tiny_teacher,
        "--data",
        text_dir,
        "--keep-layers",
        "0",
        "--out",
        blocker / "sub" / "out",
    )
    assert code == 2 and "--out" in err[-1]


def test_eval_refuses_existing_json(capsys, tiny_teacher, text_dir):
    Path("eval.json").write_text("{}")
    code, err = run_cli(capsys, "eval", tiny_teacher, "--data", text_dir, "--out", "eval.json")
    assert code == 2 and "--force" in err[-1]
    assert Path("eval.json").read_text() == "{}"


def test_malformed_student_config_is_refused_by_the_parser(capsys, tiny_teacher, text_dir):
    with pytest.raises(SystemExit) as stop:
        distill(capsys, tiny_teacher, text_dir, "--keep-layers", "0,1", "--student-config", "{not json")
    assert stop.value.code == 2 and "--student-config" in capsys.readouterr().err
    assert not Path("out").exists() and not Path("out.partial").exists()


@pytest.mark.parametrize(
    "argv,words", [(["--max-steps", "0"], "--max-steps"), (["--batch-size", "-2"], "--batch-size")]
)
def test_counts_below_one(capsys, tiny_teacher, text_dir, argv, words):
    code, err = distill(capsys, tiny_teacher, text_dir, "--keep-layers", "0,1", *argv)
    assert_one_line_error(code, err, words)


@pytest.mark.parametrize(
    "command",
    [
        ["student", "--keep-layers", "0", "--calibration-blocks", "0"],
        ["prune", "--calibration-blocks", "0"],
        ["quantize", "--eval-tokens", "0"],
    ],
)
def test_counts_below_one_in_other_stages(capsys, tiny_teacher, text_dir, command):
    argv = [command[0]] + (
        ["--teacher", tiny_teacher, "--data", text_dir]
        if command[0] == "student"
        else [tiny_teacher, "--calibration" if command[0] == "prune" else "--data", text_dir]
    )
    code, err = run_cli(capsys, *argv, *command[1:], "--out", "out")
    assert_one_line_error(code, err, command[-2])


def test_student_config_with_a_key_that_cannot_change(capsys, tiny_teacher, text_dir):
    code, err = distill(
        capsys, tiny_teacher, text_dir, "--keep-layers", "0,1", "--student-config", '{"vocab_size": 10}'
    )
    assert_one_line_error(code, err, "vocab_size", "allowed")


@pytest.mark.parametrize("flags", [["--window", "1"], ["--window", "8", "--stride", "9"]])
def test_eval_bad_window(capsys, tiny_teacher, text_dir, flags):
    code, err = run_cli(capsys, "eval", tiny_teacher, "--data", text_dir, *flags)
    assert code == 2 and "--window" in err[-1]
