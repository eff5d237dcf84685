"""`slimlm distill` across tokenizers: a byte-level BPE teacher and a SentencePiece-style student (both
tokenizers trained here on the built-in corpus), aligned examples, the fused cross-tokenizer loss against
autograd, and the run end to end: it trains, records the alignment, lowers the divergence on held-out text,
and writes a student with its own tokenizer."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import slimlm
from conftest import save_tiny_model
from slimlm.data.aligned_blocks import AlignedBlocks, aligned_block, alignment_summary, collate_aligned
from slimlm.errors import SlimlmError
from slimlm.losses.uld import cross_tokenizer_kd, shared_kl, uld

FAST = dict(block_size=32, batch_size=4, learning_rate=3e-3, bf16=False, logging_steps=1, eval_tokens=2048)


@pytest.fixture(scope="module")
def cross_student(metaspace_tokenizer, tmp_path_factory):
    """A 2-layer random Llama student with the SentencePiece-style tokenizer (the teacher's is byte-level)."""
    return save_tiny_model(tmp_path_factory.mktemp("cross-student"), metaspace_tokenizer, layers=2)


@pytest.fixture(scope="module")
def peaky_teacher(tiny_tokenizer, tmp_path_factory):
    """A random teacher whose next-token distributions are far from uniform (large initial weights), so a
    freshly initialised student starts far from it on every term of the loss."""
    from conftest import tiny_config

    torch.manual_seed(0)
    config = tiny_config(len(tiny_tokenizer))
    config.initializer_range = 0.3
    folder = tmp_path_factory.mktemp("peaky-teacher")
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


def test_aligned_positions_have_read_the_same_text(tiny_tokenizer, metaspace_tokenizer, speeches):
    eos = tiny_tokenizer.eos_token_id
    ids = tiny_tokenizer(speeches[0][-300:], add_special_tokens=False)["input_ids"] + [eos]
    ids += tiny_tokenizer(speeches[1][:300], add_special_tokens=False)["input_ids"]
    item = aligned_block(ids, tiny_tokenizer, metaspace_tokenizer, block_size=len(ids))
    s_ids, t_ids = item["input_ids"].tolist(), item["teacher_input_ids"].tolist()
    assert eos in s_ids and metaspace_tokenizer.eos_token_id in t_ids  # each side's own separator
    pairs = list(zip(item["student_positions"].tolist(), item["teacher_positions"].tolist()))
    assert len(pairs) > 0.5 * len(ids)
    for s, t in pairs:
        student_text = tiny_tokenizer.decode(s_ids[: s + 1], skip_special_tokens=True)
        teacher_text = metaspace_tokenizer.decode(t_ids[: t + 1], skip_special_tokens=True)
        # equal up to spaces: SentencePiece's decoder spells a document's first word with a leading space
        assert student_text.replace(" ", "") == teacher_text.replace(" ", "")


def test_a_batch_pads_the_teacher_and_the_positions(tiny_tokenizer, metaspace_tokenizer, speeches):
    ids = torch.tensor(tiny_tokenizer(speeches[2][:2000], add_special_tokens=False)["input_ids"][:96]).view(3, 32)
    data = AlignedBlocks(ids, tiny_tokenizer, metaspace_tokenizer)
    batch = collate_aligned([data[i] for i in range(3)])
    assert batch["input_ids"].shape == (3, 32) and batch["teacher_input_ids"].shape[0] == 3
    lengths = batch["teacher_attention_mask"].sum(1).tolist()
    assert max(lengths) == batch["teacher_input_ids"].shape[1]
    for b in range(3):  # padding is -1 and comes after every real position
        row = batch["teacher_positions"][b]
        valid = row.ge(0)
        assert valid.sum() == len(data[b]["teacher_positions"]) and row[valid].max() < lengths[b]
    summary = alignment_summary(data)
    assert summary["blocks_checked"] == 3 and 0.5 < summary["student_share"] <= 1


def test_text_that_aligns_nowhere_is_a_one_line_error(tiny_tokenizer, metaspace_tokenizer):
    only_separators = torch.full((2, 8), tiny_tokenizer.eos_token_id)
    with pytest.raises(SlimlmError, match="share no boundary"):
        alignment_summary(AlignedBlocks(only_separators, tiny_tokenizer, metaspace_tokenizer))


def test_fused_loss_matches_autograd_for_both_vocabulary_orders():
    torch.manual_seed(0)
    for vs, vt, cap in ((50, 80, None), (90, 40, None), (50, 80, 5.0)):
        h = torch.randn(13, 8, dtype=torch.float64, requires_grad=True)
        w = torch.randn(vs, 8, dtype=torch.float64, requires_grad=True)
        th, tw = torch.randn(13, 6, dtype=torch.float64), torch.randn(vt, 6, dtype=torch.float64)
        shared = (torch.tensor([3, 7, 1, 20, 33]), torch.tensor([5, 2, 9, 11, 30]))
        kd, kl, u = cross_tokenizer_kd(h, w, th, tw, shared=shared, temperature=2.0, chunk=4, student_softcap=cap)
        kd.backward()
        fused = h.grad.clone(), w.grad.clone()
        h.grad = w.grad = None
        zs = h @ w.T
        zs = torch.tanh(zs / cap) * cap if cap else zs
        zt = th @ tw.T
        kl_ref = 13 * shared_kl(zs, zt, *shared, temperature=2.0)
        uld_ref = 13 * uld(zs, zt, temperature=2.0)
        (4 * kl_ref + uld_ref).backward()
        assert kd.item() == pytest.approx((4 * kl_ref + uld_ref).item(), rel=1e-5)
        assert kl.item() == pytest.approx(kl_ref.item(), rel=1e-5) and u.item() == pytest.approx(
            uld_ref.item(), rel=1e-5
        )
        torch.testing.assert_close(fused[0], h.grad, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(fused[1], w.grad, atol=1e-5, rtol=1e-4)


def test_the_loss_is_zero_when_the_student_copies_the_teacher_on_matched_tokens():
    torch.manual_seed(2)
    shared = (torch.tensor([0, 4, 9, 12]), torch.tensor([7, 1, 3, 20]))
    teacher_logits = torch.full((5, 30), -1e4)
    teacher_logits[:, shared[1]] = torch.randn(5, 4)
    student_logits = torch.full((5, 16), -1e4)
    student_logits[:, shared[0]] = teacher_logits[:, shared[1]] + 3.0  # the same distribution, shifted logits
    # identity heads: the hidden states are the logits
    kd, kl, u = cross_tokenizer_kd(student_logits, torch.eye(16), teacher_logits, torch.eye(30), shared=shared)
    assert kd.item() == pytest.approx(0.0, abs=1e-5) and kl.item() == pytest.approx(0.0, abs=1e-5)
    other = torch.randn(5, 16)
    assert cross_tokenizer_kd(other, torch.eye(16), teacher_logits, torch.eye(30), shared=shared)[0].item() > 0.1


def test_distilling_across_tokenizers_lowers_the_divergence_on_held_out_text(
    peaky_teacher, cross_student, text_dir, metaspace_tokenizer
):
    out = slimlm.distill(
        teacher=str(peaky_teacher),
        student=str(cross_student),
        data=str(text_dir),
        out="student",
        alpha=0.0,
        temperature=1.0,
        max_steps=30,
        **FAST,
    )
    record = json.loads((out / "slimlm.json").read_text())
    cross = record["cross_tokenizer"]
    assert cross["mode"] == "aligned" and cross["shared_vocabulary"] > 50
    assert cross["student_vocabulary"] == len(metaspace_tokenizer) and 0.5 < cross["alignment"]["student_share"] <= 1
    before = record["metrics"]["validation_before"]["cross_tokenizer"]
    after = record["metrics"]["validation_after"]["cross_tokenizer"]
    assert after["kd"] < 0.8 * before["kd"] and after["shared_kl"] < before["shared_kl"], (before, after)
    assert {"ce", "kd", "uld", "shared_kl"} <= set(record["training"]["log"][-1])
    # the student keeps its own tokenizer and loads like any model
    assert AutoTokenizer.from_pretrained(out).get_vocab() == metaspace_tokenizer.get_vocab()
    assert AutoModelForCausalLM.from_pretrained(out).config.vocab_size == len(metaspace_tokenizer)


def test_uld_mode_needs_no_shared_vocabulary_and_same_tokenizer_runs_are_unchanged(
    tiny_teacher, cross_student, text_dir
):
    out = slimlm.distill(
        teacher=str(tiny_teacher),
        student=str(cross_student),
        data=str(text_dir),
        out="uld",
        cross_tokenizer="uld",
        max_steps=3,
        **FAST,
    )
    record = json.loads((out / "slimlm.json").read_text())
    assert record["cross_tokenizer"]["mode"] == "uld" and "shared_vocabulary" not in record["cross_tokenizer"]
    assert "shared_kl" not in record["metrics"]["validation_after"]["cross_tokenizer"]
    same = slimlm.distill(teacher=str(tiny_teacher), layers=2, data=str(text_dir), out="same", max_steps=2, **FAST)
    record = json.loads((same / "slimlm.json").read_text())
    assert record["cross_tokenizer"] is None and "uld" not in record["training"]["log"][-1]


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"feature_layers": "2:1", "feature_weight": 1.0}, "--feature-layers"),
        ({"teacher_cache": True, "cache_mode": "topk"}, "--cache-mode"),
        ({"kl": "reverse"}, "forward KL"),
    ],
)
def test_what_cannot_combine_with_another_tokenizer_is_refused(tiny_teacher, cross_student, text_dir, extra, message):
    with pytest.raises(SlimlmError, match=message) as info:
        slimlm.distill(
            teacher=str(tiny_teacher),
            student=str(cross_student),
            data=str(text_dir),
            out="refused",
            max_steps=1,
            **{**FAST, **extra},
        )
    assert "\n" not in str(info.value)


def test_the_cached_teacher_gives_the_online_loss_and_is_reused(
    tiny_teacher, cross_student, text_dir, capsys, tmp_path, monkeypatch
):
    monkeypatch.setenv("SLIMLM_CACHE", str(tmp_path / "cache"))
    common = dict(teacher=str(tiny_teacher), student=str(cross_student), data=str(text_dir), max_steps=3, **FAST)
    online = json.loads((slimlm.distill(out="online", **common) / "slimlm.json").read_text())
    cached = json.loads((slimlm.distill(out="cached", teacher_cache=True, **common) / "slimlm.json").read_text())
    storage = cached["training"]["teacher_cache_storage"]
    assert storage["mode"] == "cross-tokenizer" and storage["bytes_per_position"] == 2 * 32  # bf16 hidden states
    assert "teacher cache (cross-tokenizer" in capsys.readouterr().err
    for a, b in zip(online["training"]["log"][:3], cached["training"]["log"][:3]):  # bf16 rows: close, not equal
        assert b["kd"] == pytest.approx(a["kd"], rel=2e-2) and b["ce"] == pytest.approx(a["ce"], rel=1e-3)
    slimlm.distill(out="again", teacher_cache=True, **common)
    assert "reusing cached teacher outputs" in capsys.readouterr().err
    from slimlm.training.teacher_cache import list_entries

    assert [e["mode"] for e in list_entries()] == ["cross-tokenizer"]


def test_uld_over_the_top_entries_is_a_tight_lower_bound_with_the_right_gradient():
    torch.manual_seed(3)
    h = torch.randn(9, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(60, 8, dtype=torch.float64, requires_grad=True)
    th, tw = torch.randn(9, 6, dtype=torch.float64), torch.randn(90, 6, dtype=torch.float64)
    kd, _, _ = cross_tokenizer_kd(h, w, th, tw, uld_top=10)
    kd.backward()
    # reference, by autograd: the top 10 sorted entries one by one, the rest by their total mass
    ps, pt = torch.softmax(h @ w.T, -1), torch.softmax(th @ tw.T, -1)
    s_top, t_top = ps.topk(10, -1).values, pt.topk(10, -1).values
    reference = (s_top - t_top).abs().sum() + ((1 - s_top.sum(-1)) - (1 - t_top.sum(-1))).abs().sum()
    grads = torch.autograd.grad(reference, (h, w))
    assert kd.item() == pytest.approx(reference.item(), rel=1e-9)
    torch.testing.assert_close(h.grad, grads[0])
    torch.testing.assert_close(w.grad, grads[1])
    exact = 9 * uld(h @ w.T, th @ tw.T).item()
    smaller_tails = torch.minimum(1 - s_top.sum(-1), 1 - t_top.sum(-1)).sum().item()
    assert exact - 2 * smaller_tails - 1e-6 <= kd.item() <= exact + 1e-6
    assert cross_tokenizer_kd(h, w, th, tw, uld_top=90)[0].item() == pytest.approx(exact, rel=1e-5)
