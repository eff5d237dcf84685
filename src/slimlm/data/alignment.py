"""Where two tokenizations of the same text can be compared, and which tokens both vocabularies share.

A teacher and a student with different tokenizers cut the same text at different places, so their i-th
positions predict different things. At a character where a token of each ends, both models have read the
same text and predict what follows it: those boundaries are the positions a cross-tokenizer loss can compare
(the alignment of GOLD, TRL's cross-tokenizer trainer, here through the tokenizers' character offsets rather
than decoded pieces). Tokens that only cover part of a character (byte fallback, a byte-level BPE split
inside an emoji) end no boundary: the boundary belongs to the last token ending there. Special tokens cover
no text and are never aligned.

Next-token distributions at an aligned boundary are over two vocabularies; entries that decode to the same
text in both (`shared_vocabulary`) can be compared one to one, the rest only as sorted probability vectors
(Universal Logit Distillation, Boizard et al. 2024, arXiv 2402.12030; losses/uld.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from slimlm.cache import atomic_dir, cache_root, fingerprint
from slimlm.errors import SlimlmError


@dataclass
class Alignment:
    """Aligned boundaries of one text: student_index[k] and teacher_index[k] are the last tokens ending at
    the same character, chars[k]; each model's logits at that index predict the text after it."""

    student_index: list[int]
    teacher_index: list[int]
    chars: list[int]
    student_tokens: int
    teacher_tokens: int

    def summary(self) -> dict:
        n = len(self.chars)
        return {
            "aligned_positions": n,
            "student_tokens": self.student_tokens,
            "teacher_tokens": self.teacher_tokens,
            "student_share": n / self.student_tokens if self.student_tokens else 0.0,
            "teacher_share": n / self.teacher_tokens if self.teacher_tokens else 0.0,
        }


def token_ends(tokenizer, text: str) -> tuple[list[int], list[int]]:
    """Token ids of `text` (no special tokens added) and the character each token ends at."""
    if not getattr(tokenizer, "is_fast", False):
        raise SlimlmError(
            f"tokenizer {type(tokenizer).__name__} gives no character offsets (not a fast tokenizer), so its "
            "tokens cannot be aligned with another tokenizer's; use a model whose tokenizer.json loads as fast"
        )
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(encoded["input_ids"]), [end for _, end in encoded["offset_mapping"]]


def align(student_ends: list[int], teacher_ends: list[int]) -> Alignment:
    """The boundaries both tokenizations share: for each character where a token of each ends, the last
    such token on each side (tokens covering no text, end 0 after the first, are skipped)."""
    last_s, last_t = _last_token_at(student_ends), _last_token_at(teacher_ends)
    chars = sorted(set(last_s) & set(last_t))
    return Alignment(
        [last_s[c] for c in chars], [last_t[c] for c in chars], chars, len(student_ends), len(teacher_ends)
    )


def _last_token_at(ends: list[int]) -> dict[int, int]:
    """character -> index of the last token ending there, for tokens that cover text."""
    out, furthest = {}, 0
    for index, end in enumerate(ends):
        if end <= 0 or end < furthest:  # a special token (no text) or an offset running backwards
            continue
        out[end] = index
        furthest = end
    return out


def align_text(student_tokenizer, teacher_tokenizer, text: str) -> tuple[list[int], list[int], Alignment]:
    """Both tokenizations of `text` and their alignment; text that neither tokenizer covers is an error."""
    s_ids, s_ends = token_ends(student_tokenizer, text)
    t_ids, t_ends = token_ends(teacher_tokenizer, text)
    alignment = align(s_ends, t_ends)
    if not alignment.chars:
        raise SlimlmError(
            "the teacher's and the student's tokenizations of the text share no boundary (no common text); "
            "check that both tokenizers read the same language and that the text is not empty"
        )
    return s_ids, t_ids, alignment


def shared_vocabulary(student_tokenizer, teacher_tokenizer) -> tuple[list[int], list[int]]:
    """(student ids, teacher ids) of the entries that decode to the same non-empty text in both vocabularies,
    special tokens and partial characters (byte fallback pieces, which decode to U+FFFD) left out; where one
    vocabulary has several ids for one text, the lowest id stands for it."""
    s_text, t_text = _texts(student_tokenizer), _texts(teacher_tokenizer)
    common = sorted(set(s_text) & set(t_text), key=lambda text: s_text[text])
    return [s_text[text] for text in common], [t_text[text] for text in common]


def shared_vocabulary_cached(student_tokenizer, teacher_tokenizer) -> tuple[list[int], list[int]]:
    """`shared_vocabulary`, mapped once per pair of tokenizers and kept in the cache (decoding a 262k-entry
    vocabulary id by id takes a while)."""
    key = fingerprint(
        "shared-vocabulary-v1", tokenizer_identity(student_tokenizer), tokenizer_identity(teacher_tokenizer)
    )
    folder = cache_root() / "shared-vocabulary" / key
    if not (folder / "ids.json").is_file():
        student_ids, teacher_ids = shared_vocabulary(student_tokenizer, teacher_tokenizer)
        with atomic_dir(folder) as tmp:
            (tmp / "ids.json").write_text(json.dumps({"student": student_ids, "teacher": teacher_ids}))
    ids = json.loads((folder / "ids.json").read_text())
    return ids["student"], ids["teacher"]


def tokenizer_identity(tokenizer) -> str:
    """What decides how a tokenizer decodes: its whole tokenizer.json (vocabulary, decoder, normalizer) and its
    special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return fingerprint(body, sorted(tokenizer.all_special_ids))


def _texts(tokenizer) -> dict[str, int]:
    """text -> id. Each id is decoded after an anchor token and the anchor's text cut off, because
    SentencePiece decoders drop a leading space on the first token of a text ("▁the" alone decodes "the")."""
    special = set(tokenizer.all_special_ids)
    anchor = tokenizer("a", add_special_tokens=False)["input_ids"][-1:]
    base = tokenizer.decode(anchor, clean_up_tokenization_spaces=False)
    out = {}
    for index in sorted(set(tokenizer.get_vocab().values())):
        if index in special:
            continue
        text = tokenizer.decode(anchor + [index], clean_up_tokenization_spaces=False)
        if text.startswith(base):
            text = text[len(base) :]
        if text and "\ufffd" not in text:
            out.setdefault(text, index)
    return out
