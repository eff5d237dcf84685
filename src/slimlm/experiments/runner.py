"""Run the arms of an experiment one (arm, seed) at a time, skipping every one already finished.

An experiment is a spec (experiment.json) plus a `train(arm, seed, out, resume)` function that
writes one model directory. The runner owns everything around it: claiming the folder, refusing a
different experiment in the same place, measuring every model with the same protocol, writing one
results file per (arm, seed) atomically, and going on where an interrupted run stopped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from slimlm.distributed import log
from slimlm.errors import SlimlmError
from slimlm.experiments.layout import arm_dir, experiment_file, read_json, reference_file, result_file
from slimlm.output import slimlm_version, staging_dir, under_lock, write_json_atomic
from slimlm.settings import EVAL_DEFAULTS, check_positive_int, comma_list, general_off

EVAL_FLAGS = {"tokens": "eval_tokens"}  # evaluation settings whose `slimlm experiment` flag has another name
ADDED_EVAL_KEYS = ("general_data", "general_tokens")  # added later: older run folders continue without them


def _identity(spec: dict) -> str:
    """What must match for a rerun to continue an existing folder: not when or how it was typed, nor the
    machine's thread count (recorded, but a rerun elsewhere continues the same experiment)."""
    same = {k: v for k, v in spec.items() if k not in ("created", "command", "slimlm_version", "recipe")}
    protocol = dict(same.get("protocol") or {})
    protocol["eval"] = {k: v for k, v in (protocol.get("eval") or {}).items() if k != "threads"}
    return json.dumps({**same, "protocol": protocol}, sort_keys=True, default=str)


def open_run(out: str | Path, spec: dict, *, force: bool = False) -> Path:
    """Create the run folder, or continue it when it holds the same experiment; --force starts over.

    The folder is locked first (one process per run folder; --force never deletes a live run) and stays
    locked until this process exits: the whole experiment writes into it."""
    run_dir = Path(out)
    return under_lock(run_dir, lambda: _open_run(run_dir, spec, force))


def _open_run(run_dir: Path, spec: dict, force: bool) -> Path:
    import shutil

    spec_path = experiment_file(run_dir)
    if run_dir.exists() and force and (spec_path.exists() or not any(run_dir.iterdir())):
        shutil.rmtree(run_dir)  # only an experiment folder (or an empty one) is ever deleted
    elif spec_path.exists():
        stored = read_json(spec_path)
        added = _added_eval_keys(stored, spec)
        if _identity(stored) != _identity(spec):
            raise SlimlmError(
                f"{run_dir} holds a different experiment (other settings, arms or seeds); "
                "pass --force to replace it or choose another --out"
            )
        if added:  # a run begun before slimlm scored general text: finished models get it measured once
            log(f"continuing {run_dir}: adding {', '.join(added)} to the measurement protocol")
            write_json_atomic(spec_path, stored, force=True)
        log(f"continuing {run_dir}: finished arms are skipped")
        return run_dir
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise SlimlmError(
            f"{run_dir} exists and is not an experiment folder; choose another --out "
            "(--force only replaces an experiment folder)"
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SlimlmError(f"cannot create {run_dir} ({exc.strerror}); choose a writable --out") from None
    spec = {**spec, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "slimlm_version": slimlm_version()}
    write_json_atomic(spec_path, spec, force=True)
    return run_dir


def _added_eval_keys(stored: dict, spec: dict) -> list[str]:
    """Evaluation settings slimlm gained after `stored` was written (general text), copied into it from
    `spec` so an old run folder continues; they only add measurements, never change the others."""
    old = (stored.get("protocol") or {}).get("eval")
    new = (spec.get("protocol") or {}).get("eval") or {}
    if not isinstance(old, dict):
        return []
    added = [k for k in ADDED_EVAL_KEYS if k not in old and k in new]
    old.update({k: new[k] for k in added})
    return added


def check_eval(evaluation: dict) -> dict:
    """The measurement protocol, completed with defaults and checked before any work starts."""
    from slimlm.eval.tasks import parse_tasks

    unknown = sorted(set(evaluation) - set(EVAL_DEFAULTS))
    if unknown:
        raise SlimlmError(f"unknown evaluation setting(s) {', '.join(unknown)}; valid: {', '.join(EVAL_DEFAULTS)}")
    ev = {**EVAL_DEFAULTS, **{k: v for k, v in evaluation.items() if v is not None}}
    names = comma_list(ev["tasks"])
    ev["tasks"] = [] if [t.lower() for t in names] == ["none"] else parse_tasks(names)
    if ev["split"] not in ("val", "test"):
        raise SlimlmError(f"evaluation split must be 'val' or 'test' (got {ev['split']!r})")
    for key in ("window", "stride", "decode_new_tokens", "repeats"):
        check_positive_int(EVAL_FLAGS.get(key, key), ev[key], hint=f"; in a recipe: evaluate.{key}")
    if not isinstance(ev["general_data"], str) or not ev["general_data"].strip():
        raise SlimlmError(
            f"evaluation general_data must be a corpus name or 'none' (got {ev['general_data']!r}); "
            "in a recipe: evaluate.general_data"
        )
    for key in ("tokens", "task_items", "general_tokens"):
        if ev[key] is not None:
            check_positive_int(
                EVAL_FLAGS.get(key, key), ev[key], minimum=2, hint=f"; in a recipe: evaluate.{key}, or leave it out"
            )
    if ev["window"] < 2 or ev["stride"] > ev["window"]:
        raise SlimlmError(f"evaluation window must be >= 2 and stride <= window (got {ev['window']}, {ev['stride']})")
    from slimlm.eval.general import check_general

    check_general(ev["general_data"])
    ev["threads"] = torch.get_num_threads()
    return ev


def measure(model_spec: str | Path, data: str, ev: dict, runtime: str = "transformers") -> dict:
    """Every metric of one model under the run's protocol: the same text, window and prompts for all
    (`runtime="llama.cpp"`: a .gguf file under llama.cpp, eval/llama_cpp.py; no downstream tasks there)."""
    from slimlm.data.corpus import prepare_data
    from slimlm.eval.metrics import evaluate_model
    from slimlm.sources import load_model

    if runtime == "llama.cpp":
        from slimlm.eval.llama_cpp import measure_gguf
        from slimlm.sources import gguf_tokenizer

        splits = prepare_data(data, gguf_tokenizer(model_spec), ev["window"])
        ids = getattr(splits, ev["split"])
        text_bytes = splits.info[ev["split"]]["bytes"]
        if ev["tokens"] is not None and ev["tokens"] < len(ids):
            ids, text_bytes = ids[: ev["tokens"]], None
        return measure_gguf(
            model_spec,
            ids,
            window=ev["window"],
            stride=ev["stride"],
            text_bytes=text_bytes,
            new_tokens=ev["decode_new_tokens"],
            repeats=ev["repeats"],
        )
    model, tokenizer, model_dir = load_model(model_spec)
    splits = prepare_data(data, tokenizer, ev["window"])
    ids = getattr(splits, ev["split"])
    text_bytes = splits.info[ev["split"]]["bytes"]
    if ev["tokens"] is not None and ev["tokens"] < len(ids):
        ids, text_bytes = ids[: ev["tokens"]], None  # bytes then come from decoding the scored prefix
    metrics = evaluate_model(
        model,
        tokenizer,
        ids,
        model_dir=model_dir,
        text_bytes=text_bytes,
        window=ev["window"],
        stride=ev["stride"],
        new_tokens=ev["decode_new_tokens"],
        repeats=ev["repeats"],
    )
    if ev["tasks"]:
        from slimlm.eval.tasks import run_tasks

        metrics.update(run_tasks(model, tokenizer, ev["tasks"], data=data, n=ev["task_items"], seed=0))
    metrics.update(_general(model, tokenizer, ev))
    return metrics


def _general(model, tokenizer, ev: dict) -> dict:
    """The general-text metrics of eval/general.py under the run's protocol, or none when it is off."""
    from slimlm.eval.general import general_metrics

    if general_off(ev.get("general_data")):
        return {}

    return general_metrics(model, tokenizer, ev["general_data"], window=ev["window"], tokens=ev["general_tokens"])


def add_general(path: Path, record: dict, ev: dict, model_spec) -> dict:
    """A finished record measured before general text was scored gets it now, once, from `model_spec` (the
    arm's folder in this run folder, or the reference as named: a built-in name, a folder, a hub id)."""
    metrics = record.get("metrics") or {}
    wanted = not general_off(ev.get("general_data"))
    if not wanted or "general_perplexity" in metrics or str(model_spec).endswith(".gguf"):
        return record
    from slimlm.sources import load_model

    try:
        model, tokenizer, _ = load_model(model_spec)
    except SlimlmError as exc:
        log(f"{path.name}: {model_spec} cannot be loaded ({exc}), so its general-text metrics stay missing")
        return record
    log(f"{path.name}: measuring general text ({ev['general_data']}) once for a result measured before it")
    record = {**record, "metrics": {**metrics, **_general(model, tokenizer, ev)}}
    write_json_atomic(path, record, force=True)
    return record


def measure_reference(
    run_dir: Path,
    name: str,
    model_spec: str | Path,
    data: str,
    ev: dict,
    about: dict | None = None,
    runtime: str = "transformers",
) -> dict:
    """Measure a comparison model (teacher, starting student, baseline) once per run folder; `about` adds what
    the report says of it (a baseline's build, a starting student's shape) to its record."""
    path = reference_file(run_dir, name)
    if path.exists():
        log(f"reference {name}: already measured, skipped")
        return add_general(path, read_json(path), ev, model_spec) if runtime == "transformers" else read_json(path)
    log(f"measuring reference {name} ({model_spec})")
    start = time.time()
    metrics = measure(model_spec, data, ev, runtime)
    record = {"name": name, "model_dir": str(model_spec), **(about or {}), "metrics": metrics}
    record["wall_time_s"] = time.time() - start
    write_json_atomic(path, record, force=True)
    return record


def run_arms(
    run_dir: Path, spec: dict, train: Callable[[dict, int, Path, bool], None], *, data: str, ev: dict
) -> list[dict]:
    """Train and measure every (seed, arm) not finished yet, seed by seed, so one full pass comes first.

    `train(arm, seed, out, resume)` writes a model directory at `out` (its slimlm.json says what training
    cost); `resume` is True when an interrupted attempt left its staging folder.
    """
    done = []
    total = len(spec["seeds"]) * len(spec["arms"])
    for seed in spec["seeds"]:
        for arm in spec["arms"]:
            path = result_file(run_dir, arm["name"], seed)
            index = len(done) + 1
            if path.exists():
                log(f"[{index}/{total}] {arm['name']} seed {seed}: finished earlier, skipped")
                done.append(add_general(path, read_json(path), ev, arm_dir(run_dir, arm["name"], seed)))
                continue
            out = arm_dir(run_dir, arm["name"], seed)
            start = time.time()
            if not (out / "slimlm.json").exists():
                log(f"[{index}/{total}] {arm['name']} seed {seed}: training")
                train(arm, seed, out, staging_dir(out).exists())
            log(f"[{index}/{total}] {arm['name']} seed {seed}: measuring")
            metrics = measure(out, data, ev)
            record = {
                "arm": arm["name"],
                "value": arm.get("value"),
                "seed": seed,
                "model_dir": str(out),
                "metrics": metrics,
                **_stage_facts(out),
                "wall_time_s": time.time() - start,
            }
            write_json_atomic(path, record, force=True)
            done.append(record)
    return done


def _stage_facts(model_dir: Path) -> dict:
    """From the stage's slimlm.json: what its training cost, and the precision it trained or calibrated in
    (with why) on which CPU (a quantize stage, which computes nothing, records neither)."""
    record = read_json(Path(model_dir) / "slimlm.json")
    precision = record.get("precision") or (record.get("detail") or {}).get("precision")
    return {"training": _training_facts(record), "compute": {"precision": precision, "cpu": record.get("cpu")}}


def _training_facts(record: dict) -> dict:
    """What the stage recorded about its own training (time, tokens, cost)."""
    training = record.get("training") or {}
    facts = {
        k: training.get(k) for k in ("steps", "tokens", "train_runtime_s", "wall_time_s") if training.get(k) is not None
    }
    cost = record.get("cost") or {}
    facts.update({k: v for k, v in cost.items() if isinstance(v, (int, float))})
    if facts.get("tokens") and facts.get("train_runtime_s") and "train_tokens_per_s" not in facts:
        facts["train_tokens_per_s"] = facts["tokens"] / facts["train_runtime_s"]
    return facts
