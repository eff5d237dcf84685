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
prompt: eval/llama_cpp.py); they are where a quantized teacher really runs faster on a CPU.
"""

from __future__ import annotations

from pathlib import Path

from slimlm.distributed import log
from slimlm.errors import SlimlmError
from slimlm.experiments import runner
from slimlm.experiments.layout import baseline_dir, reference_file

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
    from slimlm.stages.export import export

    names = []
    for kind, bits in GGUF:
        name = f"teacher-{kind}-llama.cpp"
        path = baseline_dir(run_dir, name) / f"teacher-{kind}.gguf"
        if not reference_file(run_dir, name).exists() and not path.exists():
            log(f"building baseline {name}: the teacher after slimlm export --type {kind}, into {path}")
            path.parent.mkdir(parents=True, exist_ok=True)
            export(str(teacher), out=str(path), type=kind, force=True)
        about = {
            "of": "teacher",
            "method": "slimlm export (GGUF), run under llama.cpp",
            "bits": bits,
            "type": kind,
            "runtime": "llama.cpp (llama-cpp-python), the file's own tensor types",
            "command": f"slimlm export TEACHER --type {kind}; slimlm eval FILE --runtime llama.cpp",
        }
        try:
            runner.measure_reference(run_dir, name, path, data, ev, about={"baseline": about}, runtime="llama.cpp")
        except SlimlmError as exc:  # a llama.cpp crash costs this baseline, never the study
            log(f"baseline {name} skipped: {exc}")
            continue
        names.append(name)
    return names
