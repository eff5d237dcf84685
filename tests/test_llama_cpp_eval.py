"""`slimlm eval --runtime llama.cpp`: a GGUF file measured under llama.cpp with the transformers protocol.

The measuring test needs llama-cpp-python and is skipped without it (CI does not compile llama.cpp); the
refusals run everywhere."""

from __future__ import annotations

import pytest
from tests.test_errors import assert_one_line_error, run_cli

import slimlm
from slimlm.eval.llama_cpp import available


def test_a_model_directory_is_refused_under_llama_cpp(capsys, tiny_teacher, text_dir):
    code, err = run_cli(capsys, "eval", tiny_teacher, "--data", text_dir, "--runtime", "llama.cpp", "--out", "out")
    # without llama-cpp-python the message says how to install it; with it, that a .gguf is needed
    assert_one_line_error(code, err, *(["slimlm export", ".gguf"] if available() else ["pip install llama-cpp-python"]))


def test_tasks_are_refused_under_llama_cpp(capsys, tiny_teacher, text_dir):
    code, err = run_cli(
        capsys, "eval", "m.gguf", "--data", text_dir, "--runtime", "llama.cpp", "--tasks", "cloze", "--out", "out"
    )
    assert_one_line_error(code, err, "--tasks", "transformers")


@pytest.mark.skipif(not available(), reason="llama-cpp-python is not installed")
def test_llama_cpp_measures_a_gguf_like_transformers(tiny_teacher, text_dir, tmp_path):
    f16 = slimlm.export(str(tiny_teacher), out=tmp_path / "teacher-f16.gguf", type="f16")
    common = dict(data=str(text_dir), window=64, new_tokens=8, repeats=1)
    ours = slimlm.evaluate([str(f16)], runtime="llama.cpp", **common)
    reference = slimlm.evaluate([str(tiny_teacher)], **common)["results"][str(tiny_teacher)]
    exact = ours["results"][str(f16)]
    assert ours["protocol"]["runtime"] == "llama.cpp" and exact["runtime"] == "llama.cpp"
    assert exact["tokens_scored"] == reference["tokens_scored"]  # the same windows over the same ids
    assert exact["perplexity"] == pytest.approx(reference["perplexity"], rel=1e-2)  # f16 weights
    assert exact["accuracy"] == pytest.approx(reference["accuracy"], abs=0.01)
    assert exact["parameters"] == reference["parameters"]
    assert exact["decode_tokens_per_s"] > 0 and exact["prefill_tokens_per_s"] > 0


@pytest.mark.skipif(not available(), reason="llama-cpp-python is not installed")
def test_q8_0_is_measured_even_where_repacked_weights_crash(tiny_teacher, text_dir, tmp_path):
    """q8_0 with llama.cpp's repacked (AMX) weights segfaults on some Sapphire Rapids machines; the measure
    retries without repacking, so the number exists either way and says which way it was taken."""
    q8 = slimlm.export(str(tiny_teacher), out=tmp_path / "teacher-q8_0.gguf", type="q8_0")
    common = dict(data=str(text_dir), window=64, new_tokens=8, repeats=1)
    result = slimlm.evaluate([str(q8)], runtime="llama.cpp", **common)["results"][str(q8)]
    reference = slimlm.evaluate([str(tiny_teacher)], **common)["results"][str(tiny_teacher)]
    assert result["weight_repacking"] == "on" or result["weight_repacking"].startswith("off: the process crashed")
    assert result["perplexity"] == pytest.approx(reference["perplexity"], rel=5e-2)  # 8-bit blocks
