"""Baselines beside every study: the teacher after `slimlm quantize --bits 8` and `--bits 4`, so a report can
say whether a student buys more than quantizing the teacher would (`--baselines quantized`, the default;
`--baselines none` skips them).

Each is built once per run folder into baselines/NAME (layout.py) by the quantize stage and measured once as
the reference NAME, with the run's protocol, like the teacher. 8-bit is the quantize command's default (min-max
per output channel); 4-bit uses groups of 32 inputs, the setting docs/compression.md measures (per channel
costs far more perplexity at 4 bits), or per channel where 32 does not divide every input width. Both load
dequantized to fp32 (`--runtime dequantized`, the default): they save disk, not compute, so they decode at the
teacher's speed. The reference record's `baseline` block says how each was built, which is what the reports
show; the baselines are not part of the experiment's identity, so a folder started before they existed
continues and gains them, and `--baselines none` on a rerun just leaves them out. Where llama-cpp-python is
installed, the teacher's GGUF q8_0 and q4_0 exports are measured under llama.cpp too (same ids, windows and
prompt: eval/llama_cpp.py); they are where a quantized teacher really runs faster on a CPU. After the arms,
`student_gguf` does the same for each distilled arm's first seed, so the frontier compares a GGUF student with
a GGUF teacher on the runtime a user would ship, not only fp32 students with a GGUF teacher.
"""

from __future__ import annotations

from pathlib import Path

from slimlm.distributed import log
from slimlm.errors import SlimlmError
from slimlm.experiments import runner
from slimlm.experiments.layout import arm_dir, baseline_dir, reference_file, result_file

GROUP_SIZE = 32
GGUF = (("q8_0", 8), ("q4_0", 4))  # llama.cpp's own 8- and 4-bit block formats
QUANTIZED = (
    {"name": "teacher-int8", "bits": 8, "granularity": "channel"},
    {"name": "teacher-int4", "bits": 4, "granularity": "group"},
)


def builds(teacher) -> list[dict]:
    """The quantize settings of each baseline of `teacher` (read from its config; no weights loaded)."""
    from slimlm.sources import model_config

    config = model_config(teacher).get_text_config()
    heads = getattr(config, "num_attention_heads", 0)
    head_dim = getattr(config, "head_dim", None) or getattr(config, "hidden_size", 0) // max(1, heads)
    widths = [getattr(config, "hidden_size", 0), getattr(config, "intermediate_size", 0), heads * head_dim]
    grouped = all(w and w % GROUP_SIZE == 0 for w in widths)  # quantize refuses a group size that does not divide
    out = []
    for build in QUANTIZED:
        settings = {"bits": build["bits"], "granularity": build["granularity"]}
        if build["granularity"] == "group":
            settings = {**settings, "group_size": GROUP_SIZE} if grouped else {**settings, "granularity": "channel"}
        out.append({"name": build["name"], "settings": settings})
    return out


def describe(settings: dict) -> str:
    """`--bits 4 --granularity group --group-size 32`, as the quantize command is typed."""
    return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in settings.items())


def quantized_baselines(run_dir: Path, teacher, data: str, ev: dict, mode: str) -> list[str]:
    """Build (once) and measure (once) each baseline of `mode`; return their reference names."""
    if mode == "none":
        return []
    from slimlm.stages.quantize import quantize

    names = []
    for build in builds(teacher):
        name, settings = build["name"], build["settings"]
        out = baseline_dir(run_dir, name)
        if not reference_file(run_dir, name).exists() and not (out / "slimlm.json").exists():
            log(f"building baseline {name}: the teacher after slimlm quantize {describe(settings)}, into {out}")
            out.parent.mkdir(parents=True, exist_ok=True)
            table = {"block_size": ev["window"], "repeats": ev["repeats"]}
            table.update({"eval_tokens": ev["tokens"]} if ev["tokens"] else {})
            quantize(str(teacher), out=str(out), data=data, force=True, **settings, **table)
        about = {
            "of": "teacher",
            "method": "slimlm quantize",
            **settings,
            "runtime": "dequantized (fp32 weights at load: smaller on disk, the teacher's speed)",
            "command": f"slimlm quantize TEACHER {describe(settings)}",
        }
        runner.measure_reference(run_dir, name, out, data, ev, about={"baseline": about})
        names.append(name)
    return names + _gguf_baselines(run_dir, teacher, data, ev)


def _gguf_baselines(run_dir: Path, teacher, data: str, ev: dict) -> list[str]:
    """The teacher exported to GGUF q8_0 and q4_0 and measured under llama.cpp, where llama-cpp-python is
    installed (the first thing a user would try); said and skipped where it is not."""
    from slimlm.eval.llama_cpp import INSTALL_HINT, available

    if not available():
        log(f"llama.cpp baselines skipped: llama-cpp-python is not installed ({INSTALL_HINT})")
        return []
    found = (_gguf(run_dir, "teacher", teacher, kind, bits, data, ev, {"of": "teacher"}) for kind, bits in GGUF)
    return [n for n in found if n]


def student_gguf(run_dir: Path, spec: dict, data: str, ev: dict, mode: str) -> list[str]:
    """Each distilled arm's first finished seed exported to GGUF q8_0 and q4_0 and measured under llama.cpp
    (where llama-cpp-python is installed; `--baselines none` skips them), named ARM-q8_0-llama.cpp."""
    from slimlm.eval.llama_cpp import available

    if mode == "none" or not available():
        return []
    names = []
    for arm in spec["arms"]:
        seed = next((s for s in spec["seeds"] if result_file(run_dir, arm["name"], s).exists()), None)
        if seed is None:
            continue
        about = {"of": f"{arm['name']} (seed {seed})", "arm": arm["name"], "seed": seed, "axis": arm.get("value")}
        model = arm_dir(run_dir, arm["name"], seed)
        found = (_gguf(run_dir, arm["name"], model, kind, bits, data, ev, about) for kind, bits in GGUF)
        names += [n for n in found if n]
    return names


def _gguf(run_dir: Path, who: str, model, kind: str, bits: int, data: str, ev: dict, about: dict) -> str | None:
    """Export `model` (once) as `who`-KIND.gguf and measure it under llama.cpp (once); its name, or None
    where the export failed or llama.cpp crashed."""
    from slimlm.stages.export import export

    name = f"{who}-{kind}-llama.cpp"
    source = "TEACHER" if who == "teacher" else f"arms/{who}-seed{about['seed']}"
    path = baseline_dir(run_dir, name) / f"{who}-{kind}.gguf"
    about = {
        **about,
        "method": "slimlm export (GGUF), run under llama.cpp",
        "bits": bits,
        "type": kind,
        "runtime": "llama.cpp (llama-cpp-python), the file's own tensor types",
        "command": f"slimlm export {source} --type {kind}; slimlm eval FILE --runtime llama.cpp",
    }
    try:  # a failed export or a llama.cpp crash costs this model, never the study (nor its report)
        if not reference_file(run_dir, name).exists() and not path.exists():
            log(f"building baseline {name}: {about['of']} after slimlm export --type {kind}, into {path}")
            path.parent.mkdir(parents=True, exist_ok=True)
            export(str(model), out=str(path), type=kind, force=True)
        runner.measure_reference(run_dir, name, path, data, ev, about={"baseline": about}, runtime="llama.cpp")
    except SlimlmError as exc:
        log(f"baseline {name} skipped: {exc}")
        return None
    return name
