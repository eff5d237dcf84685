"""The rollout sampler (eval/decode.py) against HF generate and a plain forward, and the generation metrics
(eval/generation.py) on hand-made sequences with known values; tiny Llama models built in code."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from conftest import save_tiny_model
from slimlm.eval import generation
from slimlm.eval.decode import decode_cache, gumbel_sample, sample_continuations
from slimlm.eval.generation import (
    continuation_nll,
    distinct_n,
    generation_metrics,
    lcs_length,
    repetition,
    rouge_l,
)
from slimlm.precision import resolve


@pytest.fixture(scope="module")
def teacher(tiny_teacher):
    return AutoModelForCausalLM.from_pretrained(tiny_teacher).eval()


@pytest.fixture(scope="module")
def student(tiny_tokenizer, tmp_path_factory):
    path = save_tiny_model(tmp_path_factory.mktemp("student"), tiny_tokenizer, layers=2, seed=1)
    return AutoModelForCausalLM.from_pretrained(path).eval()


def prompts(batch=3, length=12, seed=0, vocab=320):
    return torch.randint(vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def full_logprobs(model, ids, length, temperature=1.0):
    """log_softmax(logits / temperature) at each continuation token, from one plain forward (no cache)."""
    with torch.no_grad():
        logits = model(ids).logits[:, length - 1 : -1].float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, ids[:, length:, None]).squeeze(-1)


# --------------------------------------------------------------------------- the sampler


@pytest.mark.parametrize("static", [True, False])
def test_greedy_matches_hf_generate_token_for_token(teacher, static, monkeypatch):
    if not static:  # a model type without static cache support decodes with a DynamicCache
        monkeypatch.setattr(teacher, "_can_compile_fullgraph", False, raising=False)
    assert type(decode_cache(teacher, 8)).__name__ == ("StaticCache" if static else "DynamicCache")
    p = prompts()
    ours = sample_continuations(teacher, p, 24, greedy=True)
    with torch.no_grad():
        hf = teacher.generate(
            p,
            attention_mask=torch.ones_like(p),
            do_sample=False,
            max_new_tokens=24,
            eos_token_id=None,
            pad_token_id=0,
            temperature=None,
            top_k=None,
            top_p=None,
        )
    assert torch.equal(ours.tokens, hf[:, p.shape[1] :])
    assert ours.tokens.dtype == torch.long and ours.logprobs.dtype == torch.float32 and ours.seconds > 0


def test_sampled_logprobs_match_a_plain_forward(teacher):
    p = prompts()
    for temperature in (1.0, 0.7):
        r = sample_continuations(teacher, p, 20, temperature=temperature, generator=torch.Generator().manual_seed(3))
        expected = full_logprobs(teacher, torch.cat([p, r.tokens], 1), p.shape[1], temperature)
        torch.testing.assert_close(r.logprobs, expected, atol=1e-4, rtol=0)


def test_same_seed_same_tokens_other_seed_others_global_rng_untouched(teacher):
    p = prompts()
    state = torch.get_rng_state()
    a, b, c = (
        sample_continuations(teacher, p, 16, generator=torch.Generator().manual_seed(s)).tokens for s in (5, 5, 6)
    )
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), state)


def test_a_reused_cache_gives_the_same_rollout(teacher):
    p = prompts()
    cache = decode_cache(teacher, p.shape[1] + 10)
    first = sample_continuations(teacher, p, 10, greedy=True, cache=cache)
    again = sample_continuations(teacher, p, 10, greedy=True, cache=cache)
    assert torch.equal(first.tokens, again.tokens)


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, int]:
    """Pearson's statistic and its degrees of freedom, bins expecting fewer than 5 draws pooled into one."""
    expected = probs.double() * counts.sum()
    small = expected < 5
    observed = torch.cat([counts[~small].double(), counts[small].double().sum()[None]])
    expected = torch.cat([expected[~small], expected[small].sum()[None]])
    keep = expected > 0
    stat = ((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum().item()
    return stat, int(keep.sum()) - 1


def test_first_token_distribution_is_the_tempered_softmax(teacher):
    draws, temperature = 20000, 0.1  # at 0.1 the tiny model's next-token distribution is peaked but wide
    p = prompts(batch=1)
    r = sample_continuations(
        teacher, p.expand(draws, -1), 1, temperature=temperature, generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        probs = torch.softmax(teacher(p).logits[0, -1].float() / temperature, -1)
    counts = torch.bincount(r.tokens[:, 0], minlength=probs.numel())
    stat, dof = chi_square(counts, probs)
    assert stat < dof + 5 * (2 * dof) ** 0.5, (stat, dof)  # 5 standard deviations of a chi-square(dof)
    flat, _ = chi_square(counts, torch.full_like(probs, 1 / probs.numel()))
    assert flat > dof + 5 * (2 * dof) ** 0.5  # the check can tell a wrong distribution


def test_gumbel_max_matches_softmax_with_masked_columns():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, float("-inf"), 0.5])
    ids, lp = gumbel_sample(logits.expand(200000, -1), 1.0, torch.Generator().manual_seed(1))
    probs = torch.softmax(logits, -1)
    counts = torch.bincount(ids, minlength=6)
    assert counts[4] == 0
    stat, dof = chi_square(counts, probs)
    assert stat < dof + 5 * (2 * dof) ** 0.5
    torch.testing.assert_close(lp, probs.log()[ids])


def test_training_mode_is_restored_module_by_module(student):
    student.train()
    student.model.layers[0].eval()
    try:
        sample_continuations(student, prompts(), 4, generator=torch.Generator().manual_seed(0))
        assert student.training and student.model.layers[1].training and not student.model.layers[0].training
        student.eval()
        sample_continuations(student, prompts(), 4, greedy=True)
        assert not any(m.training for m in student.modules())
    finally:
        student.eval()


def test_sampled_ids_feed_a_training_forward_and_backward(student):
    p = prompts()
    r = sample_continuations(student, p, 8, generator=torch.Generator().manual_seed(0))
    assert not r.tokens.is_inference() and not r.logprobs.requires_grad
    ids = torch.cat([p, r.tokens], 1)
    student.train()
    try:
        student.zero_grad()
        student(input_ids=ids, labels=ids).loss.backward()
        assert student.model.embed_tokens.weight.grad is not None
    finally:
        student.zero_grad()
        student.eval()


def test_bf16_autocast_rollout_runs_and_stays_close(teacher):
    p = prompts()
    bf16 = resolve("bf16", "cpu")
    r = sample_continuations(teacher, p, 8, generator=torch.Generator().manual_seed(0), precision=bf16)
    assert r.tokens.shape == (3, 8) and torch.isfinite(r.logprobs).all()
    expected = full_logprobs(teacher, torch.cat([p, r.tokens], 1), p.shape[1])
    torch.testing.assert_close(r.logprobs, expected, atol=0.1, rtol=0)


def test_bad_arguments_are_refused(teacher):
    from slimlm.errors import SlimlmError

    with pytest.raises(SlimlmError, match="prompts"):
        sample_continuations(teacher, torch.zeros(5, dtype=torch.long), 4)
    with pytest.raises(SlimlmError, match="new_tokens"):
        sample_continuations(teacher, prompts(), 0)
    with pytest.raises(SlimlmError, match="temperature"):
        sample_continuations(teacher, prompts(), 4, temperature=0.0)


# --------------------------------------------------------------------------- the metrics


def test_distinct_n_on_known_sequences():
    assert distinct_n([[1, 2, 3, 1, 2, 3]], 1) == 0.5
    assert distinct_n([[1, 2, 3, 1, 2, 3]], 2) == 3 / 5  # (1,2) (2,3) (3,1) (1,2) (2,3)
    assert distinct_n([[1, 2], [1, 2]], 2) == 1 / 2  # pooled over sequences
    assert distinct_n([[1, 2], [3, 4]], 2) == 1.0  # (2,3) would cross two sequences: not an n-gram
    assert distinct_n(torch.tensor([[1, 2], [3, 4]]), 3) is None


def test_repetition_on_known_sequences():
    assert repetition([[1, 2, 3, 4, 1, 2, 3, 4]]) == pytest.approx(1 / 5)  # 5 four-grams, (1,2,3,4) twice
    assert repetition([[5] * 6]) == pytest.approx(2 / 3)  # 3 four-grams, all the same
    assert repetition([[1, 2, 3, 4, 5], [5] * 6, [1, 2]]) == pytest.approx(1 / 3)  # mean of 0 and 2/3; [1, 2] left out
    assert repetition([[1, 2]]) is None


def test_rouge_l_on_ids():
    assert rouge_l([1, 2, 3], [1, 2, 3]) == 1.0
    assert rouge_l([1, 2, 3], [4, 5, 6]) == 0.0
    assert lcs_length([1, 2, 3, 4], [1, 3, 5, 4, 6]) == 3
    assert rouge_l([1, 2, 3, 4], [1, 3, 5, 4, 6]) == pytest.approx(2 * 0.75 * 0.6 / 1.35)
    from rouge_score.rouge_scorer import RougeScorer  # the reference implementation, on words

    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        a, b = torch.randint(6, (20,), generator=g).tolist(), torch.randint(6, (17,), generator=g).tolist()
        words = lambda ids: " ".join(f"w{i}" for i in ids)  # noqa: E731
        expected = RougeScorer(["rougeL"]).score(words(b), words(a))["rougeL"].fmeasure
        assert rouge_l(a, b) == pytest.approx(expected)


@pytest.mark.parametrize("budget", [generation.LOGIT_BUDGET, 1])  # 1: one row at a time
def test_continuation_nll_equals_a_plain_forward(teacher, budget, monkeypatch):
    monkeypatch.setattr(generation, "LOGIT_BUDGET", budget)
    p, c = prompts(), prompts(length=9, seed=4)
    ids = torch.cat([p, c], 1)
    with torch.no_grad():
        logits = teacher(ids).logits[:, p.shape[1] - 1 : -1]
    expected = F.cross_entropy(logits.flatten(0, 1), c.flatten()).item()
    assert continuation_nll(teacher, p, c) == pytest.approx(expected, rel=1e-5)
    assert -full_logprobs(teacher, ids, p.shape[1]).mean().item() == pytest.approx(expected, rel=1e-5)


def test_generation_metrics_are_deterministic_and_consistent(student, teacher):
    p = prompts(batch=4)
    kw = {"new_tokens": 12, "temperature": 1.0, "seed": 3, "precision": None}
    a = generation_metrics(student, teacher, p, **kw)
    b = generation_metrics(student, teacher, p, **kw)
    a.pop("generation_protocol"), b.pop("generation_protocol")
    assert a == b
    for key in ("teacher_nll_sampled", "teacher_nll_greedy", "student_nll_sampled"):
        assert a[key] > 0
    assert all(0 <= a[k] <= 1 for k in ("distinct_1", "distinct_2", "distinct_3", "distinct_4", "rep_4"))
    assert 0 <= a["rougeL_vs_teacher"] <= 1
    same = generation_metrics(teacher, teacher, p, **kw)  # the teacher against itself
    assert same["rougeL_vs_teacher"] == 1.0
    assert same["student_nll_sampled"] == same["teacher_nll_sampled"]
    assert same["generation_protocol"]["new_tokens"] == 12
