"""Instruction data: JSONL records -> padded token blocks with the loss on response tokens only.

A record is either {"prompt": ..., "response": ...} or {"messages": [{"role": ..., "content": ...}, ...]}
(rendered with the tokenizer's chat template; every assistant turn is a response). Training on the
prompt too would teach the model to write prompts; masking it is the usual instruction-tuning rule.
Records are split by position (first 90% train, next 5% validation, last 5% test), like plain text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from slimlm.errors import SlimlmError
from slimlm.losses import IGNORE_INDEX


def is_instruction_data(spec: str) -> bool:
    """True for a .jsonl file whose first record has "prompt" or "messages" (plain-text JSONL has "text")."""
    path = Path(str(spec)).expanduser()
    if path.suffix != ".jsonl" or not path.is_file():
        return False
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    return False
                return isinstance(record, dict) and ("prompt" in record or "messages" in record)
    return True  # an empty .jsonl: load_records names the problem


def load_records(path: str | Path) -> list[dict]:
    """Read and check every record, so a bad line is named before any model work starts."""
    path = Path(path)
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise SlimlmError(f"{path}:{number} is not valid JSON; each line must be one JSON object") from None
        records.append(_check_record(record, f"{path}:{number}"))
    if not records:
        raise SlimlmError(f"{path} contains no records; give one JSON object per line with prompt/response or messages")
    return records


def _check_record(record, where: str) -> dict:
    if not isinstance(record, dict):
        raise SlimlmError(f'{where} is not a JSON object; write {{"prompt": ..., "response": ...}}')
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise SlimlmError(f'{where}: "messages" must be a non-empty list of {{"role", "content"}} objects')
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise SlimlmError(f'{where}: every message needs string fields "role" and "content"')
        if not any(m["role"] == "assistant" for m in messages):
            raise SlimlmError(f"{where} has no assistant message; the loss is on assistant turns, add one")
        return record
    for key in ("prompt", "response"):
        if not isinstance(record.get(key), str):
            raise SlimlmError(
                f'{where} has no string field "{key}"; each record needs "prompt" and "response" (or "messages")'
            )
    return record


def segments(record: dict, tokenizer) -> list[tuple[str, bool]]:
    """(text, is_response) pieces whose concatenation is the rendered example."""
    if "messages" not in record:
        return [(record["prompt"], False), (record["response"], True)]
    if not getattr(tokenizer, "chat_template", None):
        raise SlimlmError(
            'the tokenizer has no chat template, so "messages" records cannot be rendered; '
            "use prompt/response records or a model with a chat template"
        )
    messages, pieces, done = record["messages"], [], ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True) if i else ""
        upto = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not (prefix.startswith(done) and upto.startswith(prefix)):
            raise SlimlmError(
                "the chat template does not render conversations prefix by prefix, so assistant "
                "turns cannot be located; use prompt/response records"
            )
        pieces += [(prefix[len(done) :], False), (upto[len(prefix) :], True)]
        done = upto
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if full.startswith(done) and len(full) > len(done):
        pieces.append((full[len(done) :], False))
    return pieces


def encode(record: dict, tokenizer) -> tuple[list[int], list[bool]]:
    """Token ids and a per-token response flag; prompt/response records end with eos (a trained token)."""
    ids, flags = [], []
    for text, is_response in segments(record, tokenizer):
        piece = tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
        ids += piece
        flags += [is_response] * len(piece)
    if "messages" not in record and tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
        flags.append(True)
    return ids, flags


def to_example(ids: list[int], flags: list[bool], block_size: int, pad_id: int) -> dict:
    """Truncate/pad to block_size; shift_labels[t] = ids[t+1] where that token is a response token, else -100."""
    ids, flags = ids[:block_size], flags[:block_size]
    n = len(ids)
    shift = [ids[t + 1] if flags[t + 1] else IGNORE_INDEX for t in range(n - 1)] + [IGNORE_INDEX]
    pad = block_size - n
    input_ids = torch.tensor(ids + [pad_id] * pad, dtype=torch.long)
    shift_labels = torch.tensor(shift + [IGNORE_INDEX] * pad, dtype=torch.long)
    labels = torch.tensor([i if f else IGNORE_INDEX for i, f in zip(ids, flags)] + [IGNORE_INDEX] * pad)
    mask = torch.tensor([1] * n + [0] * pad, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels, "shift_labels": shift_labels}


class InstructionDataset(Dataset):
    """Examples with the keys DistillTrainer reads: input_ids, attention_mask, labels, shift_labels."""

    def __init__(self, examples: list[dict]):
        self.examples = examples

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, i):
        return self.examples[i]

    def tokens(self) -> int:
        return int(sum(int(e["attention_mask"].sum()) for e in self.examples))

    def response_tokens(self) -> int:
        return int(sum(int(e["shift_labels"].ne(IGNORE_INDEX).sum()) for e in self.examples))


@dataclass
class InstructionSplits:
    train: InstructionDataset
    val: InstructionDataset
    test: InstructionDataset
    info: dict

    def summary(self) -> str:
        parts = [
            f"{n} {self.info[n]['records']} records ({self.info[n]['response_tokens']:,} response tokens)"
            for n in ("train", "val", "test")
        ]
        return f"instruction data {self.info['corpus']}: " + ", ".join(parts) + f"; split: {self.info['rule']}"


def prepare_instructions(spec: str, tokenizer, block_size: int) -> InstructionSplits:
    """Records -> train/validation/test datasets, split by position (at least one record in each)."""
    records = load_records(spec)
    if len(records) < 3:
        raise SlimlmError(
            f"{spec} has {len(records)} record(s); give at least 3 (train, validation and test each need one)"
        )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    examples, dropped = [], 0
    for record in records:
        example = to_example(*encode(record, tokenizer), block_size, pad_id)
        if example["shift_labels"].ne(IGNORE_INDEX).any():
            examples.append(example)
        else:
            dropped += 1
    if len(examples) < 3:
        raise SlimlmError(
            f"{spec}: only {len(examples)} record(s) keep a response token within --block-size "
            f"{block_size}; raise --block-size or shorten the prompts"
        )
    n = len(examples)
    a = min(int(n * 0.90), n - 2)
    b = max(a + 1, min(int(n * 0.95), n - 1))
    parts = {"train": examples[:a], "val": examples[a:b], "test": examples[b:]}
    datasets = {k: InstructionDataset(v) for k, v in parts.items()}
    info = {
        "corpus": Path(spec).name,
        "format": "instruction jsonl",
        "block_size": block_size,
        "rule": "by position: first 90% of records train, next 5% validation, last 5% test; loss on responses only",
        "dropped_records": dropped,
    }
    for k, ds in datasets.items():
        info[k] = {"records": len(ds), "tokens": ds.tokens(), "response_tokens": ds.response_tokens()}
    return InstructionSplits(datasets["train"], datasets["val"], datasets["test"], info)


def response_perplexity(
    model, dataset: InstructionDataset, *, batch_size: int = 8, max_tokens: int | None = None
) -> dict:
    """Mean cross-entropy over response tokens only (the training objective), as perplexity and accuracy."""
    import math

    model.eval()
    device = next(model.parameters()).device
    nll, correct, scored = 0.0, 0, 0
    with torch.no_grad():
        for s in range(0, len(dataset), batch_size):
            batch = [dataset[i] for i in range(s, min(s + batch_size, len(dataset)))]
            ids = torch.stack([e["input_ids"] for e in batch]).to(device)
            mask = torch.stack([e["attention_mask"] for e in batch]).to(device)
            labels = torch.stack([e["shift_labels"] for e in batch]).to(device)
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
            valid = labels.ne(IGNORE_INDEX)
            nll += float(torch.nn.functional.cross_entropy(logits[valid], labels[valid], reduction="sum"))
            correct += int((logits[valid].argmax(-1) == labels[valid]).sum())
            scored += int(valid.sum())
            if max_tokens and scored >= max_tokens:
                break
    return {
        "perplexity": math.exp(min(nll / max(scored, 1), 700)),
        "accuracy": correct / max(scored, 1),
        "tokens_scored": scored,
        "scope": "response tokens of validation records",
    }
