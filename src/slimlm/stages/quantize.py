"""Stage `quantize`: min-max quantization with packed storage and one before/after table."""

from __future__ import annotations

import copy
from pathlib import Path

from slimlm.data.corpus import prepare_data
from slimlm.methods import quantization
from slimlm.output import claimed
from slimlm.settings import QuantizeSettings
from slimlm.sources import load_model, model_config
from slimlm.stages.before_after import measure, publish_before_after


def quantize(model: str, *, out: str, force: bool = False, **settings) -> Path:
    """Quantize `model` with the paper's min-max rule, store packed codes, show a before/after table.

    `settings` are QuantizeSettings' fields (slimlm.settings: data, bits, granularity, group_size,
    symmetric, runtime, block_size, eval_tokens, repeats), with their defaults there."""
    s = QuantizeSettings.from_dict({**settings, "model": model, "out": out, "force": force}).validate()
    model_config(s.model, trust_remote_code=s.trust_remote_code)  # a broken model folder is refused before the output
    out = Path(s.out)
    with claimed(out, force=s.force) as stage:
        source, tokenizer, source_dir = load_model(s.model, trust_remote_code=s.trust_remote_code)
        for weight in quantization.quantizable(source).values():  # a group size must divide every width
            quantization.check_args(s.bits, s.granularity, s.group_size, weight.shape[-1])
        splits = prepare_data(s.data, tokenizer, s.block_size)
        before = measure(source, tokenizer, splits, source_dir, s.eval_tokens, s.block_size, s.repeats)
        result = stage / "result"
        result.mkdir(exist_ok=True)
        recorded = quantization.save_quantized(
            copy.deepcopy(source), tokenizer, result, s.bits, s.granularity, s.group_size, s.symmetric, s.runtime
        )
        restored = quantization.load_quantized(result)
        after = measure(restored, tokenizer, splits, result, s.eval_tokens, s.block_size, s.repeats)
        return publish_before_after(
            stage,
            out,
            None,
            None,
            "quantize",
            s.model,
            source_dir,
            splits,
            recorded,
            {},
            before,
            after,
            s.eval_tokens,
            s.block_size,
        )
