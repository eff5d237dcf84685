"""What the Trainer trains: the student, or, when a loss term has parameters of its own (the feature term's
projections for a student narrower than its teacher), one module that holds the student and the terms.

Holding them in one nn.Module is what puts the terms' parameters in the Trainer's optimizer, has DDP/FSDP
synchronise their gradients and saves them in every checkpoint, from which --resume restores them; nothing
is attached to the student, and the published model is the plain student. A student whose terms have no
parameters is trained as itself, so LoRA, FSDP and DeepSpeed see the model they always did.
"""

from __future__ import annotations

from torch import nn

TERMS_FILE = "loss_terms.safetensors"  # a checkpoint's loss-term parameters, next to model.safetensors
_STUDENT, _TERMS = "student.", "terms."


class StudentWithTerms(nn.Module):
    """The student and the loss terms as one module; its forward is the student's."""

    accepts_loss_kwargs = True  # as the student: the loss is normalised by the step's token count already
    _keys_to_ignore_on_save = None  # as a plain model's: the Trainer reads it after loading a checkpoint

    def __init__(self, student: nn.Module, terms):
        super().__init__()
        self.student = student
        self.terms = nn.ModuleList(terms)

    def forward(self, **inputs):
        return self.student(**inputs)

    @property
    def config(self):  # the Trainer sets use_cache on it; DeepSpeed's "auto" sizes read hidden_size
        return self.student.config

    @property
    def _no_split_modules(self):  # FSDP's auto-wrap policy wraps the student's decoder layers
        return getattr(self.student, "_no_split_modules", None)


def trainable(student: nn.Module, terms) -> nn.Module:
    """The module the Trainer trains for this student and these loss terms."""
    if any(p.requires_grad for term in terms for p in term.parameters()):
        return StudentWithTerms(student, terms)
    return student


def student_of(model: nn.Module) -> nn.Module:
    """The student inside what the Trainer trains (unwrapped from DDP/FSDP by the caller)."""
    return model.student if isinstance(model, StudentWithTerms) else model


def split_state(state: dict) -> tuple[dict, dict]:
    """A StudentWithTerms state dict -> (the student's, the terms'), each with its own key names."""
    student = {k[len(_STUDENT) :]: v for k, v in state.items() if k.startswith(_STUDENT)}
    terms = {k[len(_TERMS) :]: v for k, v in state.items() if k.startswith(_TERMS)}
    return student, terms
