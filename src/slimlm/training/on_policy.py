"""On-policy distillation: for a share λ of the steps the student writes the end of each block itself.

Off-policy KD teaches the student the teacher's distribution on text it will never write; at generation time it
conditions on its own earlier tokens, where its mistakes compound. GKD (Agarwal et al., ICLR 2024) mixes in
batches whose continuations the student sampled, scored by the teacher. Here a due step keeps each block's
first `block - C` tokens as the prompt and replaces its last C tokens by the student's continuation (sampled
with a KV cache at `temperature`, eval/decode.py); the teacher then scores prompt + continuation in its usual
single forward, and training/terms.py puts the divergence (not CE) on the continuation's rows. The block keeps
its length, so the student and teacher forwards, the loss kernel and the step's token count are unchanged:
what an on-policy step adds is the sampling, timed here and reported as its share of the training time.

Which steps are on-policy is decided from the step number alone (exactly λ of them, the same on every rank,
the same after a resume), and the samples come from a generator seeded by (seed, step, micro-batch), so a run
is repeatable and λ = 0 draws nothing. `reuse` r > 1 trains each rollout r times (DistiLLM's replay idea,
Ko et al. 2024): one due step in r samples, the next r - 1 train on its stored batch again, in place of their
data blocks (slimlm.json counts those tokens apart: `reused_tokens`, and the run's `data_tokens`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from slimlm.eval.decode import sample_continuations
from slimlm.losses import IGNORE_INDEX

COUNTERS_FILE = "on-policy.json"  # in a checkpoint: OnPolicy's counters
ROLLOUT_FILE = "on-policy-rollout-{rank}.safetensors"  # in a checkpoint: a rank's stored rollout (--rollout-reuse)


@dataclass
class OnPolicy:
    share: float  # λ: the share of optimizer steps whose continuations the student samples
    continuation_tokens: int  # C: tokens sampled after each block's prompt
    temperature: float = 1.0  # the student samples at this temperature (no top-k, no top-p)
    seed: int = 0
    reuse: int = 1  # times each rollout is trained on
    seconds: float = 0.0  # spent sampling
    rollouts: int = 0
    reused: int = 0  # micro-batches trained again from the stored rollout
    reused_tokens: int = 0  # their tokens: the data blocks they stood in for were not trained on
    tokens: int = 0  # tokens sampled
    _stored: list = field(default_factory=list)  # the last rollout's batches, one per micro-batch
    _due_seen: int = 0
    _micro: tuple = (-1, 0)  # (step, micro-batch index within it)

    def due(self, step: int) -> bool:
        """Whether optimizer step `step` (0-based) is on-policy: floor((k+1)λ) > floor(kλ) marks exactly λ of them,
        spread evenly, with no random draw (so every rank and a resumed run agree)."""
        return math.floor((step + 1) * self.share + 1e-9) > math.floor(step * self.share + 1e-9)

    def batch(self, student, inputs: dict, step: int, precision) -> dict:
        """`inputs` with the last C tokens of each block written by `student`, `policy_rows` marking the rows that
        predict them and `sample_logprobs` their log-probabilities under the sampling distribution."""
        micro = self._micro[1] + 1 if self._micro[0] == step else 0
        self._micro = (step, micro)
        if micro == 0:
            self._due_seen += 1
        if self.reuse > 1 and (self._due_seen - 1) % self.reuse and micro < len(self._stored):
            self.reused += 1
            self.reused_tokens += self._stored[micro]["input_ids"].numel()
            return self._stored[micro]
        if micro == 0:
            self._stored = []
        batch = self._rollout(student, inputs, step, micro, precision)
        if self.reuse > 1:
            self._stored.append(batch)
        return batch

    def _rollout(self, student, inputs: dict, step: int, micro: int, precision) -> dict:
        ids = inputs["input_ids"]
        c = self.continuation_tokens
        prompt = ids.shape[1] - c
        if prompt < 1:
            raise ValueError(f"--continuation-tokens {c} leaves no prompt in blocks of {ids.shape[1]} tokens")
        generator = torch.Generator(device=ids.device).manual_seed(_stream(self.seed, step, micro))
        start = time.perf_counter()
        rollout = sample_continuations(
            student, ids[:, :prompt], c, temperature=self.temperature, generator=generator, precision=precision
        )
        self.seconds += time.perf_counter() - start
        self.rollouts += 1
        self.tokens += rollout.tokens.numel()
        new_ids = torch.cat([ids[:, :prompt], rollout.tokens.to(ids.dtype)], dim=1)
        labels = inputs["shift_labels"].clone()
        labels[:, prompt - 1 : -1] = rollout.tokens  # row t predicts token t + 1: the sampled ones
        policy = torch.zeros_like(labels, dtype=torch.bool)
        policy[:, prompt - 1 : -1] = True
        policy &= labels.ne(IGNORE_INDEX)
        logprobs = torch.zeros(labels.shape, dtype=torch.float32, device=ids.device)
        logprobs[:, prompt - 1 : -1] = rollout.logprobs.float()
        out = {k: v for k, v in inputs.items() if k not in ("input_ids", "shift_labels", "labels")}
        out.update(input_ids=new_ids, shift_labels=labels, policy_rows=policy, sample_logprobs=logprobs)
        if "labels" in inputs:
            out["labels"] = new_ids.clone()
        return out

    COUNTERS = ("seconds", "rollouts", "reused", "reused_tokens", "tokens", "_due_seen")

    def save(self, folder: Path, rank: int) -> None:
        """Into a checkpoint: the counters (rank 0) and this rank's stored rollout, so a resumed run trains on
        what an uninterrupted one would and its record counts the whole run."""
        if rank == 0:
            (folder / COUNTERS_FILE).write_text(json.dumps({name: getattr(self, name) for name in self.COUNTERS}))
        if self._stored:
            tensors = {f"{i}.{k}": v.contiguous() for i, b in enumerate(self._stored) for k, v in b.items()}
            save_file(tensors, folder / ROLLOUT_FILE.format(rank=rank))

    def load(self, folder: Path, rank: int) -> None:
        """What `save` kept, from a checkpoint (one written before on-policy counters were kept: nothing)."""
        if (folder / COUNTERS_FILE).is_file():
            state = json.loads((folder / COUNTERS_FILE).read_text())
            for name in self.COUNTERS:
                setattr(self, name, type(getattr(self, name))(state.get(name, getattr(self, name))))
        rollout = folder / ROLLOUT_FILE.format(rank=rank)
        if rollout.is_file():
            stored: dict[int, dict] = {}
            for key, value in load_file(str(rollout)).items():
                i, name = key.split(".", 1)
                stored.setdefault(int(i), {})[name] = value
            self._stored = [stored[i] for i in sorted(stored)]

    def record(self) -> dict:
        """What slimlm.json records of the on-policy part of a run."""
        return {
            "share": self.share,
            "continuation_tokens": self.continuation_tokens,
            "sample_temperature": self.temperature,
            "rollout_reuse": self.reuse,
            "rollouts": self.rollouts,
            "reused_batches": self.reused,
            "reused_tokens": self.reused_tokens,
            "tokens_sampled": self.tokens,
            "sampling_s": round(self.seconds, 2),
            "sampled_tokens_per_s": round(self.tokens / self.seconds, 1) if self.seconds else None,
        }


def _stream(seed: int, step: int, micro: int) -> int:
    """One generator seed per (run seed, step, micro-batch), far apart, below 2**63."""
    return (seed * 1_000_003 + step * 1_009 + micro) % (2**63 - 1)
