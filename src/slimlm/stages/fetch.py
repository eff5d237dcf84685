"""Stage `fetch`: put the teacher and the corpus into the cache, so later commands run offline."""

from __future__ import annotations

from slimlm.distributed import log
from slimlm.settings import FetchSettings


def fetch(teacher: str = FetchSettings.teacher, data: str = FetchSettings.data) -> dict:
    """Download and convert the built-in (or given) teacher and corpus into the cache; print where."""
    from slimlm.data.corpus import load_corpus
    from slimlm.sources import resolve_model

    settings = FetchSettings.from_dict({"teacher": teacher, "data": data}).validate()
    model_dir = resolve_model(settings.teacher)
    corpus = load_corpus(settings.data)
    log(f"teacher {settings.teacher} -> {model_dir}; corpus {settings.data}: {len(corpus.documents)} documents")
    return {"teacher": str(model_dir), "documents": len(corpus.documents)}
