"""Cloze: last-word question answering in the style of LAMBADA (Paperno et al., 2016), built offline from
the held-out test split of a corpus (docs/downstream.md).

The model reads a passage and must produce its sentence-final word; scored by exact match of greedy
decoding. The default corpus `sotu` holds out the speeches from 2024 on from every training run, so the
items come from text no model was trained or tuned on.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from slimlm.errors import SlimlmError
from slimlm.eval.metrics import keeps_logits, max_positions, model_device
from slimlm.eval.sampling import seeded_sample

CLOZE_ITEMS = 200  # default sample size: a 95% interval of about +-6 points at 30% accuracy
CLOZE_CONTEXT_WORDS = 100  # bounded context: about 130 tokens an item keeps the forward passes cheap on CPU
CLOZE_MAX_CONTEXT_TOKENS = 256
CLOZE_MIN_CONTEXT_WORDS = 20
CLOZE_MIN_TARGET_LETTERS = 4
CLOZE_MIN_SENTENCE_WORDS = 4  # drops transcript labels ("The President.") and "Thank you, Megan."

# Function words are not content words: predicting "them" or "there" tests grammar, not reading.
STOPWORDS = frozenset(
    """
about above after again against also although among another anyone anything around because been
before being below between both cannot could does doing down during each either else enough even
ever every everyone everything from further have having here hers herself himself into itself just
least less like made make many more most much must myself neither never none nothing often once
only other others ours ourselves over perhaps quite rather really same several shall should since
some something still such than that their theirs them themselves then there these they this those
though through thus together too toward towards under until upon very well were what whatever when
where whether which while whom whose will with within without would your yours yourself
""".split()
)

# A sentence-final word: preceded by a plain space (the target is " word"), letters only, then
# terminal punctuation, optional closing quotes/brackets, then whitespace or the end of the text.
_TARGET = re.compile(r"(?<= )([A-Za-z]+)[.!?](?=[\"'\u201d\u2019)\]]*(?:\s|$))")
_SENTENCE_START = re.compile(r"[.!?][\"'\u201d\u2019)\]]*\s+")
_ANNOTATION = re.compile(r"(—)\[[^\]\n]*\]\.|[ \t]*\[[^\]\n]*\]")  # stage directions: [Laughter], [applause]


@dataclass(frozen=True)
class ClozeItem:
    """One last-word question: `context` is followed in the source by " " + `target`."""

    context: str
    target: str
    source: str  # document name and character offset of the target


# --------------------------------------------------------------------------- the items


def heldout_documents(data: str, tokenizer) -> tuple[list[tuple[str, str]], str]:
    """(name, text) of the held-out test split of `data`, and a line saying how it was found.

    Items must come from text no model was trained or tuned on: for a dated corpus (built-in
    `sotu`) these are the raw test-year documents; otherwise the test split is defined on the
    token stream (the last 5%), so that stream is decoded and cut at end-of-text tokens."""
    from slimlm.data.corpus import load_corpus, prepare_data
    from slimlm.data.mix import is_mix, parse_mix

    if is_mix(data):  # a mix's test text is its parts'; the items come from the first part named
        data = parse_mix(data)[0][0]
    corpus = load_corpus(data)
    if corpus.test_from is not None:
        docs = [(d.name, d.text) for d in corpus.documents if d.year >= corpus.test_from]
        return docs, f"{corpus.name} test split: documents from {corpus.test_from} on"
    if corpus.rule is not None:
        docs = [(d.name, d.text) for d in corpus.documents if d.split == "test"]
        return docs, f"{corpus.name} test split: {corpus.rule}"
    if tokenizer is None:
        raise SlimlmError(f"corpus {data} has no dated split, so its test split is defined on tokens: pass a tokenizer")
    test = prepare_data(data, tokenizer).test.tolist()
    eos, pieces, cur = tokenizer.eos_token_id, [], []
    for t in test:
        if t == eos:
            pieces.append(cur)
            cur = []
        else:
            cur.append(t)
    pieces.append(cur)
    docs = [(f"{corpus.name}:test:{i}", tokenizer.decode(p)) for i, p in enumerate(pieces) if p]
    return docs, f"{corpus.name} test split: the last 5% of the token stream, decoded"


def strip_annotations(text: str) -> str:
    """Drop transcript annotations ([Laughter], [applause]) so no target or context is a stage direction."""
    return _ANNOTATION.sub(lambda m: m.group(1) or "", text)  # "Ukraine—[applause]. Ukraine" keeps the dash


def _context_start(word_starts: list[int], sentence_starts: list[int], end: int, max_words: int) -> int:
    """Where a context of at most `max_words` words ending at `end` begins: at the first sentence start
    at or after the word limit, else (one sentence longer than the limit) at the word limit."""
    before = bisect.bisect_left(word_starts, end)  # words starting before `end`
    cut = word_starts[before - max_words] if before > max_words else 0
    if cut == 0:
        return 0
    j = bisect.bisect_left(sentence_starts, cut)
    return sentence_starts[j] if j < len(sentence_starts) and sentence_starts[j] < end else cut


def cloze_candidates(documents: list[tuple[str, str]], *, context_words: int = CLOZE_CONTEXT_WORDS) -> list[ClozeItem]:
    """Every eligible last-word question in `documents`, in document order.

    Eligible: the last word of a sentence of at least 4 words, letters only, at least 4 letters, not a
    function word, with at least 20 words of text before it in its document, and appearing (case-insensitively)
    in its context. The last rule is LAMBADA's spirit: the answer should need the passage, not
    only the sentence; it also makes the task answerable by a small model."""
    items = []
    for name, raw in documents:
        text = strip_annotations(raw)
        word_starts = [w.start() for w in re.finditer(r"\S+", text)]
        sentence_starts = [s.end() for s in _SENTENCE_START.finditer(text)]
        for m in _TARGET.finditer(text):
            word = m.group(1)
            if len(word) < CLOZE_MIN_TARGET_LETTERS or word.lower() in STOPWORDS:
                continue
            end = m.start() - 1  # the space before the word belongs to the target
            start = _context_start(word_starts, sentence_starts, end, context_words)
            j = bisect.bisect_right(sentence_starts, end) - 1
            if len(text[sentence_starts[j] if j >= 0 else 0 : m.end()].split()) < CLOZE_MIN_SENTENCE_WORDS:
                continue
            context = text[start:end].strip("\n")
            if len(context.split()) < CLOZE_MIN_CONTEXT_WORDS:
                continue
            if word.lower() not in {w.lower() for w in re.findall(r"[A-Za-z]+", context)}:
                continue
            items.append(ClozeItem(context, word, f"{name}@{m.start()}"))
    return items


def cloze_items(
    data: str = "sotu", tokenizer=None, *, n: int = CLOZE_ITEMS, seed: int = 0
) -> tuple[list[ClozeItem], dict]:
    """A seed-deterministic sample of `n` last-word questions from the held-out split of `data`,
    and the protocol that built them."""
    if n < 1:
        raise SlimlmError(f"n={n}: ask for at least one item")
    documents, split = heldout_documents(data, tokenizer)
    candidates = cloze_candidates(documents)
    if not candidates:
        raise SlimlmError(
            f"the held-out split of {data} has no eligible last-word items; give a corpus with more "
            "held-out prose (sentences ending in a content word seen earlier in the passage)"
        )
    items = seeded_sample(candidates, n, seed)
    protocol = {
        "source": split,
        "documents": [name for name, _ in documents],
        "candidates": len(candidates),
        "items": len(items),
        "seed": seed,
        "target": (
            f"the last word of a sentence of >= {CLOZE_MIN_SENTENCE_WORDS} words (letters only, "
            f">= {CLOZE_MIN_TARGET_LETTERS} letters, not a function word) that also appears earlier in "
            "the context; bracketed stage directions removed"
        ),
        "context": (
            f"the preceding text of the same document, at most {CLOZE_CONTEXT_WORDS} words (from a "
            f"sentence start where possible) and {CLOZE_MAX_CONTEXT_TOKENS} tokens, at least "
            f"{CLOZE_MIN_CONTEXT_WORDS} words"
        ),
        "word_boundary": (
            "target tokens = tokenize(context + ' ' + word) after tokenize(context), i.e. the word "
            "with its leading space (lm-evaluation-harness's rule); no special tokens"
        ),
        "scoring": (
            "exact match of greedy decoding: the greedy tokens equal the target tokens and the next "
            "greedy token does not continue the word (it starts with a non-alphanumeric character or "
            "is end-of-text); computed by one teacher-forced forward pass per item"
        ),
    }
    return items, protocol


# --------------------------------------------------------------------------- scoring


def encode_pair(tokenizer, context: str, target: str, max_context_tokens: int) -> tuple[list[int], list[int]]:
    """(context ids cut to their last `max_context_tokens`, target ids): the target's tokens are those of
    context + " " + target after the context's own (lm-evaluation-harness's word-boundary rule)."""
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    whole = tokenizer(context + " " + target, add_special_tokens=False)["input_ids"]
    tgt = (
        whole[len(ctx) :]
        if whole[: len(ctx)] == ctx
        else tokenizer(" " + target, add_special_tokens=False)["input_ids"]
    )
    return ctx[-max_context_tokens:], tgt


def ends_word(tokenizer, target_ids: list[int], next_id: int) -> bool:
    """Whether `next_id`, after the target's tokens, starts a new word (so the word is complete).
    Decoded in context, so tokenizers that drop a leading space on a lone token are judged right."""
    if next_id == tokenizer.eos_token_id:
        return True
    base = tokenizer.decode(target_ids)
    full = tokenizer.decode([*target_ids, next_id])
    tail = full[len(base) :] if full.startswith(base) else full
    return not tail[:1].isalnum()


def cloze_predictions(
    model,
    tokenizer,
    items: list[ClozeItem],
    *,
    batch_size: int = 8,
    max_context_tokens: int = CLOZE_MAX_CONTEXT_TOKENS,
    progress: bool = True,
) -> list[tuple[list[int], list[int]]]:
    """Per item, (target token ids, the greedy tokens of the model from the context: one per target
    token and one more), from one teacher-forced forward pass.

    Greedy decoding reproduces the k target tokens iff, at each target position, the argmax given
    the context and the preceding target tokens is the target token; so the argmaxes of one forward
    of context + target give the greedy result exactly as far as it matches the target (and the
    token after it), batched and without k sequential decode steps. Rows are right-padded: in a
    causal model no real token attends to a later pad, so no attention mask is needed and the fast
    causal attention path runs."""
    model.eval()
    device = model_device(model)
    limit = max_positions(model)
    if limit:
        max_context_tokens = min(max_context_tokens, limit - 8)
    pairs = [encode_pair(tokenizer, it.context, it.target, max_context_tokens) for it in items]
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    keeps = keeps_logits(model)
    out = [None] * len(items)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    with torch.inference_mode():
        for batch in tqdm(batches, desc="cloze", disable=not progress, leave=False):
            rows = [pairs[i][0] + pairs[i][1] for i in batch]
            width = max(len(r) for r in rows)
            ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device)
            # row r needs the argmax at columns len-k-1 .. len-1: k target predictions, then the next token
            spans = [range(len(r) - len(pairs[i][1]) - 1, len(r)) for r, i in zip(rows, batch)]
            columns = sorted({c for span in spans for c in span})
            where = {c: j for j, c in enumerate(columns)}
            if keeps:
                logits = model(
                    input_ids=ids, use_cache=False, logits_to_keep=torch.tensor(columns, device=device)
                ).logits
            else:
                logits = model(input_ids=ids, use_cache=False).logits[:, columns]
            greedy = logits.argmax(-1).tolist()
            for row, (i, span) in enumerate(zip(batch, spans)):
                out[i] = (pairs[i][1], [greedy[row][where[c]] for c in span])
    return out


def is_hit(tokenizer, target_ids: list[int], greedy_ids: list[int]) -> bool:
    """Exact match: the greedy tokens are the target's tokens and the next one starts a new word."""
    k = len(target_ids)
    return (
        list(greedy_ids[:k]) == list(target_ids)
        and len(greedy_ids) > k
        and ends_word(tokenizer, target_ids, greedy_ids[k])
    )


def cloze_hits(model, tokenizer, items: list[ClozeItem], *, batch_size: int = 8, progress: bool = True) -> list[bool]:
    """Per item, whether greedy decoding from the context produces exactly the target word."""
    preds = cloze_predictions(model, tokenizer, items, batch_size=batch_size, progress=progress)
    return [is_hit(tokenizer, tgt, greedy) for tgt, greedy in preds]


def cloze(model, tokenizer, *, data: str = "sotu", n: int = CLOZE_ITEMS, seed: int = 0, progress: bool = True) -> dict:
    """Last-word exact match on the held-out split of `data`: {cloze_exact_match, cloze_items} and the protocol."""
    items, protocol = cloze_items(data, tokenizer, n=n, seed=seed)
    hits = cloze_hits(model, tokenizer, items, progress=progress)
    return {"cloze_exact_match": sum(hits) / len(hits), "cloze_items": len(hits), "protocol": protocol}
