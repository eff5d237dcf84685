"""GGUF export: transformers must load the file back with the same tokenizer and close logits.

Tolerances (the tiny teacher has random weights, logits of order 0.1-1):
f16 rounds each weight to 11 bits -> max |diff| < 1e-2; q8_0 -> < 5e-2; q4_0 -> < 0.5.
"""

from __future__ import annotations

import pytest
import torch

from slimlm.errors import SlimlmError
from slimlm.methods.gguf import export_gguf

SENTENCE = "The Congress of the United States shall provide for the common defence, 1790."
TOLERANCE = {"f16": 1e-2, "q8_0": 5e-2, "q4_0": 0.5}


def _logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits.float()


@pytest.fixture(scope="module")
def source(tiny_teacher):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (
        AutoModelForCausalLM.from_pretrained(tiny_teacher, dtype=torch.float32).eval(),
        AutoTokenizer.from_pretrained(tiny_teacher),
    )


@pytest.mark.parametrize("type", ["f16", "q8_0", "q4_0"])
def test_export_loads_back_with_close_logits(tiny_teacher, source, tmp_path, type):
    from transformers import AutoModelForCausalLM

    out = export_gguf(tiny_teacher, tmp_path / f"tiny-{type}.gguf", type=type)
    assert out.exists() and not (tmp_path / f"tiny-{type}.gguf.partial").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name, dtype=torch.float32).eval()
    assert loaded.config.tie_word_embeddings
    model, tokenizer = source
    ids = tokenizer(SENTENCE)["input_ids"][:16]
    diff = (_logits(model, ids) - _logits(loaded, ids)).abs().max().item()
    assert diff < TOLERANCE[type], f"{type}: max |logit diff| {diff}"


def test_gguf_metadata_follows_llama_cpp(tiny_teacher, tmp_path):
    from gguf import GGMLQuantizationType, GGUFReader

    reader = GGUFReader(export_gguf(tiny_teacher, tmp_path / "m.gguf", type="q8_0"))
    names = {t.name: t for t in reader.tensors}
    assert "output.weight" not in names  # tied embeddings
    assert {"token_embd.weight", "output_norm.weight", "blk.0.attn_q.weight", "blk.3.ffn_down.weight"} <= set(names)
    assert names["blk.0.attn_norm.weight"].tensor_type == GGMLQuantizationType.F32
    assert names["blk.0.attn_k.weight"].tensor_type == GGMLQuantizationType.Q8_0
    field = reader.fields["tokenizer.ggml.model"]
    assert bytes(field.parts[field.data[0]]).decode() == "gpt2"
    assert int(reader.fields["llama.attention.head_count_kv"].parts[-1][0]) == 2
    assert int(reader.fields["general.file_type"].parts[-1][0]) == 7


def test_tokenizer_round_trip(tiny_teacher, source, tmp_path):
    from transformers import AutoTokenizer

    out = export_gguf(tiny_teacher, tmp_path / "tok.gguf")
    loaded = AutoTokenizer.from_pretrained(tmp_path, gguf_file=out.name)
    tokenizer = source[1]
    assert loaded(SENTENCE)["input_ids"] == tokenizer(SENTENCE)["input_ids"]
    assert loaded.decode(loaded(SENTENCE)["input_ids"]) == SENTENCE
    assert loaded.eos_token == tokenizer.eos_token


def test_existing_output_refused_unless_force(tiny_teacher, tmp_path):
    out = tmp_path / "exists.gguf"
    out.write_text("keep me")
    with pytest.raises(SlimlmError, match="already exists"):
        export_gguf(tiny_teacher, out)
    assert out.read_text() == "keep me"
    export_gguf(tiny_teacher, out, force=True)
    assert out.read_bytes()[:4] == b"GGUF"


def test_bad_type_and_architecture_refused(tiny_teacher, tmp_path):
    import shutil

    with pytest.raises(SlimlmError, match="unsupported GGUF type 'q5_k'"):
        export_gguf(tiny_teacher, tmp_path / "x.gguf", type="q5_k")
    other = tmp_path / "gpt2"
    shutil.copytree(tiny_teacher, other)
    (other / "config.json").write_text((other / "config.json").read_text().replace('"llama"', '"gpt2"'))
    with pytest.raises(SlimlmError, match="only Llama"):
        export_gguf(other, tmp_path / "y.gguf")
    assert not (tmp_path / "x.gguf").exists() and not (tmp_path / "y.gguf").exists()


def test_export_prints_sizes(tiny_teacher, tmp_path, capsys):
    from slimlm.stages.export import export

    path = export(str(tiny_teacher), out=tmp_path / "e.gguf", type="q8_0")
    assert path.exists()
    out, err = capsys.readouterr()
    assert "MB safetensors ->" in out and "stay f16" not in err  # widths 32 and 64: every matrix quantized


def test_a_width_that_is_not_whole_blocks_is_said_to_stay_f16(tiny_tokenizer, tmp_path, capsys):
    """A width-pruned student (hidden 504 of SmolLM2) cannot be cut into 32-value q8_0 blocks: the export
    keeps those matrices in f16, and says so, since the file is then larger and slower than a user expects."""
    from conftest import save_tiny_model

    narrow = save_tiny_model(tmp_path / "narrow", tiny_tokenizer, hidden=40)  # MLP 80: neither is whole blocks
    export_gguf(narrow, tmp_path / "n.gguf", "q8_0")
    err = capsys.readouterr().err
    assert "weight matrices stay f16 in this q8_0 file" in err and "40, 80 values" in err


def test_cli_export_and_bad_type(tiny_teacher, capsys):
    from pathlib import Path

    from slimlm.cli import main

    assert main(["export", str(tiny_teacher), "--format", "gguf", "--type", "q8_0", "--out", "m.gguf"]) == 0
    assert Path("m.gguf").stat().st_size > 0
    assert main(["export", str(tiny_teacher), "--type", "q8_0", "--out", "m.gguf"]) == 2
    assert "--force" in capsys.readouterr().err


@pytest.mark.parametrize("type,tolerance", [("f16", 1e-2), ("q8_0", 5e-2)])
def test_llama_cpp_runs_the_export(tiny_teacher, source, tmp_path, type, tolerance):
    """llama.cpp itself (llama-cpp-python; skipped when it is not installed) gives the source's logits."""
    import subprocess
    import sys

    import numpy as np

    pytest.importorskip("llama_cpp")
    path = export_gguf(tiny_teacher, tmp_path / f"m-{type}.gguf", type)
    model, tokenizer = source
    ids = tokenizer("The Congress of the United States", add_special_tokens=False)["input_ids"]
    for repack in (True, False):  # in a child process: a crash inside llama.cpp must not take the run with it
        script = (
            "import numpy\n"
            "from slimlm.eval.llama_cpp import load_gguf\n"
            f"llm = load_gguf({str(path)!r}, 64, 2, repack={repack})\n"
            f"llm.eval({ids!r})\n"
            f"numpy.save({str(tmp_path / 'scores.npy')!r}, llm.scores[: {len(ids)}])\n"
        )
        run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
        if run.returncode >= 0:  # else killed by a signal: llama.cpp#20824, q8_0 repacked for AMX; retried
            break
    if run.returncode < 0:
        pytest.xfail(f"llama.cpp itself crashed (signal {-run.returncode}) on this {type} file, even unrepacked")
    assert run.returncode == 0, run.stderr
    ours = torch.from_numpy(np.load(tmp_path / "scores.npy"))
    with torch.no_grad():
        reference = model(input_ids=torch.tensor([ids])).logits[0]
    assert (ours - reference).abs().max() < tolerance
