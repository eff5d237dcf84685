"""The sections of a command's --help, in the order a user reads them: what goes in and where the result goes,
then what the command does, how long it trains, what it measures, and the knobs most runs leave alone.

A settings field names its section with `option(..., group=...)`; settings/flags.py lays a command's flags
out in ORDER, skipping the sections it has no flag in, so a command's help is a short menu, not one long list.
"""

INPUTS = "inputs and output"
STUDENT = "student"  # how a student is cut from the teacher
PRUNING = "pruning"
QUANTIZATION = "quantization"
FINETUNING = "fine-tuning"
FORMAT = "format"
STUDY = "study"  # what an experiment sweeps
TEACHER = "teacher signal"  # the KD loss: temperature, divergence, feature and attention terms
TRAINING = "training"  # budget, batch, learning rate
CACHE = "teacher cache"
GENERATED = "on-policy and teacher-written text"
EVALUATION = "evaluation"
ADVANCED = "advanced"

ORDER = (
    INPUTS,
    STUDENT,
    PRUNING,
    QUANTIZATION,
    FINETUNING,
    FORMAT,
    STUDY,
    TEACHER,
    TRAINING,
    CACHE,
    GENERATED,
    EVALUATION,
    ADVANCED,
)
