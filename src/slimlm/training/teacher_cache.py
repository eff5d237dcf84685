"""Teacher outputs computed once per (teacher, training blocks) and reused by later runs.

On a CPU the teacher's forward pass is a large share of every distillation step, and a sweep
(temperatures, layers, seeds) runs the same teacher over the same blocks again and again. The
cache keeps what the loss needs: the top-k logits of every position (the KD term then runs over
the teacher's top-k support, renormalised) and the hidden states of the teacher layers in the
feature map. Stored as safetensors and read a block at a time.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from slimlm.cache import cache_root, fingerprint
from slimlm.precision import autocast


def teacher_cache(
    teacher,
    teacher_dir: Path,
    blocks: torch.Tensor,
    *,
    top_k: int,
    hidden_layers: list[int],
    precision,
    batch_size: int = 4,
    chunk: int = 1024,
    device=None,
) -> Path:
    """Return the cache folder for these blocks, running the teacher only for what no earlier run stored.

    Logits and each hidden layer live in their own file, so runs that distil from different teacher
    layers over the same blocks (a feature-layer sweep) share one entry: ask for all layers once.
    `device`: where to run the teacher; it is moved there only when something has to be computed.
    """
    key = fingerprint(
        "teacher-cache-v2",
        str(Path(teacher_dir).resolve()),
        _weights_identity(teacher_dir),
        fingerprint(blocks.tolist()),
        top_k,
        bool(precision and precision.bf16),
    )
    entry = cache_root() / "teacher" / key
    need_logits = not (entry / "logits.safetensors").exists()
    missing = [layer for layer in sorted(set(hidden_layers)) if not (entry / f"hidden_{layer}.safetensors").exists()]
    if not need_logits and not missing:
        print(f"slimlm: reusing cached teacher outputs {entry}", file=sys.stderr)
        return entry
    if device is not None:
        teacher.to(device)
    head = teacher.get_output_embeddings().weight
    values, indices = [], []
    hidden = {layer: [] for layer in missing}
    teacher.eval()
    with torch.inference_mode(), autocast(precision, head.device.type):
        for start in tqdm(range(0, len(blocks), batch_size), desc="caching teacher outputs", unit="batch"):
            ids = blocks[start : start + batch_size].to(head.device)
            out = teacher(input_ids=ids, output_hidden_states=True, logits_to_keep=1, use_cache=False)
            if need_logits:
                final = out.hidden_states[-1].flatten(0, 1)
                top_v, top_i = [], []
                for c in range(0, len(final), chunk):  # never the whole batch's fp32 logits at once
                    logits = final[c : c + chunk].float() @ head.float().T
                    v, i = logits.topk(top_k, dim=-1)
                    top_v.append(v)
                    top_i.append(i.int())
                values.append(torch.cat(top_v).view(*ids.shape, top_k).cpu())
                indices.append(torch.cat(top_i).view(*ids.shape, top_k).cpu())
            for layer in missing:
                hidden[layer].append(out.hidden_states[layer].to(torch.bfloat16).cpu())
    entry.mkdir(parents=True, exist_ok=True)
    if need_logits:
        _save_atomic(
            {"topk_values": torch.cat(values), "topk_indices": torch.cat(indices)}, entry / "logits.safetensors"
        )
    for layer, h in hidden.items():
        _save_atomic({"hidden": torch.cat(h)}, entry / f"hidden_{layer}.safetensors")
    return entry


def _save_atomic(tensors: dict, path: Path) -> None:
    """Write next to `path` and rename, so a killed run never leaves a truncated cache file behind."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp)
    os.replace(tmp, path)


def _weights_identity(model_dir: Path) -> list:
    return sorted([p.name, p.stat().st_size, p.stat().st_mtime] for p in Path(model_dir).glob("*.safetensors"))


class CachedTeacher:
    """Reads one block's teacher outputs from the cache folder on demand (memory-mapped by safetensors)."""

    def __init__(self, entry: Path, hidden_layers: list[int]):
        self.entry = Path(entry)
        self.hidden_layers = list(hidden_layers)
        self._handles = None

    def __getitem__(self, i: int) -> dict:
        if self._handles is None:
            self._handles = {"logits": safe_open(str(self.entry / "logits.safetensors"), framework="pt")}
            for layer in self.hidden_layers:
                self._handles[layer] = safe_open(str(self.entry / f"hidden_{layer}.safetensors"), framework="pt")
        h = self._handles
        item = {
            "topk_values": h["logits"].get_slice("topk_values")[i],
            "topk_indices": h["logits"].get_slice("topk_indices")[i],
        }
        for layer in self.hidden_layers:
            item[f"teacher_hidden_{layer}"] = h[layer].get_slice("hidden")[i]
        return item

    def __getstate__(self):  # dataloader workers open their own handles
        return {**self.__dict__, "_handles": None}
