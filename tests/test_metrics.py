"""Tests for slimlm.eval.metrics on tiny random Llama models (no hub, a few seconds on 2 cores)."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from slimlm.errors import SlimlmError
from slimlm.eval.metrics import decode_speed, evaluate_model, model_size, peak_memory, perplexity
from slimlm.eval.table import format_table

V = 97


def tiny(tie=False, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=V,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=tie,
        **kw,
    )
    return LlamaForCausalLM(cfg).eval()


def stream(n, seed=1):
    return torch.randint(V, (n,), generator=torch.Generator().manual_seed(seed))


def test_blocks_match_direct_cross_entropy_and_accuracy():
    model, ids, w = tiny(), stream(100), 16  # 100 = 6 full blocks + a short one of 4 tokens
    nll, hits, n = 0.0, 0, 0
    with torch.no_grad():
        for b in range(0, len(ids), w):
            block = ids[b : b + w][None]
            logits = model(block).logits[0, :-1]
            nll += F.cross_entropy(logits, block[0, 1:], reduction="sum").item()
            hits += (logits.argmax(-1) == block[0, 1:]).sum().item()
            n += block.shape[1] - 1
    r = perplexity(model, ids, window=w, stride=w, batch_size=4, progress=False)
    assert r["tokens_scored"] == n == len(ids) - 7
    assert r["perplexity"] == pytest.approx(math.exp(nll / n), rel=1e-4)
    assert r["nll"] == pytest.approx(nll / n, rel=1e-4)
    assert r["accuracy"] == pytest.approx(hits / n)
    assert r["bits_per_byte"] is None and (r["window"], r["stride"]) == (w, w)


@pytest.mark.parametrize("n,window,stride,batch", [(100, 16, 4, 3), (101, 32, 7, 8), (17, 16, 1, 2), (5, 16, 8, 8)])
def test_sliding_window_scores_every_token_once(n, window, stride, batch):
    r = perplexity(tiny(), stream(n), window=window, stride=stride, batch_size=batch, progress=False)
    assert r["tokens_scored"] == n - 1
    assert math.isfinite(r["perplexity"]) and r["perplexity"] > 1


def test_sliding_window_matches_direct_per_token_scoring():
    # Stride 4, window 8: token t (t >= 8) is scored in the window ending at its block of 4, with >= 4 context.
    model, ids = tiny(), stream(24)
    r = perplexity(model, ids, window=8, stride=4, progress=False)
    with torch.no_grad():
        total = F.cross_entropy(model(ids[None, :8]).logits[0, :-1], ids[1:8], reduction="sum").item()
        for begin in range(4, 17, 4):
            lg = model(ids[None, begin : begin + 8]).logits[0, -5:-1]
            total += F.cross_entropy(lg, ids[begin + 4 : begin + 8], reduction="sum").item()
    assert r["nll"] == pytest.approx(total / 23, rel=1e-4)


def test_uniform_model_has_perplexity_vocab_size_and_known_bits_per_byte():
    model = tiny(tie=False)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    ids = stream(64)
    r = perplexity(model, ids, window=16, stride=8, text_bytes=200, progress=False)
    assert r["perplexity"] == pytest.approx(V, rel=1e-5)
    assert r["bits_per_byte"] == pytest.approx(math.log2(V) * 63 / 200, rel=1e-5)
    assert r["accuracy"] == pytest.approx((ids[1:] == 0).float().mean().item())  # argmax of ties is token 0


def test_decode_speed_decodes_exactly_new_tokens_even_past_eos():
    model = tiny(eos_token_id=0)
    with torch.no_grad():
        model.lm_head.weight.zero_()  # greedy always picks token 0 == eos
    model.generation_config.eos_token_id = 0
    r = decode_speed(model, prompt_ids=stream(8), new_tokens=6, repeats=2, warmup=1, prefill_tokens=20)
    assert r["decode_new_tokens"] == 6 and r["repeats"] == 2 and r["threads"] == torch.get_num_threads()
    assert r["decode_tokens_per_s"] > 0 and r["prefill_tokens_per_s"] > 0
    assert (
        decode_speed(tiny(), vocab_size=V, new_tokens=3, repeats=1, warmup=0, prefill_tokens=8)["decode_new_tokens"]
        == 3
    )


def test_decode_speed_never_divides_by_noise(monkeypatch):
    """A 1-token run as slow as the n-token run (a busy machine) once gave 7e9 tokens/s: now the rate falls
    back to new_tokens / n-token time, prefill included, and says so."""
    from slimlm.eval import metrics

    clock = iter([0.30, 0.29, 0.1] * 4)  # (1-token, n-token, prefill) seconds per repeat: n-token not slower
    monkeypatch.setattr(metrics, "_timed", lambda fn, device: (fn(), next(clock))[1])
    r = decode_speed(tiny(), vocab_size=V, new_tokens=4, repeats=3, warmup=1, prefill_tokens=8)
    assert r["decode_tokens_per_s"] == pytest.approx(4 / 0.29) and "prefill" in r["decode_note"]
    clock = iter([0.10, 0.40, 0.1] * 4)
    r = decode_speed(tiny(), vocab_size=V, new_tokens=4, repeats=3, warmup=1, prefill_tokens=8)
    assert r["decode_tokens_per_s"] == pytest.approx(3 / 0.30) and "decode_note" not in r


def test_peak_memory_reports_method_and_weights():
    model = tiny()
    r = peak_memory(model, lambda: decode_speed(model, new_tokens=3, repeats=1, warmup=0, prefill_tokens=8))
    assert r["memory_method"].startswith("cpu") and r["peak_memory_mib"] > 0
    assert r["inference_memory_mib"] >= r["weights_mib"]
    n_bytes = sum(p.numel() * 4 for p in model.parameters()) + sum(
        b.numel() * b.element_size() for b in model.buffers()
    )
    assert r["weights_mib"] == pytest.approx(n_bytes / 2**20)


def test_model_size_counts_tied_weights_once_and_reads_safetensors(tmp_path):
    model = tiny(tie=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    every = sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
    r = model_size(model)
    assert r == {"parameters": every - V * 32, "size_on_disk_mb": None}
    model.save_pretrained(tmp_path)
    on_disk = sum(f.stat().st_size for f in tmp_path.glob("*.safetensors")) / 1e6
    assert model_size(model, tmp_path) == {"parameters": r["parameters"], "size_on_disk_mb": on_disk}
    assert model_size(tmp_path) == {"parameters": r["parameters"], "size_on_disk_mb": on_disk}
    with pytest.raises(SlimlmError):
        model_size(tmp_path / "missing")


def test_evaluate_model_is_flat_json_and_table_lists_everything(tmp_path):
    teacher, student = tiny(seed=0), tiny(seed=1)
    student.save_pretrained(tmp_path)
    ids = stream(80)
    kw = dict(window=16, stride=8, new_tokens=3, repeats=1, progress=False)
    results = {
        "teacher": evaluate_model(teacher.train(), None, ids, text_bytes=160, **kw),
        "student-kd": evaluate_model(student, None, ids, model_dir=tmp_path, **kw),
    }
    assert not teacher.training
    for r in results.values():
        json.dumps(r)
        assert all(isinstance(v, (int, float, str, type(None))) for v in r.values())
    assert results["teacher"]["bits_per_byte"] == pytest.approx(results["teacher"]["nll"] * 79 / math.log(2) / 160)
    table = format_table(results)
    for text in [
        "teacher",
        "student-kd",
        "parameters (M)",
        "size on disk (MB)",
        "perplexity",
        "bits/byte",
        "next-token accuracy",
        "decode tok/s",
        "prefill tok/s",
        "memory MiB (weights + decode peak)",
        "window 16",
        "stride 8",
        "tokens scored 79",
        f"threads {torch.get_num_threads()}",
    ]:
        assert text in table


@pytest.mark.parametrize("kwargs", [dict(window=1), dict(stride=0), dict(window=8, stride=9), dict(batch_size=0)])
def test_bad_perplexity_arguments(kwargs):
    with pytest.raises(SlimlmError):
        perplexity(tiny(), stream(20), progress=False, **kwargs)


def test_bad_stream_and_decode_arguments():
    with pytest.raises(SlimlmError):
        perplexity(tiny(), stream(1), progress=False)
    with pytest.raises(SlimlmError):
        perplexity(tiny(), stream(20).reshape(2, 10), progress=False)
    assert perplexity(tiny(), stream(20)[None], progress=False)["tokens_scored"] == 19
    with pytest.raises(SlimlmError):
        decode_speed(tiny(), new_tokens=1)
    with pytest.raises(SlimlmError):
        decode_speed(tiny(), repeats=0)
