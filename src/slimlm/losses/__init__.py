"""The loss terms of distillation (paper section 2): the KD formula and its fused kernel, the feature and
attention terms. The names below are shared with the settings and the data code, so they live here,
without importing torch."""

IGNORE_INDEX = -100  # label of a position that no loss term scores (Hugging Face's convention)
KL_KINDS = ("forward", "reverse", "jsd")  # divergences of the KD term (paper section 2)
