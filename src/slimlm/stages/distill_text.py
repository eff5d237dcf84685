"""Where a distillation run's signal comes from besides the data and the online teacher: the teacher cache
(training/teacher_cache.py), the teacher's own continuations of the blocks (sequence-level KD,
training/teacher_generated.py) and the student's samples (on-policy, training/on_policy.py)."""

from __future__ import annotations

import time

import torch

from slimlm import distributed
from slimlm.distributed import log
from slimlm.settings import DistillSettings
from slimlm.stages.distill_checks import cache_layers
from slimlm.training.on_policy import OnPolicy
from slimlm.training.teacher_generated import teacher_continuations, with_continuations


def student_sampling(settings: DistillSettings) -> OnPolicy | None:
    """The on-policy part of the run, or None at --on-policy 0 (then nothing is built and nothing drawn)."""
    if not settings.on_policy:
        return None
    return OnPolicy(
        settings.on_policy,
        settings.continuation_tokens,
        settings.sample_temperature,
        seed=settings.seed,
        reuse=settings.rollout_reuse,
    )


def teacher_written_blocks(settings: DistillSettings, teacher, teacher_dir, blocks, precision) -> tuple:
    """(the blocks ending with the teacher's own continuations, what slimlm.json records of them): written once
    by rank 0 and kept in the teacher cache; the other ranks read its entry."""
    start = time.time()
    tokens = distributed.main_first(
        teacher_continuations,
        teacher,
        teacher_dir,
        blocks,
        continuation_tokens=settings.continuation_tokens,
        temperature=settings.sample_temperature,
        seed=settings.seed,
        precision=precision,
    )
    record = {
        "blocks": len(tokens),
        "continuation_tokens": settings.continuation_tokens,
        "sample_temperature": settings.sample_temperature,
        "tokens": int(tokens.numel()),
        "seconds": round(time.time() - start, 1),
    }
    return with_continuations(blocks, tokens), record


def cached_teacher(settings: DistillSettings, teacher, teacher_dir, blocks, feature_map, precision):
    """The cached teacher signal for these blocks (rank 0 computes it once, on its accelerator if any; the
    others read it), or None for the online teacher."""
    from slimlm.training.teacher_cache import CachedTeacher, teacher_cache

    if not settings.teacher_cache:
        return None
    if settings.cache_mode == "topk" and settings.temperature >= 5:
        log(
            f"warning: --cache-mode topk keeps the teacher's top-{settings.top_k} logits only; at temperature "
            f"{settings.temperature:g} matching that truncated distribution drove students' logits apart "
            "(perplexity 1e4-1e8 in docs/experiments.md); the default --cache-mode sample has no such bias"
        )
    if settings.cache_mode == "sample" and settings.cache_draws is None and settings.temperature >= 5:
        log(
            f"warning: at temperature {settings.temperature:g} the default draws a position (31 for a vocabulary "
            "up to 65,536) are noisy (variance about tau^2 / draws): at tau 10 they left students 12-14% behind "
            "the online teacher, 127 draws 3-4% (docs/results/cache-quality); pass --cache-draws 127 (256 bytes "
            "a position)"
        )
    # the teacher goes to the device only on a rank that has something to compute (teacher_cache moves it)
    device = torch.device("cuda", distributed.local_rank()) if torch.cuda.is_available() else None
    layers = [t for t, _ in feature_map]
    path = distributed.main_first(
        teacher_cache,
        teacher,
        teacher_dir,
        blocks,
        mode=settings.cache_mode,
        temperature=settings.temperature,
        draws=settings.cache_draws,
        top_k=settings.top_k,
        hidden_layers=layers + cache_layers(settings.cache_layers, teacher.config.num_hidden_layers),
        precision=precision,
        device=device,
    )
    teacher.to("cpu")  # the run reads the cache; the teacher is not needed on the device
    return CachedTeacher(path, layers)
