"""Stage `fetch`: put the teacher and the corpus into the cache, so later commands run offline."""

from __future__ import annotations

from slimlm.distributed import log
from slimlm.settings import FetchSettings


def fetch(
    teacher: str = FetchSettings.teacher, data: str = FetchSettings.data, general_data: str = FetchSettings.general_data
) -> dict:
    """Download and convert the built-in (or given) teacher, corpus and general-text set into the cache."""
    from slimlm.data.corpus import load_corpus
    from slimlm.data.mix import is_mix, parse_mix
    from slimlm.sources import resolve_model

    settings = FetchSettings.from_dict({"teacher": teacher, "data": data, "general_data": general_data}).validate()
    model_dir = resolve_model(settings.teacher)
    names = [n for n, _ in parse_mix(settings.data)] if is_mix(settings.data) else [settings.data]
    if settings.general_data.lower() != "none" and settings.general_data not in names:
        names.append(settings.general_data)  # every evaluation reports it (eval/general.py)
    documents = {name: len(load_corpus(name).documents) for name in names}
    said = "; ".join(f"corpus {n}: {d} documents" for n, d in documents.items())
    log(f"teacher {settings.teacher} -> {model_dir}; {said}")
    return {"teacher": str(model_dir), "documents": documents[names[0]], "corpora": documents}
