"""Teacher outputs computed once per (teacher, training blocks) and reused by later runs.

On a CPU the teacher's forward pass is a large share of every distillation step, and a sweep (seeds,
layers, epochs) runs the same teacher over the same blocks again and again. The cache keeps what the loss
needs, in one of two modes:

- `sample` (the default): n token ids drawn per position from the teacher's distribution at the run's
  temperature, with replacement, plus that distribution's entropy (random-sampling KD, Anshumann et al.,
  ACL 2025). The loss built on them (losses/divergences.sampled_forward_kl) is an unbiased estimate of the
  full-vocabulary forward KL and of its gradient. The draws depend on the temperature, so each temperature
  has its own entry; n is chosen to fit 64 bytes a position (31 uint16 ids + an fp16 entropy).
- `topk`: the k largest logits and their ids; the loss renormalises the teacher over those k tokens, which
  drops its tail mass. That is biased (docs/distillation.md measures it) and kept only when asked for.

Hidden states of the teacher layers in the feature map are stored beside either. Stored as safetensors,
written atomically, read a block at a time; `slimlm cache list|remove` shows and deletes entries.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from slimlm.cache import cache_root, fingerprint, remove_under
from slimlm.disk import WRITE_FAULTS, free_space, require_space, write_problem
from slimlm.distributed import log
from slimlm.errors import SlimlmError
from slimlm.precision import autocast
from slimlm.settings import CACHE_MODES

BYTES_PER_POSITION = 64  # the sampled mode's default budget: draws fill it after the fp16 entropy
META = "meta.json"
CACHE_FIX = "free space there (slimlm cache list / remove) or set SLIMLM_CACHE to a folder on a larger disk"


def id_dtype(vocab_size: int) -> torch.dtype:
    """The narrowest integer type that holds every token id (uint16 for vocabularies up to 65,536)."""
    return torch.uint16 if vocab_size <= 2**16 else torch.int32


def default_draws(vocab_size: int) -> int:
    """Draws per position that fit BYTES_PER_POSITION beside the 2-byte entropy: 31 uint16 ids, or 15 int32."""
    return (BYTES_PER_POSITION - 2) // id_dtype(vocab_size).itemsize


def bytes_per_position(mode: str, vocab_size: int, *, draws: int | None = None, top_k: int = 64) -> int:
    """What one position of the cache costs on disk (teacher hidden states not counted)."""
    if mode == "sample":
        return (draws or default_draws(vocab_size)) * id_dtype(vocab_size).itemsize + 2
    return top_k * (4 + 4)  # fp32 logit + int32 id


def teacher_root() -> Path:
    return cache_root() / "teacher"


@dataclass
class _Entry:
    """One cache entry, looked up or being built: where it is, the signal it stores and what it still lacks."""

    path: Path
    signal: dict  # the mode and its parameters, as meta.json records them
    signal_file: Path
    need_signal: bool  # the signal file is not there yet
    missing: list[int]  # the hidden layers not stored yet
    chunk_args: tuple  # (mode, temperature, draws, top_k): what chunk_signal computes
    vocab: int
    per_position: int  # bytes a position of the signal takes
    positions: int
    bytes_needed: int  # what computing what is missing will write


def teacher_cache(
    teacher,
    teacher_dir: Path,
    blocks: torch.Tensor,
    *,
    mode: str = "sample",
    temperature: float = 2.0,
    draws: int | None = None,
    top_k: int = 64,
    hidden_layers: list[int],
    precision,
    batch_size: int = 4,
    chunk: int = 1024,
    device=None,
) -> Path:
    """Return the cache folder for these blocks, running the teacher only for what no earlier run stored.

    The teacher signal and each hidden layer live in their own file, so runs that distil from different teacher
    layers over the same blocks (a feature-layer sweep) share one entry: ask for all layers once.
    `device`: where to run the teacher; it is moved there only when something has to be computed.
    """
    if mode not in CACHE_MODES:
        raise ValueError(f"cache mode must be one of {', '.join(CACHE_MODES)}, got {mode!r}")
    head = teacher.get_output_embeddings().weight
    entry = _entry(head, teacher_dir, blocks, (mode, temperature, draws, top_k), hidden_layers, precision)
    if not entry.need_signal and not entry.missing:
        log(f"reusing cached teacher outputs {entry.path}")
        _touch(entry.path)
        return entry.path
    check_room(entry.path, entry.bytes_needed)  # before the teacher runs, not when its outputs are written
    if device is not None:
        teacher.to(device)
    outputs = run_teacher(teacher, blocks, entry, precision, batch_size=batch_size, chunk=chunk)
    save_entry(entry, teacher_dir, *outputs)
    return entry.path


def _entry(head, teacher_dir: Path, blocks: torch.Tensor, signal_args: tuple, hidden_layers, precision) -> _Entry:
    """The entry for this teacher, these blocks, this signal (`signal_args`: mode, temperature, draws or None,
    top_k) and precision, and what of it is not stored yet."""
    mode, temperature, draws, top_k = signal_args
    vocab = head.shape[0]
    draws = draws or default_draws(vocab)
    signal = (
        {"mode": mode, "temperature": temperature, "draws": draws}
        if mode == "sample"
        else {"mode": mode, "top_k": top_k}
    )
    key = fingerprint(
        "teacher-cache-v3",
        str(Path(teacher_dir).resolve()),
        weights_identity(teacher_dir),
        fingerprint(blocks.tolist()),
        signal,
        bool(precision and precision.bf16),
    )
    path = teacher_root() / key
    signal_file = path / ("samples.safetensors" if mode == "sample" else "logits.safetensors")
    need_signal = not signal_file.exists()
    missing = [layer for layer in sorted(set(hidden_layers)) if not (path / f"hidden_{layer}.safetensors").exists()]
    per_position = bytes_per_position(mode, vocab, draws=draws, top_k=top_k)
    positions = int(blocks.numel())
    needed = (per_position if need_signal else 0) * positions + len(missing) * positions * head.shape[1] * 2
    chunk_args = (mode, temperature, draws, top_k)
    return _Entry(path, signal, signal_file, need_signal, missing, chunk_args, vocab, per_position, positions, needed)


def run_teacher(teacher, blocks: torch.Tensor, entry: _Entry, precision, *, batch_size: int, chunk: int) -> tuple:
    """(signal part 1, signal part 2, {layer: hidden states}) on the CPU, a batch of blocks at a time: what
    `entry` lacks. The draws come from a generator seeded by the entry's key, so a rebuild draws the same."""
    head = teacher.get_output_embeddings().weight
    gen = torch.Generator(device=head.device).manual_seed(int(entry.path.name[:12], 16))
    first, second = [], []
    hidden = {layer: [] for layer in entry.missing}
    teacher.eval()
    with torch.inference_mode(), autocast(precision, head.device.type):
        for start in tqdm(range(0, len(blocks), batch_size), desc="caching teacher outputs", unit="batch"):
            ids = blocks[start : start + batch_size].to(head.device)
            out = teacher(input_ids=ids, output_hidden_states=True, logits_to_keep=1, use_cache=False)
            if entry.need_signal:
                final = out.hidden_states[-1].flatten(0, 1)
                parts = [
                    chunk_signal(final[c : c + chunk], head, *entry.chunk_args, gen)
                    for c in range(0, len(final), chunk)
                ]  # never the whole batch's fp32 logits at once
                first.append(torch.cat([a for a, _ in parts]).view(*ids.shape, -1).cpu())
                second.append(torch.cat([b for _, b in parts]).view(*ids.shape, -1).cpu())
            for layer in entry.missing:
                hidden[layer].append(out.hidden_states[layer].to(torch.bfloat16).cpu())
    return first, second, hidden


def save_entry(entry: _Entry, teacher_dir, first: list, second: list, hidden: dict) -> None:
    """Write what was computed into the entry, meta.json last; on a full disk no half-written entry is left
    for a later run to judge."""
    created = not entry.path.exists()
    try:
        entry.path.mkdir(parents=True, exist_ok=True)
        if entry.need_signal:
            save_atomic(_signal_tensors(entry, first, second), entry.signal_file)
            _log_signal(entry)
        for layer, h in hidden.items():
            save_atomic({"hidden": torch.cat(h)}, entry.path / f"hidden_{layer}.safetensors")
        write_meta(entry.path, teacher_dir, entry.signal, entry.per_position, positions=entry.positions)
    except WRITE_FAULTS as exc:
        if created:
            remove_under(teacher_root(), entry.path)
        raise SlimlmError(write_problem(entry.path, exc, fix=CACHE_FIX)) from None


def _signal_tensors(entry: _Entry, first: list, second: list) -> dict:
    """The signal as stored: fp16 entropy and narrow-integer draws, or fp32 top-k values and int32 ids."""
    if entry.signal["mode"] == "sample":
        return {
            "teacher_entropy": torch.cat(first).squeeze(-1).half(),
            "sample_ids": torch.cat(second).to(id_dtype(entry.vocab)),
        }
    return {"topk_values": torch.cat(first), "topk_indices": torch.cat(second).int()}


def _log_signal(entry: _Entry) -> None:
    """What the signal just written costs, so a user sees the cache's size grow."""
    signal, per_position = entry.signal, entry.per_position
    if signal["mode"] == "sample":
        what = f"{signal['draws']} draws per position at temperature {signal['temperature']:g}"
    else:
        what = f"top-{signal['top_k']}"
    log(
        f"teacher cache ({signal['mode']}, {what}): {per_position} bytes a position, "
        f"{per_position * entry.positions / 2**20:.1f} MiB for {entry.positions:,} positions -> {entry.path}"
    )


def check_room(entry: Path, needed: int) -> None:
    """Say what the entry will take, and refuse one that the cache's disk cannot hold."""
    if needed <= 0:
        return
    root = teacher_root()
    log(f"teacher cache: this entry needs {needed / 2**20:,.1f} MiB{free_space(root)}")
    require_space(root, needed, "the teacher cache entry", fix=CACHE_FIX + " (or lower --cache-draws)")


def chunk_signal(final, head, mode, temperature, draws, top_k, gen):
    """One chunk's teacher signal: (entropy (m, 1), draws (m, n)) or (top-k values (m, k), ids (m, k))."""
    logits = final.float() @ head.float().T
    if mode == "topk":
        values, ids = logits.topk(top_k, dim=-1)
        return values, ids.int()
    log_p = torch.log_softmax(logits / temperature, dim=-1)
    p = log_p.exp()
    entropy = -(p * log_p).sum(-1, keepdim=True)
    return entropy, torch.multinomial(p, draws, replacement=True, generator=gen).int()


def write_meta(entry: Path, teacher_dir, signal: dict, per_position: int, *, positions: int) -> None:
    """What `slimlm cache list` shows about an entry (written last: an entry without it is listed as partial)."""
    meta = {
        "teacher": str(teacher_dir),
        **signal,
        "bytes_per_position": per_position,
        "positions": positions,
        "hidden_layers": sorted(int(p.stem.split("_")[1]) for p in entry.glob("hidden_*.safetensors")),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    tmp = entry / f".{META}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, entry / META)


def _touch(entry: Path) -> None:
    """Mark an entry used now, so `slimlm cache list` can say which entries nobody has read for a while."""
    try:
        os.utime(entry)
    except OSError:
        pass


def list_entries() -> list[dict]:
    """Every teacher cache entry: its key, what it holds (meta.json), its size on disk and when it was last used."""
    root = teacher_root()
    entries = []
    for entry in sorted(root.iterdir()) if root.is_dir() else []:
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        meta = read_meta(entry)
        size = sum(f.stat().st_size for f in entry.rglob("*") if f.is_file() and not f.is_symlink())
        # the key is the folder's name, never a field of the file: a meta.json cannot point a removal elsewhere
        entries.append({**meta, "key": entry.name, "bytes": size, "last_used": entry.stat().st_mtime})
    return entries


def read_meta(entry: Path) -> dict:
    """An entry's meta.json as a mapping; an unreadable one (partial, damaged, older) is listed as such."""
    try:
        meta = json.loads((entry / META).read_text())
    except (OSError, ValueError):
        return {"mode": "partial or from an older slimlm"}
    return meta if isinstance(meta, dict) else {"mode": "damaged (meta.json is not a mapping)"}


def remove_entries(keys: list[str]) -> int:
    """Delete these entries (whole keys, or unique prefixes); returns the bytes freed."""
    known = {e["key"]: e for e in list_entries()}
    freed = 0
    for key in keys:
        matches = [k for k in known if key and k.startswith(key)]
        if len(matches) != 1:
            what = "no entry matches" if not matches else f"{len(matches)} entries match"
            raise ValueError(f"{what} {key!r} in {teacher_root()}; `slimlm cache list` shows the keys")
        remove_under(teacher_root(), teacher_root() / matches[0])
        freed += known.pop(matches[0])["bytes"]
    return freed


def save_atomic(tensors: dict, path: Path) -> None:
    """Write next to `path` and rename, so a killed run never leaves a truncated cache file behind."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def weights_identity(model_dir: Path) -> list:
    return sorted([p.name, p.stat().st_size, p.stat().st_mtime] for p in Path(model_dir).glob("*.safetensors"))


class CachedTeacher:
    """Reads one block's teacher outputs from the cache folder on demand (memory-mapped by safetensors)."""

    def __init__(self, entry: Path, hidden_layers: list[int]):
        self.entry = Path(entry)
        self.hidden_layers = list(hidden_layers)
        self._handles = None

    def __getitem__(self, i: int) -> dict:
        if self._handles is None:
            sampled = (self.entry / "samples.safetensors").exists()
            name = "samples.safetensors" if sampled else "logits.safetensors"
            self._handles = {"signal": safe_open(str(self.entry / name), framework="pt")}
            for layer in self.hidden_layers:
                self._handles[layer] = safe_open(str(self.entry / f"hidden_{layer}.safetensors"), framework="pt")
        h = self._handles
        item = {key: h["signal"].get_slice(key)[i] for key in h["signal"].keys()}
        if "sample_ids" in item:  # uint16 on disk; collation and indexing want a common integer type
            item["sample_ids"] = item["sample_ids"].to(torch.int32)
        for layer in self.hidden_layers:
            item[f"teacher_hidden_{layer}"] = h[layer].get_slice("hidden")[i]
        return item

    def storage(self) -> dict:
        """What slimlm.json records about the cache: its entry, mode and bytes per position (meta.json)."""
        meta = read_meta(self.entry)
        keep = ("mode", "temperature", "draws", "top_k", "bytes_per_position", "positions")
        return {"entry": str(self.entry), **{k: meta[k] for k in keep if k in meta}}

    def __getstate__(self):  # dataloader workers open their own handles
        return {**self.__dict__, "_handles": None}
