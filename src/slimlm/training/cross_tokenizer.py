"""Distillation from a teacher with another tokenizer (`slimlm distill --student S --cross-tokenizer`):
whether a run needs it, what it cannot combine with, and its pieces (the aligned examples of
data/aligned_blocks.py, the shared vocabulary of data/alignment.py, the loss term CrossTokenizerTerm of
training/terms.py) with what slimlm.json records about them.

The usual loss compares the two models token by token, which only means something when both cut the text
the same way; across tokenizers it compares them where both have read the same text, over the vocabulary
entries both share (KL) and over sorted distributions (ULD, Boizard et al. 2024, arXiv 2402.12030).
"""

from __future__ import annotations

import torch

from slimlm import distributed
from slimlm import precision as precisions
from slimlm.data.aligned_blocks import AlignedBlocks, alignment_summary, collate_aligned, flat_positions
from slimlm.data.alignment import shared_vocabulary_cached, token_ends
from slimlm.distributed import log
from slimlm.errors import SlimlmError
from slimlm.losses.uld import cross_tokenizer_kd
from slimlm.training.cross_cache import CrossCachedTeacher, cross_teacher_cache
from slimlm.training.terms import CrossTokenizerTerm

__all__ = ["collate_aligned", "cross_tokenizer_mode", "cross_tokenizer_setup", "held_out_divergence"]


def cross_tokenizer_mode(settings, teacher_tokenizer, student_tokenizer) -> str | None:
    """ "aligned" or "uld" when this run distils across tokenizers, None for the usual token-by-token loss.
    `auto` switches only when the vocabularies differ, so same-tokenizer runs are unchanged."""
    same = teacher_tokenizer.get_vocab() == student_tokenizer.get_vocab()
    if settings.cross_tokenizer == "auto":
        if same:
            return None
        mode = "aligned"
    else:
        mode = settings.cross_tokenizer
    where = "the teacher and the student use different tokenizers" if not same else f"--cross-tokenizer {mode}"
    if settings.feature_layers or settings.attention_layers:
        raise SlimlmError(
            f"{where}, so their positions differ and --feature-layers / --attention-layers cannot pair them; "
            "drop those flags (the cross-tokenizer loss compares output distributions only)"
        )
    if settings.teacher_cache and (settings.cache_mode != "sample" or settings.cache_draws is not None):
        raise SlimlmError(
            f"{where}: its teacher cache keeps the teacher's final hidden states (exact, no draws or top-k), so "
            "--cache-mode and --cache-draws do not apply; drop them"
        )
    if settings.kl != "forward":
        raise SlimlmError(f"{where}: the cross-tokenizer loss uses the forward KL only; drop --kl {settings.kl}")
    for name, tokenizer in (("teacher", teacher_tokenizer), ("student", student_tokenizer)):
        try:
            token_ends(tokenizer, "a")
        except SlimlmError as exc:
            raise SlimlmError(f"the {name}'s {exc}") from None
    return mode


def cross_tokenizer_setup(
    settings, mode: str, teacher, teacher_dir, student, blocks, teacher_tokenizer, student_tokenizer, precision
):
    """(loss terms, training dataset, slimlm.json record, the teacher cache or None) of a cross-tokenizer run;
    the alignment and the shared vocabulary are printed. With --teacher-cache the teacher runs once over the
    blocks now (rank 0; the others read what it wrote) and the term holds its output head."""
    dataset = AlignedBlocks(blocks, student_tokenizer, teacher_tokenizer)
    alignment = alignment_summary(dataset)
    log(
        f"cross-tokenizer ({mode}): on {alignment['blocks_checked']} training blocks, "
        f"{alignment['aligned_positions']:,} positions align, {alignment['student_share']:.0%} of the student's "
        f"tokens and {alignment['teacher_share']:.0%} of the teacher's"
    )
    shared = None
    info = {
        "mode": mode,
        "alignment": alignment,
        "student_vocabulary": len(student_tokenizer),
        "teacher_vocabulary": len(teacher_tokenizer),
    }
    if mode == "aligned":
        s_ids, t_ids = shared_vocabulary_cached(student_tokenizer, teacher_tokenizer)
        if not s_ids:
            raise SlimlmError(
                "the teacher's and the student's vocabularies share no entry that decodes to the same text; "
                "use --cross-tokenizer uld (it needs no shared entries)"
            )
        # an id past a model's output head (a tokenizer with added tokens the model never learnt) is left out
        s_rows, t_rows = (m.get_output_embeddings().weight.shape[0] for m in (student, teacher))
        pairs = [(s, t) for s, t in zip(s_ids, t_ids) if s < s_rows and t < t_rows]
        shared = (torch.tensor([s for s, _ in pairs]), torch.tensor([t for _, t in pairs]))
        info["shared_vocabulary"] = len(pairs)
        log(
            f"cross-tokenizer: {len(pairs):,} vocabulary entries decode to the same text in both "
            f"({len(pairs) / len(student_tokenizer):.0%} of the student's {len(student_tokenizer):,}, "
            f"{len(pairs) / len(teacher_tokenizer):.0%} of the teacher's {len(teacher_tokenizer):,})"
        )
    cached = None
    if settings.teacher_cache:
        device = torch.device("cuda", distributed.local_rank()) if torch.cuda.is_available() else None
        entry = distributed.main_first(
            cross_teacher_cache, teacher, teacher_dir, dataset, precision=precision, device=device
        )
        teacher.to("cpu")  # the run reads the cache; only the head is used, from the term
        cached = CrossCachedTeacher(entry)
        dataset = AlignedBlocks(blocks, student_tokenizer, teacher_tokenizer, cached)
    term = CrossTokenizerTerm(
        settings.temperature,
        settings.alpha,
        shared,
        settings.chunk_size,
        teacher_softcap=_softcap(teacher),
        student_softcap=_softcap(student),
        teacher_head=teacher.get_output_embeddings().weight.detach() if cached else None,
    )
    return [term], dataset, info, cached


def _softcap(model) -> float | None:
    """The model's final logit soft-capping (Gemma 2), which its logits go through and so must the loss's."""
    return getattr(model.config.get_text_config(), "final_logit_softcapping", None) or None


@torch.no_grad()
def held_out_divergence(student, teacher, term: CrossTokenizerTerm, tokens, block_size, tokenizers, precision, batch=4):
    """How far the student is from the teacher on held-out text, per aligned position: the shared-vocabulary
    KL (aligned mode) and ULD of the run's loss term, and their weighted sum "kd" (tau^2 KL + ULD), measured
    the way training measures them. `tokens`: the student's validation tokens; `tokenizers`: (student's,
    teacher's)."""
    n = len(tokens) // block_size
    if n == 0:
        raise SlimlmError(f"the validation split has fewer than {block_size} tokens; give more text")
    dataset = AlignedBlocks(tokens[: n * block_size].view(n, block_size), *tokenizers)
    sums = {"kd": 0.0, "shared_kl": 0.0, "uld": 0.0}
    positions = 0
    devices = [next(m.parameters()).device for m in (student, teacher)]
    # both heads in fp32 on the student's device once, not per batch (the teacher's may be 262k rows)
    heads = [m.get_output_embeddings().weight.float().to(devices[0]) for m in (student, teacher)]
    was_training = student.training
    student.eval()
    for start in range(0, n, batch):
        inputs = collate_aligned([dataset[i] for i in range(start, min(n, start + batch))])
        with precisions.autocast(precision, devices[0].type):
            s_out = student(
                input_ids=inputs["input_ids"].to(devices[0]),
                attention_mask=inputs["attention_mask"].to(devices[0]),
                output_hidden_states=True,
                logits_to_keep=1,
            )
            t_out = teacher(
                input_ids=inputs["teacher_input_ids"].to(devices[1]),
                attention_mask=inputs["teacher_attention_mask"].to(devices[1]),
                output_hidden_states=True,
                logits_to_keep=1,
            )
        s_rows = flat_positions(inputs["student_positions"], inputs["input_ids"].shape[1]).to(devices[0])
        t_rows = flat_positions(inputs["teacher_positions"], inputs["teacher_input_ids"].shape[1]).to(devices[1])
        kd, kl, uld = cross_tokenizer_kd(
            s_out.hidden_states[-1].flatten(0, 1).index_select(0, s_rows).float(),
            heads[0],
            t_out.hidden_states[-1].flatten(0, 1).index_select(0, t_rows).float().to(devices[0]),
            heads[1],
            shared=term.shared,
            temperature=term.temperature,
            teacher_softcap=term.teacher_softcap,
            student_softcap=term.student_softcap,
        )
        sums["kd"] += float(kd)
        sums["shared_kl"] += float(kl)
        sums["uld"] += float(uld)
        positions += len(s_rows)
    student.train(was_training)
    out = {k: round(v / max(positions, 1), 5) for k, v in sums.items()}
    if term.shared is None:
        out.pop("shared_kl")
    return {**out, "aligned_positions": positions, "blocks": n}
