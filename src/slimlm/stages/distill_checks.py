"""Stage `distill`'s settings checked against the models' shapes (layers to keep, layer maps, cached top-k and
draws) from their config.json alone: a wrong index is one line before the output is claimed or weights load."""

from __future__ import annotations

from slimlm import distributed
from slimlm.errors import SlimlmError
from slimlm.methods.layers import parse_keep_layers
from slimlm.methods.width import check_widths
from slimlm.settings import DistillSettings, comma_list, parse_layer_map
from slimlm.sources import layer_count, model_config


def check_shapes(settings: DistillSettings) -> None:
    """Settings that depend on the models' shapes (layers to keep, layer maps, cached top-k) or on each other,
    checked from config.json alone, so a wrong index is one line now rather than after the teacher has loaded."""
    teacher = distributed.main_first(model_config, settings.teacher, trust_remote_code=settings.trust_remote_code)
    n_t = layer_count(teacher)
    if settings.student is not None:
        student = distributed.main_first(model_config, settings.student, trust_remote_code=settings.trust_remote_code)
        n_s = layer_count(student)
    elif settings.layers is not None:
        if not 1 <= settings.layers <= n_t:
            raise SlimlmError(
                f"--layers {settings.layers} is out of range; the teacher has {n_t} layers, keep 1..{n_t}"
            )
        n_s = settings.layers
    else:
        n_s = len(parse_keep_layers(settings.keep_layers, n_t))
    if settings.student is None and settings.student_config:
        check_widths(teacher, settings.student_config)
    for flag, spec, top_t, top_s in (
        ("--feature-layers", settings.feature_layers, n_t, n_s),
        ("--attention-layers", settings.attention_layers, n_t - 1, n_s - 1),
    ):
        try:
            parse_layer_map(spec, top_t, top_s)
        except SlimlmError as exc:
            raise SlimlmError(f"{flag}: {exc}") from None
    cache_layers(settings.cache_layers, n_t)
    vocab = teacher.get_text_config().vocab_size
    if settings.teacher_cache and settings.cache_mode == "topk" and settings.top_k > vocab:
        raise SlimlmError(
            f"--top-k {settings.top_k} is more than the teacher's vocabulary ({vocab} tokens); "
            f"give at most {vocab} (the default is {DistillSettings.top_k})"
        )
    if settings.teacher_cache and settings.cache_mode == "sample" and (settings.cache_draws or 0) > vocab:
        raise SlimlmError(
            f"--cache-draws {settings.cache_draws} is more than the teacher's vocabulary ({vocab} tokens): more "
            f"draws per position cost more than the whole distribution; give at most {vocab} (the default fits "
            "64 bytes a position)"
        )
    if settings.teacher_cache and settings.attention_layers and settings.attention_weight > 0:
        raise SlimlmError("attention distillation needs the online teacher; drop --teacher-cache")


def cache_layers(text: str, n_teacher: int) -> list[int]:
    """--cache-layers "2,8,15": teacher hidden-state indices (0 = embeddings .. n_teacher = last layer)."""
    layers = []
    for part in comma_list(text):
        if not part.isdigit() or not 0 <= int(part) <= n_teacher:
            raise SlimlmError(f"--cache-layers {text!r}: {part!r} is not a hidden-state index in 0..{n_teacher}")
        layers.append(int(part))
    return layers
