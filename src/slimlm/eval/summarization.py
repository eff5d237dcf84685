"""Summarization: greedy "TL;DR:" summaries of ACLSum's test papers (Takeshita et al., NAACL 2024), scored by
ROUGE-1/2/L against human-written references (docs/downstream.md).

ACLSum ships whole in its PyPI wheel (`aclsum`), so the set runs offline and gives the same items on every
machine; the same prompt, token budget and stopping rule serve every model, teacher and students alike.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

from slimlm.errors import SlimlmError
from slimlm.eval.metrics import max_positions, model_device
from slimlm.eval.sampling import seeded_sample

SUMMARIZATION_ITEMS = 30  # greedy generation is the slow part on CPU
SUMMARY_TEMPLATE = "{document}\n\nTL;DR:"
SUMMARY_DOCUMENT_WORDS = 300
SUMMARY_MAX_INPUT_TOKENS = 512
SUMMARY_NEW_TOKENS = 96
ACLSUM = ("aclsum", "0.1.2")  # PyPI package and version holding the summarization set
ACLSUM_ASPECTS = ("challenge", "approach", "outcome")
ACLSUM_SECTIONS = ("abstract", "introduction", "conclusion")


@dataclass(frozen=True)
class SummaryItem:
    """One document with its human-written reference summary."""

    document: str
    reference: str
    source: str


# --------------------------------------------------------------------------- the items


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
        raise SlimlmError(
            f"{path} is missing; delete {path.parent.parent.parent} from the cache to fetch "
            f"{ACLSUM[0]}=={ACLSUM[1]} again"
        )
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
    items = seeded_sample(pool, n, seed)
    protocol = {
        "source": (
            f"ACLSum test split (Takeshita et al., NAACL 2024), from the PyPI package {ACLSUM[0]}=={ACLSUM[1]} "
            "(MIT); text excerpts of ACL Anthology papers (CC BY 4.0 from 2016, CC BY-NC-SA 3.0 before)"
        ),
        "pool": len(pool),
        "items": len(items),
        "seed": seed,
        "papers": [it.source for it in items],
        "document": (
            f"abstract + introduction + conclusion, whole sentences up to {SUMMARY_DOCUMENT_WORDS} words, "
            f"then at most {SUMMARY_MAX_INPUT_TOKENS} prompt tokens"
        ),
        "reference": "the human-written challenge, approach and outcome summaries, joined",
        "template": SUMMARY_TEMPLATE,
        "generation": (
            f"greedy, at most {SUMMARY_NEW_TOKENS} new tokens, stopped at end-of-text or once a blank "
            "line follows some text; the summary is the first paragraph (leading blank lines skipped)"
        ),
        "scoring": "rouge-score RougeScorer(rouge1, rouge2, rougeL, use_stemmer=True), mean F-measure",
    }
    return items, protocol


# --------------------------------------------------------------------------- generation and scoring


def _prompt_ids(tokenizer, document: str, max_input_tokens: int) -> list[int]:
    head, tail = SUMMARY_TEMPLATE.split("{document}")
    head_ids = tokenizer(head, add_special_tokens=False)["input_ids"] if head else []
    tail_ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
    doc_ids = tokenizer(document, add_special_tokens=False)["input_ids"]
    room = max(max_input_tokens - len(head_ids) - len(tail_ids), 1)
    return head_ids + doc_ids[:room] + tail_ids


def _left_pad(rows: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    return ids, mask


def _first_paragraph(text: str) -> str:
    """The summary proper: leading blank lines skipped (models often open with one), cut at the next."""
    return text.strip().split("\n\n")[0].strip()


class _BlankLineStop(StoppingCriteria):
    """Stop a row once its summary paragraph has ended, so rows do not run on to max_new_tokens."""

    def __init__(self, tokenizer, prompt_length: int):
        self.tokenizer, self.prompt_length = tokenizer, prompt_length

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length :], skip_special_tokens=True)
        return torch.tensor(["\n\n" in t.strip() for t in texts], device=input_ids.device)


def summarize(
    model,
    tokenizer,
    documents: list[str],
    *,
    max_new_tokens: int = SUMMARY_NEW_TOKENS,
    max_input_tokens: int = SUMMARY_MAX_INPUT_TOKENS,
    batch_size: int = 8,
    progress: bool = True,
) -> list[str]:
    """Greedy summaries with the fixed template, batched with left padding: the first paragraph of the
    continuation (leading blank lines skipped). The same prompt, budget and stopping rule for every model."""
    model.eval()
    device = model_device(model)
    limit = max_positions(model)
    if limit:
        max_input_tokens = max(min(max_input_tokens, limit - max_new_tokens), 8)
    prompts = [_prompt_ids(tokenizer, d, max_input_tokens) for d in documents]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or 0)
    outputs = [""] * len(prompts)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    with torch.inference_mode():
        for batch in tqdm(batches, desc="summarization", disable=not progress, leave=False):
            ids, mask = _left_pad([prompts[i] for i in batch], pad, device)
            stop = StoppingCriteriaList([_BlankLineStop(tokenizer, ids.shape[1])])
            out = model.generate(
                ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
                eos_token_id=eos,
                stopping_criteria=stop,
                temperature=None,
                top_p=None,
                top_k=None,
            )
            for row, i in enumerate(batch):
                text = tokenizer.decode(out[row, ids.shape[1] :].tolist(), skip_special_tokens=True)
                outputs[i] = _first_paragraph(text)
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
