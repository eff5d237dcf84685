"""Training examples for a teacher and a student with different tokenizers (`slimlm distill
--cross-tokenizer`): each student token block becomes text again, both tokenizers cut that text, and the
positions where both have read the same text are listed (data/alignment.py), so the loss can compare the
two models there.

The block's text is decoded from the student's ids and tokenized again by the student, with offsets: the
student trains on that re-tokenization (the same ids as the block except, at most, where the block's first
or last word was cut), so every student position has a character offset. Documents inside a block (the
corpus joins them with the end-of-text token) are aligned one by one, each tokenizer's own end-of-text token
between them; the teacher also gets the tokens its tokenizer puts before a text (Gemma's <bos>), which cover
no text and are never aligned.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from slimlm.data.alignment import align, token_ends
from slimlm.errors import SlimlmError
from slimlm.losses import IGNORE_INDEX


def aligned_block(
    ids: list[int], student_tokenizer, teacher_tokenizer, block_size: int, teacher_prefix: list[int] | None = None
) -> dict:
    """One block as a cross-tokenizer example: the student's input (block_size, padded), the teacher's input
    (its own length) and the aligned positions of each (student_positions[k] and teacher_positions[k] read
    the same text). `teacher_prefix`: leading_special(teacher_tokenizer), when the caller has it already."""
    s_eos, t_eos = student_tokenizer.eos_token_id, teacher_tokenizer.eos_token_id
    prefix = leading_special(teacher_tokenizer) if teacher_prefix is None else teacher_prefix
    student, teacher = [], list(prefix)
    s_pos, t_pos = [], []
    for n, segment in enumerate(_split(ids, s_eos)):
        if n:  # the end-of-text token that separated two documents, in each tokenizer's own spelling
            student.append(s_eos)
            if t_eos is not None:
                teacher.append(t_eos)
        text = student_tokenizer.decode(segment, clean_up_tokenization_spaces=False)
        if not text:
            continue
        s_ids, s_ends = token_ends(student_tokenizer, text)
        t_ids, t_ends = token_ends(teacher_tokenizer, text)
        a = align(s_ends, t_ends)
        s_pos += [len(student) + i for i in a.student_index]
        t_pos += [len(teacher) + i for i in a.teacher_index]
        student += s_ids
        teacher += t_ids
    keep = [k for k, p in enumerate(s_pos) if p < block_size]
    student = student[:block_size]
    n = len(student)
    input_ids = torch.full((block_size,), s_eos if s_eos is not None else 0, dtype=torch.long)
    input_ids[:n] = torch.tensor(student, dtype=torch.long)
    labels = torch.full((block_size,), IGNORE_INDEX, dtype=torch.long)
    labels[:n] = input_ids[:n]
    shift = torch.full((block_size,), IGNORE_INDEX, dtype=torch.long)
    shift[: max(n - 1, 0)] = input_ids[1:n]
    mask = torch.zeros(block_size, dtype=torch.long)
    mask[:n] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": mask,
        "labels": labels,
        "shift_labels": shift,
        "teacher_input_ids": torch.tensor(teacher, dtype=torch.long),
        "student_positions": torch.tensor([s_pos[k] for k in keep], dtype=torch.long),
        "teacher_positions": torch.tensor([t_pos[k] for k in keep], dtype=torch.long),
    }


def _split(ids, eos):
    """The block's documents: runs of ids between end-of-text tokens (empty runs kept, so separators count)."""
    out, current = [], []
    for i in ids:
        if eos is not None and i == eos:
            out.append(current)
            current = []
        else:
            current.append(i)
    out.append(current)
    return out


def leading_special(tokenizer) -> list[int]:
    """The special tokens the tokenizer puts before any text (Gemma, Llama: <bos>; GPT-2 style: none)."""
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    for start in range(len(with_special) - len(plain) + 1):
        if with_special[start : start + len(plain)] == plain:
            return with_special[:start]
    return []


class AlignedBlocks(Dataset):
    """Student token blocks as cross-tokenizer examples, made when read (tokenizing is cheap next to a
    teacher forward). `cached[i]`: the teacher's cached final hidden states at block i's aligned positions
    (training/cross_cache.py), added as "teacher_hidden_aligned"."""

    def __init__(self, blocks: torch.Tensor, student_tokenizer, teacher_tokenizer, cached=None):
        self.blocks, self.student_tokenizer, self.teacher_tokenizer = blocks, student_tokenizer, teacher_tokenizer
        self.cached = cached
        self.teacher_prefix = leading_special(teacher_tokenizer)  # once, not per block

    def __len__(self):
        return len(self.blocks)

    def __getitem__(self, i):
        item = aligned_block(
            self.blocks[i].tolist(),
            self.student_tokenizer,
            self.teacher_tokenizer,
            self.blocks.shape[1],
            self.teacher_prefix,
        )
        if self.cached is not None:
            hidden = self.cached[i]
            if len(hidden) != len(item["student_positions"]):
                raise SlimlmError(
                    f"the teacher cache holds {len(hidden)} aligned positions for block {i}, the tokenizers give "
                    f"{len(item['student_positions'])}: the cache was made by other tokenizers; remove it "
                    "(`slimlm cache list`, `slimlm cache remove KEY`) and run again"
                )
            item["teacher_hidden_aligned"] = hidden
        return item


def collate_aligned(items: list[dict]) -> dict:
    """A batch of aligned examples: fixed-size student tensors stacked; the teacher's ids padded to the batch's
    longest (with its attention mask), the aligned positions padded with -1 (cached teacher rows with zeros)."""
    batch = {k: torch.stack([it[k] for it in items]) for k in ("input_ids", "attention_mask", "labels", "shift_labels")}
    batch["teacher_input_ids"] = _pad([it["teacher_input_ids"] for it in items], 0)
    batch["teacher_attention_mask"] = _pad([torch.ones_like(it["teacher_input_ids"]) for it in items], 0)
    batch["student_positions"] = _pad([it["student_positions"] for it in items], -1)
    batch["teacher_positions"] = _pad([it["teacher_positions"] for it in items], -1)
    if "teacher_hidden_aligned" in items[0]:  # cached teacher rows, padded like the positions
        rows = [it["teacher_hidden_aligned"] for it in items]
        padded = rows[0].new_zeros(len(rows), batch["student_positions"].shape[1], rows[0].shape[1])
        for b, r in enumerate(rows):
            padded[b, : len(r)] = r
        batch["teacher_hidden_aligned"] = padded
    return batch


def _pad(rows: list[torch.Tensor], value: int) -> torch.Tensor:
    width = max(1, max(len(r) for r in rows))
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for b, r in enumerate(rows):
        out[b, : len(r)] = r
    return out


def flat_positions(positions: torch.Tensor, length: int) -> torch.Tensor:
    """Row-major indices into a (batch, length) tensor flattened to (batch * length) for the valid (>= 0)
    entries of a padded (batch, k) position table, in order."""
    rows = torch.arange(positions.shape[0], device=positions.device).unsqueeze(1).expand_as(positions)
    valid = positions >= 0
    return rows[valid] * length + positions[valid]


def alignment_summary(dataset: AlignedBlocks, n: int = 32) -> dict:
    """How well the tokenizations line up on the first `n` blocks: aligned positions and the share of each
    side's tokens they are; an error when nothing aligns (the tokenizers read the text in no common place)."""
    s_tokens = t_tokens = aligned = 0
    for i in range(min(n, len(dataset))):
        item = dataset[i]
        s_tokens += int(item["attention_mask"].sum())
        t_tokens += len(item["teacher_input_ids"])
        aligned += len(item["student_positions"])
    if not aligned:
        raise SlimlmError(
            "the teacher's and the student's tokenizations of the training text share no boundary (no common "
            "text); check that both tokenizers read this language and that the text is not empty"
        )
    return {
        "blocks_checked": min(n, len(dataset)),
        "aligned_positions": aligned,
        "student_tokens": s_tokens,
        "teacher_tokens": t_tokens,
        "student_share": round(aligned / s_tokens, 4),
        "teacher_share": round(aligned / t_tokens, 4),
    }
