"""What the sweeps (sweeps.py) and the pipeline (pipeline.py) both need before and after their runs: the
teacher's layer count and data facts for the spec, the list parser of their flags, and the final report.
"""

from __future__ import annotations

from pathlib import Path

from slimlm.distributed import log
from slimlm.errors import SlimlmError


def parse_list(text, kind=float, name="--values") -> list:
    """ "0.5,1,2" -> [0.5, 1.0, 2.0], with a one-line error naming the bad item."""
    if isinstance(text, (list, tuple)):
        items = list(text)
    else:
        items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise SlimlmError(f"{name} is empty; give a comma-separated list")
    try:
        values = [kind(v) for v in items]
    except (TypeError, ValueError):
        raise SlimlmError(f"{name} {text!r}: every item must be a {kind.__name__}") from None
    if len(set(values)) != len(values):
        raise SlimlmError(f"{name} {text!r} repeats a value; list each once")
    return values


def layer_count(model_spec) -> int:
    """Decoder layers of a model, from its config alone (no weights loaded)."""
    from slimlm.sources import layer_count as config_layers
    from slimlm.sources import model_config

    return config_layers(model_config(model_spec))


def data_info(teacher, data, block_size) -> dict:
    """The splits' facts (documents, tokens, bytes) recorded in the spec, tokenized as the teacher reads them."""
    from slimlm.data.corpus import prepare_data
    from slimlm.sources import load_tokenizer, resolve_model

    return prepare_data(data, load_tokenizer(resolve_model(teacher)), block_size).info


def finish(run_dir: Path) -> Path:
    """Write the run's report (every arm finished) and say where it is."""
    from slimlm.experiments.report import write_report

    write_report(run_dir, force=True)
    log(f"report: {run_dir / 'report.md'} and {run_dir / 'report.html'}")
    return run_dir
