"""Every command's settings, declared once (settings/commands.py, settings/training.py,
settings/studies.py): the CLI generates
its flags from them (settings/flags.py), the stage functions build them from keyword arguments, recipes fill
them from YAML, and all three refuse a bad value with the same one-line message before any model loads.
"""

from slimlm.settings.commands import (
    CacheSettings,
    EvalSettings,
    ExportSettings,
    FetchSettings,
    PruneSettings,
    QuantizeSettings,
    StudentSettings,
)
from slimlm.settings.fields import Settings, as_layer_list, check_positive_int, comma_list, option
from slimlm.settings.studies import (
    EVAL_DEFAULTS,
    EXPERIMENT_KINDS,
    ExperimentSettings,
    PipelineSettings,
    ReportSettings,
)
from slimlm.settings.training import (
    CACHE_MODES,
    FINETUNE_METHODS,
    PRECISIONS,
    SHARDED_STATE_DICT_REFUSED,
    DistillSettings,
    FinetuneSettings,
    TrainingRun,
    TrainingSettings,
)
from slimlm.settings.values import general_off, load_recipe, parse_duration, parse_layer_map, with_overrides

__all__ = [
    "general_off",
    "with_overrides",
    "CacheSettings",
    "CACHE_MODES",
    "EVAL_DEFAULTS",
    "EXPERIMENT_KINDS",
    "FINETUNE_METHODS",
    "PRECISIONS",
    "SHARDED_STATE_DICT_REFUSED",
    "DistillSettings",
    "EvalSettings",
    "ExperimentSettings",
    "ExportSettings",
    "FetchSettings",
    "FinetuneSettings",
    "PipelineSettings",
    "PruneSettings",
    "QuantizeSettings",
    "ReportSettings",
    "Settings",
    "StudentSettings",
    "TrainingRun",
    "TrainingSettings",
    "as_layer_list",
    "check_positive_int",
    "comma_list",
    "load_recipe",
    "option",
    "parse_duration",
    "parse_layer_map",
]
