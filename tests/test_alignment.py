"""Cross-tokenizer building blocks: boundaries two tokenizations share (byte fallback, spaces, characters
split across tokens), the vocabulary both share, and the losses that compare two vocabularies' distributions
(ULD on sorted probabilities, KL on the shared entries)."""

from __future__ import annotations

import types

import pytest
import torch

from slimlm.data.alignment import align, align_text, shared_vocabulary, token_ends
from slimlm.errors import SlimlmError
from slimlm.losses.uld import shared_kl, uld

TEXT = "Hello  wörld: the naïve café costs 3€ 😀 — Fellow-Citizens of the Senate!"


def test_aligned_boundaries_are_where_both_have_read_the_same_text(tiny_tokenizer, metaspace_tokenizer):
    s_ids, t_ids, a = align_text(tiny_tokenizer, metaspace_tokenizer, TEXT)
    assert 0 < len(a.chars) <= min(len(s_ids), len(t_ids)) and a.chars[-1] == len(TEXT)
    for si, ti, c in zip(a.student_index, a.teacher_index, a.chars):
        # each side's tokens up to the aligned index spell exactly the text up to that character
        assert tiny_tokenizer.decode(s_ids[: si + 1]) == TEXT[:c]
        assert _spell(metaspace_tokenizer, t_ids[: ti + 1]) == TEXT[:c]
    summary = a.summary()
    assert summary["aligned_positions"] == len(a.chars) and 0 < summary["student_share"] <= 1


def _spell(tokenizer, ids) -> str:
    """The text SentencePiece-style tokens stand for (decode() drops a trailing lone space, so it is no oracle)."""
    raw = b"".join(
        bytes([int(p[3:5], 16)]) if p.startswith("<0x") else p.replace("\u2581", " ").encode()
        for p in tokenizer.convert_ids_to_tokens(ids)
    )
    return raw.decode("utf-8", errors="replace").removeprefix(" ")


def test_a_character_split_across_tokens_ends_no_boundary_until_it_is_whole(metaspace_tokenizer):
    ids, ends = token_ends(metaspace_tokenizer, "a 😀 b")
    pieces = [metaspace_tokenizer.convert_ids_to_tokens(i) for i in ids]
    assert sum(p.startswith("<0x") for p in pieces) == 4  # the emoji is four byte-fallback tokens
    a = align(ends, ends)
    byte_positions = [i for i, p in enumerate(pieces) if p.startswith("<0x")]
    assert byte_positions[-1] in a.student_index and not set(byte_positions[:-1]) & set(a.student_index)


def test_tokens_covering_no_text_are_never_aligned():
    a = align([0, 3, 5, 5, 9], [3, 0, 4, 5, 9])
    assert a.chars == [3, 5, 9] and a.student_index == [1, 3, 4] and a.teacher_index == [0, 3, 4]


def test_bad_inputs_are_one_line_errors(tiny_tokenizer):
    with pytest.raises(SlimlmError, match="no character offsets"):
        token_ends(types.SimpleNamespace(is_fast=False), "text")
    with pytest.raises(SlimlmError, match="share no boundary"):
        align_text(tiny_tokenizer, tiny_tokenizer, "")


def test_shared_vocabulary_pairs_entries_that_spell_the_same_text(tiny_tokenizer, metaspace_tokenizer):
    s, t = shared_vocabulary(tiny_tokenizer, metaspace_tokenizer)
    assert len(s) == len(t) > 50 and len(set(s)) == len(s) and len(set(t)) == len(t)
    anchor_s = tiny_tokenizer("a", add_special_tokens=False)["input_ids"]
    anchor_t = metaspace_tokenizer("a", add_special_tokens=False)["input_ids"]
    for si, ti in zip(s, t):
        assert tiny_tokenizer.decode(anchor_s + [si])[1:] == metaspace_tokenizer.decode(anchor_t + [ti])[1:]
    spaced = [tiny_tokenizer.decode(anchor_s + [i])[1:] for i in s]
    assert any(w.startswith(" ") and len(w) > 2 for w in spaced)  # " the"-like entries match across conventions


def test_uld_is_zero_for_the_same_sorted_distribution_and_trains_towards_it():
    torch.manual_seed(0)
    teacher = torch.randn(6, 70)
    teacher[:, 50:] = float("-inf")  # 20 teacher entries with probability 0
    student = torch.stack([row[:50][torch.randperm(50)] for row in teacher])  # same values, other tokens
    assert uld(student, teacher).item() == pytest.approx(0.0, abs=1e-6)
    assert uld(student, teacher, chunk=4).item() == pytest.approx(0.0, abs=1e-6)
    start = torch.randn(6, 50, requires_grad=True)
    first = uld(start, teacher).item()
    optimizer = torch.optim.SGD([start], lr=5.0)
    for _ in range(200):
        optimizer.zero_grad()
        loss = uld(start, teacher, chunk=4)
        loss.backward()
        optimizer.step()
    assert first > 0.1 and uld(start, teacher).item() < 0.3 * first


def test_shared_kl_is_zero_when_the_student_copies_the_shared_entries():
    torch.manual_seed(1)
    teacher, student = torch.randn(5, 40), torch.randn(5, 30)
    t_ids, s_ids = torch.tensor([3, 7, 11, 20]), torch.tensor([0, 5, 9, 29])
    copied = student.clone()
    copied[:, s_ids] = teacher[:, t_ids] + 2.0  # same distribution over the shared entries
    assert shared_kl(copied, teacher, s_ids, t_ids).item() == pytest.approx(0.0, abs=1e-6)
    apart = shared_kl(student, teacher, s_ids, t_ids, chunk=2)
    assert apart.item() > 0 and apart.item() == pytest.approx(shared_kl(student, teacher, s_ids, t_ids).item())
    with pytest.raises(ValueError, match="aligned rows"):
        uld(student[:3], teacher)
