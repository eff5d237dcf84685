"""Downstream checks: the items are fixed by the data and a seed, teacher-forced exact match is what
greedy `generate` gives, ROUGE is computed on generated text, and bad requests fail in one line."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from slimlm.errors import SlimlmError
from slimlm.eval import cloze as cz
from slimlm.eval import lm_eval, tasks
from slimlm.eval import summarization as sm


@pytest.fixture(scope="module")
def tiny(tiny_teacher, tiny_tokenizer):
    return AutoModelForCausalLM.from_pretrained(tiny_teacher).eval(), tiny_tokenizer


def greedy_tokens(model, tokenizer, item, max_context_tokens=cz.CLOZE_MAX_CONTEXT_TOKENS):
    """The reference the fast path must match: batch-1 `generate(do_sample=False)` from the context."""
    ctx, tgt = cz.encode_pair(tokenizer, item.context, item.target, max_context_tokens)
    out = model.generate(
        torch.tensor([ctx]),
        attention_mask=torch.ones(1, len(ctx), dtype=torch.long),
        max_new_tokens=len(tgt) + 1,
        do_sample=False,
        pad_token_id=tokenizer.eos_token_id,
        temperature=None,
        top_p=None,
        top_k=None,
    )
    return tgt, out[0, len(ctx) :].tolist()


def check_matches_generate(model, tokenizer, items):
    """Teacher-forced greedy tokens equal generate's up to and including the first miss; hits agree."""
    fast = cz.cloze_predictions(model, tokenizer, items, batch_size=3, progress=False)
    hits = []
    for item, (tgt, predicted) in zip(items, fast):
        ref_tgt, generated = greedy_tokens(model, tokenizer, item)
        assert tgt == ref_tgt
        agree = next((j for j, t in enumerate(tgt) if generated[j] != t), len(tgt)) + 1  # positions both define
        assert predicted[:agree] == generated[:agree], item
        hit = cz.is_hit(tokenizer, tgt, generated)
        assert cz.is_hit(tokenizer, tgt, predicted) == hit, item
        hits.append(hit)
    return hits


def test_sotu_cloze_items_come_from_the_test_years_and_are_fixed_by_the_seed():
    items, protocol = cz.cloze_items("sotu", n=50, seed=0)
    assert protocol["documents"] and all(int(name[:4]) >= 2024 for name in protocol["documents"])
    assert len(items) == protocol["items"] == 50 < protocol["candidates"]
    assert cz.cloze_items("sotu", n=50, seed=0)[0] == items
    assert cz.cloze_items("sotu", n=50, seed=1)[0] != items
    documents = dict(cz.heldout_documents("sotu", None)[0])
    for item in items:
        name, offset = item.source.rsplit("@", 1)
        text = cz.strip_annotations(documents[name])
        assert text[: int(offset)].endswith(item.context + " ") and text[int(offset) :].startswith(item.target)
        assert len(item.target) >= 4 and item.target.isalpha() and item.target.lower() not in cz.STOPWORDS
        assert item.target.lower() in item.context.lower() and "[" not in item.context
        assert cz.CLOZE_MIN_CONTEXT_WORDS <= len(item.context.split()) <= cz.CLOZE_CONTEXT_WORDS
    json.dumps(protocol)


def test_cloze_items_of_an_undated_corpus_come_from_its_token_test_split(text_dir, tiny_tokenizer):
    from slimlm.data.corpus import prepare_data

    items, protocol = cz.cloze_items(str(text_dir), tiny_tokenizer, n=200)
    assert items and protocol["items"] == len(items) == protocol["candidates"]
    heldout = tiny_tokenizer.decode(prepare_data(str(text_dir), tiny_tokenizer).test.tolist())
    assert all(f"{item.context} {item.target}" in heldout for item in items)
    with pytest.raises(SlimlmError, match="pass a tokenizer"):
        cz.cloze_items(str(text_dir), None)


def test_teacher_forced_exact_match_is_greedy_generation(tiny, text_dir):
    model, tokenizer = tiny
    items, _ = cz.cloze_items(str(text_dir), tokenizer, n=200)
    # A random model with tied embeddings greedily repeats its last token, so a context ending in
    # " the" asks for "the" and is a hit: the set then holds hits and misses, single and multi-token.
    repeats = [cz.ClozeItem(item.context + " the", "the", "repeat") for item in items[:3]]
    hits = check_matches_generate(model, tokenizer, items + repeats)
    assert hits == cz.cloze_hits(model, tokenizer, items + repeats, progress=False)
    assert any(hits) and not all(hits)


def test_word_boundary_rule(tiny_tokenizer):
    tok = tiny_tokenizer
    the = tok(" the", add_special_tokens=False)["input_ids"]
    assert len(the) == 1
    assert cz.ends_word(tok, the, tok(".", add_special_tokens=False)["input_ids"][0])
    assert cz.ends_word(tok, the, the[0]) and cz.ends_word(tok, the, tok.eos_token_id)
    assert not cz.ends_word(tok, the, tok("m", add_special_tokens=False)["input_ids"][0])  # " them" is another word
    assert not cz.is_hit(tok, the, the)  # no token after the target: the word may go on


def test_run_tasks_cloze_is_flat_deterministic_and_serialisable(tiny, text_dir):
    model, tokenizer = tiny
    first = tasks.run_tasks(model, tokenizer, ["cloze"], data=str(text_dir), n=4, progress=False)
    assert set(first) == {"cloze_exact_match", "cloze_items", "downstream_protocol"}
    assert first["cloze_items"] == 4 and 0.0 <= first["cloze_exact_match"] <= 1.0
    again = tasks.run_tasks(model, tokenizer, "cloze", data=str(text_dir), n=4, progress=False)
    assert again["cloze_exact_match"] == first["cloze_exact_match"]
    assert json.loads(json.dumps(first))["downstream_protocol"]["cloze"]["items"] == 4


def test_rouge_of_a_reference_against_itself_is_one():
    refs = ["The proposed method improves translation of medical terms.", "They propose a new parser."]
    assert sm.rouge(refs, refs) == pytest.approx({"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0})
    assert sm.rouge(["zebra quilt"], refs[:1]) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    with pytest.raises(SlimlmError):
        sm.rouge(["one"], refs)


def test_aclsum_items_have_documents_and_human_references():
    items, protocol = sm.summarization_items(n=5, seed=0)
    assert len(items) == 5 and protocol["pool"] == 100
    assert sm.summarization_items(n=5, seed=0)[0] == items
    for item in items:
        assert 20 < len(item.document.split()) <= sm.SUMMARY_DOCUMENT_WORDS
        assert len(item.reference.split()) > 10 and " ." not in item.document
    json.dumps(protocol)


def test_summarization_scores_generated_text(tiny, monkeypatch):
    model, tokenizer = tiny
    documents = [
        "The nation is at peace. Our commerce grows and our revenue is ample.",
        "Congress should fund roads and canals to bind the states together.",
    ]
    summaries = sm.summarize(model, tokenizer, documents, max_new_tokens=6, progress=False)
    assert len(summaries) == 2 and all(isinstance(s, str) for s in summaries)
    assert "\n\n" not in "".join(summaries)
    # The whole task on the tiny model: the scores are those of the generated summaries.
    seen = {}
    real_rouge = sm.rouge

    def spy(predictions, references):
        seen.update(predictions=predictions, references=references)
        return real_rouge(predictions, references)

    monkeypatch.setattr(sm, "rouge", spy)
    out = tasks.run_tasks(model, tokenizer, ["summarization"], n=2, progress=False)
    assert set(out) == {"rouge1", "rouge2", "rougeL", "summarization_items", "downstream_protocol"}
    assert out["summarization_items"] == 2 and len(seen["predictions"]) == 2
    assert out["rouge1"] == pytest.approx(real_rouge(seen["predictions"], seen["references"])["rouge1"])
    assert json.loads(json.dumps(out))["downstream_protocol"]["summarization"]["template"] == sm.SUMMARY_TEMPLATE


def test_unknown_task_is_a_one_line_error(tiny):
    model, tokenizer = tiny
    for names in (["cloze", "qa"], [], "sumarization"):
        with pytest.raises(SlimlmError) as err:
            tasks.run_tasks(model, tokenizer, names)
        assert "cloze, summarization" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(SlimlmError, match="at least one"):
        tasks.run_tasks(model, tokenizer, ["cloze"], n=0)


def test_lm_eval_missing_is_a_one_line_error(tiny_teacher, monkeypatch):
    assert tasks.lm_eval_tasks is lm_eval.lm_eval_tasks  # the registry still offers it (stages/evaluate.py)
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval -> ImportError
    with pytest.raises(SlimlmError) as err:
        lm_eval.lm_eval_tasks(tiny_teacher, ["lambada_openai"])
    assert "pip install" in str(err.value) and "network" in str(err.value) and "\n" not in str(err.value)
    for kwargs in ({"tasks": []}, {"tasks": ["hellaswag"], "limit": 0}, {"tasks": ["hellaswag"], "batch_size": 0}):
        with pytest.raises(SlimlmError):
            lm_eval.lm_eval_tasks(tiny_teacher, **kwargs)


@pytest.mark.slow
def test_real_teacher_cloze_beats_random_init_and_matches_generate():
    """The built-in SmolLM2-135M reads the held-out speeches; the same shape with random weights cannot."""
    from slimlm.sources import load_model

    teacher, tokenizer, _ = load_model("smollm2-135m")
    items, _ = cz.cloze_items("sotu", tokenizer, n=24, seed=0)
    trained = sum(cz.cloze_hits(teacher, tokenizer, items, progress=False)) / len(items)
    torch.manual_seed(0)
    random_init = AutoModelForCausalLM.from_config(teacher.config).eval()
    untrained = sum(cz.cloze_hits(random_init, tokenizer, items, progress=False)) / len(items)
    assert trained >= 0.3 and trained >= untrained + 0.25, (trained, untrained)
    hits = check_matches_generate(teacher, tokenizer, items[:6])
    assert any(hits)
