"""The teacher cache of a cross-tokenizer run (`slimlm distill --teacher-cache` with a student of another
tokenizer): the teacher's final hidden states at the aligned positions of every training block.

The same-tokenizer cache keeps token ids drawn from the teacher (training/teacher_cache.py), which estimates
a KL over one vocabulary; the cross-tokenizer loss also needs the teacher's whole sorted distribution (ULD)
and its probabilities on the shared entries, which no small sample gives without bias. The final hidden
state gives both exactly: the loss multiplies it by the teacher's output head a chunk at a time, as it
does online. It costs 2 bytes per hidden dimension a position (1,280 bytes for Gemma 3 270M), and only
aligned positions are stored. Entries live beside the other teacher caches, so `slimlm cache list|remove`
shows and deletes them; they are written atomically and shared by every run over the same blocks.
"""

from __future__ import annotations

import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from slimlm.cache import fingerprint
from slimlm.data.aligned_blocks import AlignedBlocks, collate_aligned, flat_positions
from slimlm.data.alignment import tokenizer_identity
from slimlm.distributed import log
from slimlm.precision import autocast
from slimlm.training.teacher_cache import save_atomic, teacher_root, weights_identity, write_meta

FILE = "aligned_hidden.safetensors"


def cross_teacher_cache(teacher, teacher_dir, dataset: AlignedBlocks, *, precision, batch_size=4, device=None):
    """The cache folder holding the teacher's final hidden states at the aligned positions of `dataset`'s
    blocks, computed now unless an earlier run stored them."""
    key = fingerprint(
        "cross-teacher-cache-v1",
        str(teacher_dir),
        weights_identity(teacher_dir),
        fingerprint(dataset.blocks.tolist()),
        tokenizer_identity(dataset.student_tokenizer),
        tokenizer_identity(dataset.teacher_tokenizer),
        bool(precision and precision.bf16),
    )
    entry = teacher_root() / key
    if (entry / FILE).exists():
        log(f"reusing cached teacher outputs {entry}")
        return entry
    if device is not None:
        teacher.to(device)
    device = next(teacher.parameters()).device
    rows, offsets = [], [0]
    teacher.eval()
    with torch.inference_mode(), autocast(precision, device.type):
        for start in tqdm(range(0, len(dataset), batch_size), desc="caching teacher outputs", unit="batch"):
            items = [dataset[i] for i in range(start, min(len(dataset), start + batch_size))]
            batch = collate_aligned(items)
            ids = batch["teacher_input_ids"].to(device)
            out = teacher(
                input_ids=ids,
                attention_mask=batch["teacher_attention_mask"].to(device),
                output_hidden_states=True,
                logits_to_keep=1,
                use_cache=False,
            )
            picked = flat_positions(batch["teacher_positions"], ids.shape[1]).to(device)
            rows.append(out.hidden_states[-1].flatten(0, 1).index_select(0, picked).to(torch.bfloat16).cpu())
            for item in items:
                offsets.append(offsets[-1] + len(item["teacher_positions"]))
    hidden = torch.cat(rows)
    entry.mkdir(parents=True, exist_ok=True)
    save_atomic({"hidden": hidden, "offsets": torch.tensor(offsets, dtype=torch.int64)}, entry / FILE)
    per_position = hidden.shape[1] * hidden.element_size()
    log(
        f"teacher cache (cross-tokenizer: final hidden states at aligned positions): {per_position} bytes a "
        f"position, {hidden.numel() * hidden.element_size() / 2**20:.1f} MiB for {len(hidden):,} positions -> {entry}"
    )
    signal = {"mode": "cross-tokenizer", "hidden_size": hidden.shape[1]}
    write_meta(entry, teacher_dir, signal, per_position, positions=len(hidden))
    return entry


class CrossCachedTeacher:
    """Reads one block's cached teacher rows on demand (memory-mapped by safetensors)."""

    def __init__(self, entry):
        self.entry = entry
        self._handle = None
        self._offsets = None

    def __getitem__(self, i: int) -> torch.Tensor:
        if self._handle is None:
            self._handle = safe_open(str(self.entry / FILE), framework="pt")
            self._offsets = self._handle.get_tensor("offsets").tolist()
        return self._handle.get_slice("hidden")[self._offsets[i] : self._offsets[i + 1]]

    def storage(self) -> dict:
        hidden = safe_open(str(self.entry / FILE), framework="pt").get_slice("hidden").get_shape()
        return {
            "entry": str(self.entry),
            "mode": "cross-tokenizer",
            "bytes_per_position": hidden[1] * 2,
            "positions": hidden[0],
        }

    def __getstate__(self):  # dataloader workers open their own handles
        return {**self.__dict__, "_handle": None, "_offsets": None}
