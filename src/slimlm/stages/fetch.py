"""Stage `fetch`: put the teacher and the corpus into the cache, so later commands run offline."""

from __future__ import annotations

from slimlm.distributed import log
from slimlm.settings import FetchSettings, general_off


def fetch(
    teacher: str = FetchSettings.teacher, data: str = FetchSettings.data, general_data: str = FetchSettings.general_data
) -> dict:
    """Download and convert the built-in (or given) teacher, corpus and general-text set into the cache."""
    from slimlm.data.corpus import load_corpus
    from slimlm.data.mix import corpus_names
    from slimlm.sources import resolve_model

    settings = FetchSettings.from_dict({"teacher": teacher, "data": data, "general_data": general_data}).validate()
    model_dir = resolve_model(settings.teacher)
    names = corpus_names(settings.data)
    if not general_off(settings.general_data):  # every evaluation reports it (eval/general.py)
        names += [n for n in corpus_names(settings.general_data) if n not in names]
    documents = {name: len(load_corpus(name).documents) for name in names}
    said = "; ".join(f"corpus {n}: {d} documents" for n, d in documents.items())
    log(f"teacher {settings.teacher} -> {model_dir}; {said}")
    return {"teacher": str(model_dir), "documents": documents[names[0]], "corpora": documents}
