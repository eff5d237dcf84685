"""The loss terms of distillation (paper section 2), one module each: the KD divergences (divergences.py) and
the fused linear KD kernel that calls them (kd.py), the feature term (feature.py), the attention term
(attention.py), and how every term is reduced over tokens (reduce.py). Loss code raises plain ValueError and
TypeError; the settings layer checks user input first. The names below are shared with the settings and the
data code, so they live here, without importing torch."""

IGNORE_INDEX = -100  # label of a position that no loss term scores (Hugging Face's convention)
KL_KINDS = ("forward", "reverse", "jsd")  # divergences of the KD term (paper section 2)
POLICY_DIVERGENCES = (*KL_KINDS, "sampled-reverse")  # on student-sampled tokens: those, or the sampled estimate
