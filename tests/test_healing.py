"""Healing a depth cut (methods/healing.py): the layers beside the cut learn to reproduce the teacher's hidden
state at the matching layer; nothing else in the student changes; the student stage records it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import slimlm
from slimlm.methods.healing import cuts, heal_cuts, layer_output
from slimlm.methods.layers import build_student, decoder_layers
from test_errors import assert_one_line_error, run_cli


def _teacher(layers=6, hidden=32):
    from transformers import AutoModelForCausalLM

    from conftest import tiny_config

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(tiny_config(300, layers=layers, hidden=hidden)).eval()


def test_cuts_are_where_layers_were_dropped():
    assert cuts([0, 1, 2, 3, 4, 21, 22]) == [4]
    assert cuts([0, 2, 3, 5]) == [0, 2]
    assert cuts([0, 1, 2]) == []


def test_layer_output_is_the_hidden_state_after_that_layer():
    teacher = _teacher()
    ids = torch.randint(0, 300, (2, 16))
    with torch.no_grad():
        states = teacher(input_ids=ids, output_hidden_states=True).hidden_states
        for index in (0, 3):  # hidden_states[k + 1] is layer k's output (the last one is normed)
            torch.testing.assert_close(layer_output(teacher, index, ids), states[index + 1])


def test_healing_matches_the_teacher_beside_the_cut_and_touches_nothing_else():
    teacher = _teacher()
    student = build_student(teacher, [0, 1, 4, 5])  # cut after student layer 1 (teacher 1 -> 4)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    blocks = torch.randint(0, 300, (16, 16))
    ids = blocks[:4]

    def distance():
        with torch.no_grad():
            return float((layer_output(student, 2, ids) - layer_output(teacher, 4, ids)).square().mean())

    start = distance()
    record = heal_cuts(teacher, student, blocks, tokens=60 * 4 * 16, learning_rate=3e-3)
    assert record["cuts"] == [[1, 4]] and record["trained_layers"] == [1, 4] and record["steps"] == 60
    assert record["loss_last"] < 0.7 * record["loss_first"]
    assert distance() < 0.7 * start
    changed = {k for k, v in student.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith(("model.layers.1.", "model.layers.2.")) for k in changed), changed
    assert all(p.requires_grad for p in student.parameters()), "trainability must be restored"


def test_healing_without_a_cut_does_nothing():
    teacher = _teacher()
    student = build_student(teacher, [0, 1, 2])
    record = heal_cuts(teacher, student, torch.randint(0, 300, (4, 16)), tokens=1000)
    assert record["steps"] == 0 and record["cuts"] == []


def test_student_stage_heals_and_records_it(tiny_teacher, text_dir):
    out = slimlm.make_student(
        teacher=str(tiny_teacher),
        data=str(text_dir),
        keep_layers="0,3",
        block_size=32,
        heal_tokens=2048,
        heal_learning_rate=1e-3,
        precision="fp32",
        out="s",
    )
    record = json.loads((Path(out) / "slimlm.json").read_text())
    healing = record["student"]["healing"]
    assert healing["cuts"] == [[0, 3]] and healing["steps"] == 2048 // (4 * 32)
    assert set(healing["validation_perplexity"]) == {"before", "after", "tokens"}
    assert record["settings"]["heal_tokens"] == 2048
    from transformers import AutoModelForCausalLM

    assert len(decoder_layers(AutoModelForCausalLM.from_pretrained(out))) == 2


@pytest.mark.parametrize(
    "flag,value,words",
    [("--heal-tokens", "-1", ["--heal-tokens", ">= 0"]), ("--heal-learning-rate", "0", ["--heal-learning-rate"])],
)
def test_bad_heal_flags(capsys, tiny_teacher, text_dir, flag, value, words):
    code, err = run_cli(
        capsys, "student", "--teacher", tiny_teacher, "--layers", "2", "--data", text_dir, flag, value, "--out", "out"
    )
    assert_one_line_error(code, err, *words)
