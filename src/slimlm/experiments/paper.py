"""The paper's reported numbers, as data, so `slimlm report` can draw them beside ours.

Source: Kai, Zhu & Gong, "Efficient Compression of Large Language Models with Distillation and
Fine-Tuning", section 3.2 "Experimental Results" (method: section 2). The paper's
"model accuracy" is never defined (no task is named); it trains on OpenWebText with what its Figure 2
suggests is a ~12-layer model. slimlm measures next-token accuracy (and cloze exact match where asked)
on its own corpus, so only shapes and rankings can be compared, never levels.

Accuracy is in percent as printed; perplexity as printed; speed in tokens/s as printed. Where the
paper gives only a qualitative statement, the value is None and the statement is kept as text.
"""

ACCURACY_CAVEAT = (
    "The paper's 'model accuracy' is an undefined task accuracy on OpenWebText with a ~12-layer model "
    "(hardware, speed protocol and evaluation set are not stated); slimlm's accuracy is next-token top-1 "
    "accuracy (and cloze exact match where present) on the corpus and split stated above. "
    "Levels are therefore not comparable: compare shapes and rankings only."
)

# Section 3.2, Table 1: "Comparative experiment of knowledge distillation effect under different temperature
# parameters". Exact numbers from the table.
TABLE1 = {
    "source": "the paper, section 3.2, Table 1 (exact numbers from the table)",
    "approximate": False,
    "points": [
        {"temperature": 0.5, "accuracy_pct": 82.3, "perplexity": 18.5, "decode_tokens_per_s": 45.0},
        {"temperature": 1.0, "accuracy_pct": 85.7, "perplexity": 15.8, "decode_tokens_per_s": 42.0},
        {"temperature": 2.0, "accuracy_pct": 87.1, "perplexity": 14.2, "decode_tokens_per_s": 39.0},
        {"temperature": 5.0, "accuracy_pct": 83.9, "perplexity": 17.6, "decode_tokens_per_s": 41.0},
        {"temperature": 10.0, "accuracy_pct": 78.5, "perplexity": 22.9, "decode_tokens_per_s": 47.0},
    ],
    "claims": {
        "best": "a moderate temperature (T = 2.0) achieves the best balance between accuracy and perplexity",
        "speed": "temperature variations have minimal impact on speed, fluctuating between 39 and 47 tokens/s",
    },
}

# Section 3.2, text describing Figure 2 ("Impact of Different Feature Distillation Layers on Student Model
# Performance"). The figure's data are not printed: every value is approximate, read from the paper's text.
# The paper distils from layers 1, 6 and 12 of (we infer) a 12-layer teacher.
FIGURE2 = {
    "source": "the paper, section 3.2, text on Figure 2 (approximate, read from the paper's text; no table given)",
    "approximate": True,
    "teacher_layers": 12,
    "points": [
        {"layer": 1, "accuracy_pct": None, "perplexity": 22.0, "decode_tokens_per_s": None},
        {"layer": 6, "accuracy_pct": 87.0, "perplexity": 15.0, "decode_tokens_per_s": 45.0},
        {"layer": 12, "accuracy_pct": None, "perplexity": 22.0, "decode_tokens_per_s": None},
    ],
    # What the text says without a number.
    "accuracy_note": "accuracy at layers 1 and 12 is 'lower' than layer 6's ~87% (no number given)",
    "accuracy_pct_shape": "peak",  # highest at the middle layer, lower at both ends
    "decode_tokens_per_s_range": [45.0, 50.0],  # "fluctuating between 45 and 50 tokens per second"
    "claims": {
        "best": "mid-layer (layer 6) feature distillation gives the highest accuracy and the lowest perplexity",
        "speed": "speed is stable across layers (45-50 tokens/s); layer 6 is the slowest (~45 tokens/s)",
    },
}

# Section 3.2, text describing Figure 3 ("Comparison of LoRA and Full Fine-tuning on Model Performance").
# Numbers as printed in the text.
FIGURE3 = {
    "source": "the paper, section 3.2, text on Figure 3 (numbers as printed in the text)",
    "approximate": False,
    "points": [
        {"method": "full", "accuracy_pct": 88.5, "perplexity": 14.1, "decode_tokens_per_s": 37.0},
        {"method": "lora", "accuracy_pct": 85.2, "perplexity": 16.3, "decode_tokens_per_s": 52.0},
    ],
    "claims": {
        "quality": "full fine-tuning has higher accuracy and lower perplexity",
        "speed": "LoRA is faster at inference and cheaper to train (no training-cost numbers given)",
    },
}

# The paper proposes pruning and quantization after distillation and fine-tuning (section 2) but reports
# no numbers for them or for the combined pipeline.
PIPELINE = {
    "source": "the paper, section 2 (method only)",
    "points": [],
    "note": "The paper reports no numbers for pruning, quantization or the combined pipeline; "
    "only slimlm's measurements are shown.",
}

BY_KIND = {"temperature": TABLE1, "feature-layer": FIGURE2, "finetune": FIGURE3, "pipeline": PIPELINE}

# Studies slimlm runs that the paper does not: their reports say so, and compare nothing with the paper.
NO_COUNTERPART = {
    "data-mix": "The paper distils on general web text (OpenWebText) only and reports no comparison of training "
    "texts, so nothing in this report is compared with it.",
    "student-shape": "The paper has no study of the student's shape: it reports no comparison of cutting the "
    "teacher in depth or in width at a parameter budget, nor of quantizing the teacher instead, so nothing in this "
    "report is compared with it. The closest published comparison is Minitron's (arXiv 2408.11796, section 4: "
    "width kept more quality than depth at the same size, depth decoded faster); it is not a reference for our "
    "numbers either.",
}
