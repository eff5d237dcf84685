"""What a student writes, not only how it predicts: its continuations of held-out prompts, scored by the teacher.

Perplexity scores the student on the data's tokens; on-policy distillation trains it on its own. These metrics say
whether that helped where it is aimed: the teacher's NLL of the student's continuations (sampled and greedy: lower
means text the teacher finds likely), the student's own NLL of its samples (low with high teacher NLL = confident
drift), diversity (distinct-n over all continuations) and degeneration (rep-4 within a continuation), and ROUGE-L of
the student's greedy continuation against the teacher's. Fixed length, no stopping at end-of-text, one seed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from slimlm.errors import SlimlmError
from slimlm.eval.decode import evaluating, sample_continuations
from slimlm.eval.metrics import keeps_logits, model_device
from slimlm.precision import autocast

LOGIT_BUDGET = 2**24  # floats of logits alive at once while scoring (64 MiB in fp32)


def continuation_nll(model, prompts: torch.Tensor, continuations: torch.Tensor, *, precision=None) -> float:
    """Mean per-token NLL (nats, at temperature 1) that `model` gives `continuations` (B, C) after `prompts` (B, P):
    one forward over prompt + continuation, only the continuation's C tokens scored. Rows go through in groups
    small enough that their (C x vocab) logits stay within LOGIT_BUDGET floats."""
    prompts, continuations = torch.as_tensor(prompts), torch.as_tensor(continuations)
    if prompts.dim() != 2 or continuations.dim() != 2 or prompts.shape[0] != continuations.shape[0]:
        raise SlimlmError(
            f"prompts {tuple(prompts.shape)} and continuations {tuple(continuations.shape)}: "
            "pass two (batch, tokens) tensors with the same batch"
        )
    device = model_device(model)
    ids = torch.cat([prompts, continuations], dim=1).to(device=device, dtype=torch.long)
    length, new = prompts.shape[1], continuations.shape[1]
    rows = max(1, LOGIT_BUDGET // ((new + 1) * model.config.vocab_size))
    keep = {"logits_to_keep": new + 1} if keeps_logits(model) else {}
    total = 0.0
    with evaluating(model), torch.no_grad(), autocast(precision, device.type):
        for b in range(0, ids.shape[0], rows):
            chunk = ids[b : b + rows]
            logits = model(input_ids=chunk, use_cache=False, **keep).logits[:, -(new + 1) : -1]
            target = chunk[:, length:]
            total += F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), reduction="sum").item()
    return total / continuations.numel()


def _rows(sequences) -> list[list[int]]:
    return sequences.tolist() if isinstance(sequences, torch.Tensor) else [list(s) for s in sequences]


def _ngrams(row: list[int], n: int) -> list[tuple]:
    return [tuple(row[i : i + n]) for i in range(len(row) - n + 1)]


def distinct_n(sequences, n: int) -> float | None:
    """Unique n-grams / all n-grams, pooled over every sequence (n-grams never cross two sequences); None when
    no sequence has n tokens."""
    grams = [g for row in _rows(sequences) for g in _ngrams(row, n)]
    return len(set(grams)) / len(grams) if grams else None


def repetition(sequences, n: int = 4) -> float | None:
    """rep-n: 1 - unique/all n-grams within each sequence, averaged over sequences (0 = no n-gram repeats,
    near 1 = a loop); sequences shorter than n are left out, None when all are."""
    rates = []
    for row in _rows(sequences):
        grams = _ngrams(row, n)
        if grams:
            rates.append(1 - len(set(grams)) / len(grams))
    return sum(rates) / len(rates) if rates else None


def lcs_length(a: list, b: list) -> int:
    """Length of the longest common subsequence (not necessarily contiguous), O(len(a) * len(b))."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(prediction, reference) -> float:
    """ROUGE-L F-measure (Lin, 2004; beta = 1 as rouge-score) of two token sequences, on ids. The repo's
    eval/summarization.rouge scores text through rouge-score's word tokenizer and stemmer, which has no
    meaning for token ids, so the LCS is computed here."""
    prediction, reference = list(prediction), list(reference)
    common = lcs_length(prediction, reference)
    if not common:
        return 0.0
    p, r = common / len(prediction), common / len(reference)
    return 2 * p * r / (p + r)


def generation_metrics(
    student, teacher, prompts: torch.Tensor, *, new_tokens: int, temperature: float = 1.0, seed: int = 0, precision=None
) -> dict:
    """The student's continuations of `prompts` (B, P), judged (module docstring), as a flat JSON-ready dict:
    teacher_nll_sampled, teacher_nll_greedy, student_nll_sampled (mean nats/token at temperature 1), distinct_1..4
    and rep_4 of the sampled continuations, rep_4_greedy, rougeL_vs_teacher (student greedy vs teacher greedy,
    mean over prompts), and the protocol (prompts, new_tokens, temperature, seed, rollout seconds).
    Deterministic given `seed`: sampling uses its own torch.Generator, the global RNG is untouched."""
    prompts = torch.as_tensor(prompts)
    generator = torch.Generator(device=model_device(student)).manual_seed(seed)
    sampled = sample_continuations(
        student, prompts, new_tokens, temperature=temperature, generator=generator, precision=precision
    )
    greedy = sample_continuations(student, prompts, new_tokens, greedy=True, precision=precision)
    teacher_greedy = sample_continuations(teacher, prompts, new_tokens, greedy=True, precision=precision)
    result = {
        "teacher_nll_sampled": continuation_nll(teacher, prompts, sampled.tokens, precision=precision),
        "teacher_nll_greedy": continuation_nll(teacher, prompts, greedy.tokens, precision=precision),
        "student_nll_sampled": continuation_nll(student, prompts, sampled.tokens, precision=precision),
    }
    for n in range(1, 5):
        result[f"distinct_{n}"] = distinct_n(sampled.tokens, n)
    result["rep_4"] = repetition(sampled.tokens, 4)
    result["rep_4_greedy"] = repetition(greedy.tokens, 4)
    pairs = zip(_rows(greedy.tokens), _rows(teacher_greedy.tokens))
    result["rougeL_vs_teacher"] = sum(rouge_l(s, t) for s, t in pairs) / prompts.shape[0]
    result["generation_protocol"] = {
        "prompts": prompts.shape[0],
        "prompt_tokens": prompts.shape[1],
        "new_tokens": new_tokens,
        "temperature": temperature,
        "seed": seed,
        "sampling": "Gumbel-max from the full softmax (no top-k/top-p), fixed length (no stop at end-of-text)",
        "rollout_seconds": round(sampled.seconds + greedy.seconds, 2),
    }
    return result
