"""Stage `fetch`: put the teacher and the corpus into the cache, so later commands run offline.
"""

from __future__ import annotations

from slimlm.training.distributed import log


def fetch(teacher: str = "smollm2-135m", data: str = "sotu") -> dict:
    """Download and convert the built-in (or given) teacher and corpus into the cache; print where."""
    from slimlm.data.corpus import load_corpus
    from slimlm.sources import resolve_model

    model_dir = resolve_model(teacher)
    corpus = load_corpus(data)
    log(f"teacher {teacher} -> {model_dir}; corpus {data}: {len(corpus.documents)} documents")
    return {"teacher": str(model_dir), "documents": len(corpus.documents)}
