"""Shared fixtures: real text (the built-in corpus, fetched by `make test` into the cache) and tiny
Llama models with a real BPE tokenizer trained on that text, all built in code — nothing is
downloaded at test time but the registry package that `slimlm fetch` already cached."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub from tests
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def speeches():
    """A few dozen real documents from the built-in corpus (1790-1830 State of the Union addresses)."""
    from slimlm.data.corpus import load_corpus

    return [d.text for d in load_corpus("sotu").documents[:40]]


@pytest.fixture(scope="session")
def tiny_tokenizer(speeches, tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        speeches,
        trainers.BpeTrainer(
            vocab_size=320, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


def tiny_config(vocab_size, layers=4, hidden=32, intermediate=64):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        eos_token_id=0,
        bos_token_id=0,
        pad_token_id=0,
    )


def save_tiny_model(path, tokenizer, layers=4, seed=0, hidden=32):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(
        tiny_config(len(tokenizer), layers=layers, hidden=hidden, intermediate=2 * hidden)
    )
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_teacher(tiny_tokenizer, tmp_path_factory):
    """A 4-layer random Llama teacher directory with the tiny tokenizer."""
    return save_tiny_model(tmp_path_factory.mktemp("teacher"), tiny_tokenizer)


@pytest.fixture(scope="session")
def metaspace_tokenizer(speeches):
    """A Llama-like tokenizer: SentencePiece-style spaces (▁) and byte fallback for unseen characters."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Sequence(  # Llama's tokenizer.json decoder
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    bytes_ = [f"<0x{i:02X}>" for i in range(256)]
    tok.train_from_iterator(speeches, trainers.BpeTrainer(vocab_size=700, special_tokens=["<unk>", "</s>", *bytes_]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>")


@pytest.fixture(scope="session")
def text_dir(speeches, tmp_path_factory):
    """Real text as .txt files, the way a user passes --data."""
    folder = tmp_path_factory.mktemp("text")
    for i, text in enumerate(speeches[:24]):
        (folder / f"speech-{i:02d}.txt").write_text(text, encoding="utf-8")
    return folder


@pytest.fixture(autouse=True)
def _isolated_runs(tmp_path, monkeypatch):
    """Every test runs in its own folder, so relative outputs never collide."""
    monkeypatch.chdir(tmp_path)
