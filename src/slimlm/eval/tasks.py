"""The paper's downstream checks (question answering, summarization), runnable offline.

Perplexity says how well a compressed model predicts text; these say whether it can still *use*
text. Both sets are built from data that ships in a package registry, with references, so they
run without a network and give the same items on every machine (docs/downstream.md):

- cloze: last-word QA in the style of LAMBADA, built from the held-out test split of a corpus
  (default `sotu`: the speeches from 2024 on, held out of every training run). The model reads a
  passage and must produce the sentence-final word; scored by exact match of greedy decoding.
- summarization: ACLSum's test split (human-written summaries of ACL papers, the PyPI package
  `aclsum`), prompted with a fixed "TL;DR:" template, greedy, scored by ROUGE-1/2/L.

With a network, `lm_eval_tasks` runs any lm-evaluation-harness task on a slimlm model directory.
"""

from __future__ import annotations

import bisect
import inspect
import json
import random
import re
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

from slimlm.errors import SlimlmError

TASKS = ("cloze", "summarization")

CLOZE_ITEMS = 200  # default sample size: a 95% interval of about +-6 points at 30% accuracy
CLOZE_CONTEXT_WORDS = 100  # bounded context: about 130 tokens an item keeps the forward passes cheap on CPU
CLOZE_MAX_CONTEXT_TOKENS = 256
CLOZE_MIN_CONTEXT_WORDS = 20
CLOZE_MIN_TARGET_LETTERS = 4
CLOZE_MIN_SENTENCE_WORDS = 4  # drops transcript labels ("The President.") and "Thank you, Megan."

SUMMARIZATION_ITEMS = 30  # greedy generation is the slow part on CPU
SUMMARY_TEMPLATE = "{document}\n\nTL;DR:"
SUMMARY_DOCUMENT_WORDS = 300
SUMMARY_MAX_INPUT_TOKENS = 512
SUMMARY_NEW_TOKENS = 96
ACLSUM = ("aclsum", "0.1.2")  # PyPI package and version holding the summarization set
ACLSUM_ASPECTS = ("challenge", "approach", "outcome")
ACLSUM_SECTIONS = ("abstract", "introduction", "conclusion")

# Function words are not content words: predicting "them" or "there" tests grammar, not reading.
STOPWORDS = frozenset("""
about above after again against also although among another anyone anything around because been
before being below between both cannot could does doing down during each either else enough even
ever every everyone everything from further have having here hers herself himself into itself just
least less like made make many more most much must myself neither never none nothing often once
only other others ours ourselves over perhaps quite rather really same several shall should since
some something still such than that their theirs them themselves then there these they this those
though through thus together too toward towards under until upon very well were what whatever when
where whether which while whom whose will with within without would your yours yourself
""".split())

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


@dataclass(frozen=True)
class SummaryItem:
    """One document with its human-written reference summary."""

    document: str
    reference: str
    source: str


# --------------------------------------------------------------------------- cloze

def heldout_documents(data: str, tokenizer) -> tuple[list[tuple[str, str]], str]:
    """(name, text) of the held-out test split of `data`, and a line saying how it was found.

    Items must come from text no model was trained or tuned on: for a dated corpus (built-in
    `sotu`) these are the raw test-year documents; otherwise the test split is defined on the
    token stream (the last 5%), so that stream is decoded and cut at end-of-text tokens."""
    from slimlm.data.corpus import load_corpus, prepare_data

    corpus = load_corpus(data)
    if corpus.test_from is not None:
        docs = [(d.name, d.text) for d in corpus.documents if d.year >= corpus.test_from]
        return docs, f"{corpus.name} test split: documents from {corpus.test_from} on"
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


def _clean(text: str) -> str:
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
        text = _clean(raw)
        word_starts = [w.start() for w in re.finditer(r"\S+", text)]
        sentence_starts = [s.end() for s in _SENTENCE_START.finditer(text)]
        for m in _TARGET.finditer(text):
            word = m.group(1)
            if len(word) < CLOZE_MIN_TARGET_LETTERS or word.lower() in STOPWORDS:
                continue
            end = m.start() - 1  # the space before the word belongs to the target
            start = _context_start(word_starts, sentence_starts, end, context_words)
            j = bisect.bisect_right(sentence_starts, end) - 1
            if len(text[sentence_starts[j] if j >= 0 else 0:m.end()].split()) < CLOZE_MIN_SENTENCE_WORDS:
                continue
            context = text[start:end].strip("\n")
            if len(context.split()) < CLOZE_MIN_CONTEXT_WORDS:
                continue
            if word.lower() not in {w.lower() for w in re.findall(r"[A-Za-z]+", context)}:
                continue
            items.append(ClozeItem(context, word, f"{name}@{m.start()}"))
    return items


def _sample(items: list, n: int, seed: int) -> list:
    """A seeded sample kept in source order, so a seed names one fixed set on every machine."""
    if n >= len(items):
        return list(items)
    chosen = random.Random(seed).sample(range(len(items)), n)
    return [items[i] for i in sorted(chosen)]


def cloze_items(data: str = "sotu", tokenizer=None, *, n: int = CLOZE_ITEMS, seed: int = 0) -> tuple[list[ClozeItem], dict]:
    """A seed-deterministic sample of `n` last-word questions from the held-out split of `data`,
    and the protocol that built them."""
    if n < 1:
        raise SlimlmError(f"n={n}: ask for at least one item")
    documents, split = heldout_documents(data, tokenizer)
    candidates = cloze_candidates(documents)
    if not candidates:
        raise SlimlmError(f"the held-out split of {data} has no eligible last-word items; give a corpus with more "
                          "held-out prose (sentences ending in a content word seen earlier in the passage)")
    items = _sample(candidates, n, seed)
    protocol = {
        "source": split,
        "documents": [name for name, _ in documents],
        "candidates": len(candidates),
        "items": len(items),
        "seed": seed,
        "target": (f"the last word of a sentence of >= {CLOZE_MIN_SENTENCE_WORDS} words (letters only, "
                   f">= {CLOZE_MIN_TARGET_LETTERS} letters, not a function word) that also appears earlier in "
                   "the context; bracketed stage directions removed"),
        "context": (f"the preceding text of the same document, at most {CLOZE_CONTEXT_WORDS} words (from a "
                    f"sentence start where possible) and {CLOZE_MAX_CONTEXT_TOKENS} tokens, at least "
                    f"{CLOZE_MIN_CONTEXT_WORDS} words"),
        "word_boundary": ("target tokens = tokenize(context + ' ' + word) after tokenize(context), i.e. the word "
                          "with its leading space (lm-evaluation-harness's rule); no special tokens"),
        "scoring": ("exact match of greedy decoding: the greedy tokens equal the target tokens and the next "
                    "greedy token does not continue the word (it starts with a non-alphanumeric character or "
                    "is end-of-text); computed by one teacher-forced forward pass per item"),
    }
    return items, protocol


def _encode_pair(tokenizer, context: str, target: str, max_context_tokens: int) -> tuple[list[int], list[int]]:
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    whole = tokenizer(context + " " + target, add_special_tokens=False)["input_ids"]
    tgt = whole[len(ctx):] if whole[:len(ctx)] == ctx else tokenizer(" " + target, add_special_tokens=False)["input_ids"]
    return ctx[-max_context_tokens:], tgt


def ends_word(tokenizer, target_ids: list[int], next_id: int) -> bool:
    """Whether `next_id`, after the target's tokens, starts a new word (so the word is complete).
    Decoded in context, so tokenizers that drop a leading space on a lone token are judged right."""
    if next_id == tokenizer.eos_token_id:
        return True
    base = tokenizer.decode(target_ids)
    full = tokenizer.decode([*target_ids, next_id])
    tail = full[len(base):] if full.startswith(base) else full
    return not tail[:1].isalnum()


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _left_pad(rows: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    return ids, mask


def _keeps_logits(model) -> bool:
    """Whether forward() can compute the LM head on chosen positions only (vocab-sized logits are costly)."""
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def _max_positions(model) -> int | None:
    return getattr(getattr(model, "config", None), "max_position_embeddings", None)


def cloze_predictions(model, tokenizer, items: list[ClozeItem], *, batch_size: int = 8,
                      max_context_tokens: int = CLOZE_MAX_CONTEXT_TOKENS,
                      progress: bool = True) -> list[tuple[list[int], list[int]]]:
    """Per item, (target token ids, the greedy tokens of the model from the context: one per target
    token and one more), from one teacher-forced forward pass.

    Greedy decoding reproduces the k target tokens iff, at each target position, the argmax given
    the context and the preceding target tokens is the target token; so the argmaxes of one forward
    of context + target give the greedy result exactly as far as it matches the target (and the
    token after it), batched and without k sequential decode steps. Rows are right-padded: in a
    causal model no real token attends to a later pad, so no attention mask is needed and the fast
    causal attention path runs."""
    model.eval()
    device = _device(model)
    limit = _max_positions(model)
    if limit:
        max_context_tokens = min(max_context_tokens, limit - 8)
    pairs = [_encode_pair(tokenizer, it.context, it.target, max_context_tokens) for it in items]
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    keeps = _keeps_logits(model)
    out = [None] * len(items)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
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
                logits = model(input_ids=ids, use_cache=False,
                               logits_to_keep=torch.tensor(columns, device=device)).logits
            else:
                logits = model(input_ids=ids, use_cache=False).logits[:, columns]
            greedy = logits.argmax(-1).tolist()
            for row, (i, span) in enumerate(zip(batch, spans)):
                out[i] = (pairs[i][1], [greedy[row][where[c]] for c in span])
    return out


def is_hit(tokenizer, target_ids: list[int], greedy_ids: list[int]) -> bool:
    """Exact match: the greedy tokens are the target's tokens and the next one starts a new word."""
    k = len(target_ids)
    return list(greedy_ids[:k]) == list(target_ids) and len(greedy_ids) > k and ends_word(tokenizer, target_ids, greedy_ids[k])


def cloze_hits(model, tokenizer, items: list[ClozeItem], *, batch_size: int = 8, progress: bool = True) -> list[bool]:
    """Per item, whether greedy decoding from the context produces exactly the target word."""
    preds = cloze_predictions(model, tokenizer, items, batch_size=batch_size, progress=progress)
    return [is_hit(tokenizer, tgt, greedy) for tgt, greedy in preds]


def cloze(model, tokenizer, *, data: str = "sotu", n: int = CLOZE_ITEMS, seed: int = 0, progress: bool = True) -> dict:
    """Last-word exact match on the held-out split of `data`: {cloze_exact_match, cloze_items} and the protocol."""
    items, protocol = cloze_items(data, tokenizer, n=n, seed=seed)
    hits = cloze_hits(model, tokenizer, items, progress=progress)
    return {"cloze_exact_match": sum(hits) / len(hits), "cloze_items": len(hits), "protocol": protocol}


# --------------------------------------------------------------------------- summarization

def _detokenize(text: str) -> str:
    """ACLSum stores sentences tokenized ("memory ( RAM ) , and"); undo the spacing around punctuation."""
    text = re.sub(r" ([.,;:!?%)\]}])", r"\1", text)
    text = re.sub(r"([(\[{]) ", r"\1", text)
    return re.sub(r" (n't|'s|'re|'ve|'ll|'d|'m)\b", r"\1", text)


def _first_words(sentences: list[str], max_words: int) -> str:
    """Whole sentences from the start, up to `max_words` words (at least one sentence)."""
    kept, words = [], 0
    for s in sentences:
        size = len(s.split())
        if kept and words + size > max_words:
            break
        kept.append(s)
        words += size
    return " ".join(kept)


def aclsum_items(split: str = "test", *, max_document_words: int = SUMMARY_DOCUMENT_WORDS) -> list[SummaryItem]:
    """ACLSum (Takeshita et al., NAACL 2024) from its PyPI wheel: per paper, the document is the paper's
    abstract, introduction and conclusion (the dataset's source text) cut to whole sentences within
    `max_document_words`; the reference joins its three human-written aspect summaries (challenge,
    approach, outcome) into one abstractive summary."""
    from slimlm.cache import pypi_package

    path = pypi_package(*ACLSUM) / "files" / "aclsum" / "dataset" / f"{split}.jsonl"
    if not path.exists():
        raise SlimlmError(f"{path} is missing; delete {path.parent.parent.parent} from the cache to fetch "
                          f"{ACLSUM[0]}=={ACLSUM[1]} again")
    items = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        sentences = [_detokenize(s) for section in ACLSUM_SECTIONS for s in record["sentences"][section]]
        reference = " ".join(record["summary"][a].strip() for a in ACLSUM_ASPECTS)
        items.append(SummaryItem(_first_words(sentences, max_document_words), reference, record["id"]))
    return items


def summarization_items(*, n: int = SUMMARIZATION_ITEMS, seed: int = 0) -> tuple[list[SummaryItem], dict]:
    """A seed-deterministic sample of `n` ACLSum test papers, and the protocol that built them."""
    if n < 1:
        raise SlimlmError(f"n={n}: ask for at least one item")
    pool = aclsum_items("test")
    items = _sample(pool, n, seed)
    protocol = {
        "source": (f"ACLSum test split (Takeshita et al., NAACL 2024), from the PyPI package {ACLSUM[0]}=={ACLSUM[1]} "
                   "(MIT); text excerpts of ACL Anthology papers (CC BY 4.0 from 2016, CC BY-NC-SA 3.0 before)"),
        "pool": len(pool),
        "items": len(items),
        "seed": seed,
        "papers": [it.source for it in items],
        "document": (f"abstract + introduction + conclusion, whole sentences up to {SUMMARY_DOCUMENT_WORDS} words, "
                     f"then at most {SUMMARY_MAX_INPUT_TOKENS} prompt tokens"),
        "reference": "the human-written challenge, approach and outcome summaries, joined",
        "template": SUMMARY_TEMPLATE,
        "generation": (f"greedy, at most {SUMMARY_NEW_TOKENS} new tokens, stopped at end-of-text or once a blank "
                       "line follows some text; the summary is the first paragraph (leading blank lines skipped)"),
        "scoring": "rouge-score RougeScorer(rouge1, rouge2, rougeL, use_stemmer=True), mean F-measure",
    }
    return items, protocol


def _prompt_ids(tokenizer, document: str, max_input_tokens: int) -> list[int]:
    head, tail = SUMMARY_TEMPLATE.split("{document}")
    head_ids = tokenizer(head, add_special_tokens=False)["input_ids"] if head else []
    tail_ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
    doc_ids = tokenizer(document, add_special_tokens=False)["input_ids"]
    room = max(max_input_tokens - len(head_ids) - len(tail_ids), 1)
    return head_ids + doc_ids[:room] + tail_ids


def _first_paragraph(text: str) -> str:
    """The summary proper: leading blank lines skipped (models often open with one), cut at the next."""
    return text.strip().split("\n\n")[0].strip()


class _BlankLineStop(StoppingCriteria):
    """Stop a row once its summary paragraph has ended, so rows do not run on to max_new_tokens."""

    def __init__(self, tokenizer, prompt_length: int):
        self.tokenizer, self.prompt_length = tokenizer, prompt_length

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length:], skip_special_tokens=True)
        return torch.tensor(["\n\n" in t.strip() for t in texts], device=input_ids.device)


def summarize(model, tokenizer, documents: list[str], *, max_new_tokens: int = SUMMARY_NEW_TOKENS,
              max_input_tokens: int = SUMMARY_MAX_INPUT_TOKENS, batch_size: int = 8, progress: bool = True) -> list[str]:
    """Greedy summaries with the fixed template, batched with left padding: the first paragraph of the
    continuation (leading blank lines skipped). The same prompt, budget and stopping rule for every model."""
    model.eval()
    device = _device(model)
    limit = _max_positions(model)
    if limit:
        max_input_tokens = max(min(max_input_tokens, limit - max_new_tokens), 8)
    prompts = [_prompt_ids(tokenizer, d, max_input_tokens) for d in documents]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or 0)
    outputs = [""] * len(prompts)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    with torch.inference_mode():
        for batch in tqdm(batches, desc="summarization", disable=not progress, leave=False):
            ids, mask = _left_pad([prompts[i] for i in batch], pad, device)
            stop = StoppingCriteriaList([_BlankLineStop(tokenizer, ids.shape[1])])
            out = model.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=pad, eos_token_id=eos, stopping_criteria=stop,
                                 temperature=None, top_p=None, top_k=None)
            for row, i in enumerate(batch):
                outputs[i] = _first_paragraph(tokenizer.decode(out[row, ids.shape[1]:].tolist(), skip_special_tokens=True))
    return outputs


def rouge(predictions: list[str], references: list[str]) -> dict:
    """Mean ROUGE-1/2/L F-measure (Lin, 2004) with Google's reference implementation (`rouge-score`),
    Porter stemming on, as most summarization papers report it."""
    from rouge_score.rouge_scorer import RougeScorer

    if len(predictions) != len(references) or not references:
        raise SlimlmError(f"rouge needs one prediction per reference (got {len(predictions)} and {len(references)})")
    scorer = RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for pred, ref in zip(predictions, references):
        scores = scorer.score(ref, pred)
        for key in totals:
            totals[key] += scores[key].fmeasure
    return {key: value / len(references) for key, value in totals.items()}


def summarization(model, tokenizer, *, n: int = SUMMARIZATION_ITEMS, seed: int = 0, progress: bool = True) -> dict:
    """ROUGE of greedy TL;DR summaries on ACLSum: {rouge1, rouge2, rougeL, summarization_items} and the protocol."""
    items, protocol = summarization_items(n=n, seed=seed)
    summaries = summarize(model, tokenizer, [it.document for it in items], progress=progress)
    scores = rouge(summaries, [it.reference for it in items])
    return {**scores, "summarization_items": len(items), "protocol": protocol}


# --------------------------------------------------------------------------- entry points

def parse_tasks(tasks) -> list[str]:
    """Task names from a list or a comma-separated string, checked against TASKS, in the order given."""
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks)]
    names = [t for t in names if t]
    unknown = [t for t in names if t not in TASKS]
    if unknown or not names:
        what = f"unknown downstream task '{unknown[0]}'" if unknown else "no downstream task given"
        raise SlimlmError(f"{what}; choose from {', '.join(TASKS)}")
    return list(dict.fromkeys(names))


def run_tasks(model, tokenizer, tasks, *, data: str = "sotu", n: int | None = None, seed: int = 0,
              progress: bool = True) -> dict:
    """The requested downstream tasks as one flat, JSON-serialisable dict of metrics:
    cloze_exact_match, cloze_items (cloze); rouge1, rouge2, rougeL, summarization_items
    (summarization); downstream_protocol says how each set was built and scored. `n` overrides
    every task's item count (default 200 cloze items, 30 summaries); `data` is the cloze corpus."""
    names = parse_tasks(tasks)
    if n is not None and n < 1:
        raise SlimlmError(f"n={n}: ask for at least one item per task")
    result, protocol = {}, {}
    for name in names:
        start = time.perf_counter()
        if name == "cloze":
            out = cloze(model, tokenizer, data=data, n=n or CLOZE_ITEMS, seed=seed, progress=progress)
        else:
            out = summarization(model, tokenizer, n=n or SUMMARIZATION_ITEMS, seed=seed, progress=progress)
        protocol[name] = {**out.pop("protocol"), "seconds": round(time.perf_counter() - start, 1)}
        result.update(out)
    result["downstream_protocol"] = protocol
    return result


def lm_eval_tasks(model_dir, tasks: list[str], *, batch_size: int | str = 8, limit: int | float | None = None,
                  num_fewshot: int | None = None, device: str | None = None) -> dict:
    """lm-evaluation-harness tasks (e.g. lambada_openai, hellaswag, arc_easy) on a slimlm model: the
    standard benchmarks, when a network is there to fetch their data. A plain model directory runs
    through lm-eval's `hf` model type; a slimlm-quantized one is loaded by slimlm and handed to
    lm-eval's HFLM. Returns {"task/metric": value} plus "lm_eval_protocol"."""
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",")]
    if not tasks or not all(isinstance(t, str) and t.strip() for t in tasks):
        raise SlimlmError("give at least one lm-evaluation-harness task name, e.g. lambada_openai,hellaswag")
    if limit is not None and not limit > 0:
        raise SlimlmError(f"limit={limit}: give a positive number of examples per task (or a fraction < 1)")
    if not (batch_size == "auto" or isinstance(batch_size, int) and batch_size >= 1):
        raise SlimlmError(f"batch_size={batch_size!r}: use a positive integer or 'auto'")
    try:
        import lm_eval
    except ImportError:
        raise SlimlmError("lm-evaluation-harness is not installed: pip install 'lm-eval[hf]' (its tasks download "
                          "their data from the Hugging Face hub, so it also needs the network)") from None
    from slimlm.methods.quantization import QUANTIZED_WEIGHTS
    from slimlm.sources import load_model, resolve_model

    path = resolve_model(model_dir)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if (path / QUANTIZED_WEIGHTS).exists():
        from lm_eval.models.huggingface import HFLM

        model, tokenizer, _ = load_model(path)
        lm = HFLM(pretrained=model.to(device), tokenizer=tokenizer, batch_size=batch_size)
        kwargs = {"model": lm}
    else:
        kwargs = {"model": "hf", "model_args": {"pretrained": str(path), "dtype": "float32"},
                  "batch_size": batch_size, "device": device}
    try:
        out = lm_eval.simple_evaluate(tasks=list(tasks), limit=limit, num_fewshot=num_fewshot, **kwargs)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise SlimlmError(f"lm-evaluation-harness failed ({type(exc).__name__}: {first}); its tasks fetch data "
                          "from the Hugging Face hub: check the network and the task names (lm-eval ls tasks)") from None
    flat = {f"{task}/{metric}": value for task, metrics in out["results"].items()
            for metric, value in metrics.items() if isinstance(value, (int, float)) and metric != "alias"}
    flat["lm_eval_protocol"] = {"tasks": list(tasks), "limit": limit, "num_fewshot": num_fewshot,
                                "model": str(path), "versions": out.get("versions", {}),
                                "n_samples": out.get("n-samples", {})}
    return flat
