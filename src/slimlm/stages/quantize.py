"""Stage `quantize`: min-max quantization with packed storage and one before/after table.
"""

from __future__ import annotations

import copy
from pathlib import Path

from slimlm.data.corpus import prepare_data
from slimlm.errors import SlimlmError
from slimlm.output import claimed
from slimlm.sources import load_model, model_config
from slimlm.stages.before_after import check_counts, measure, publish_before_after


def check_quantize_args(*, bits=8, granularity="channel", group_size=None, symmetric=False, runtime="dequantized",
                        block_size=256, eval_tokens=8192, repeats=3, **_) -> None:
    """Every `quantize` setting checked before any work (the weights' shapes are checked once loaded)."""
    from slimlm.methods import quantization

    quantization.check_args(bits, granularity, group_size)
    check_counts(eval_tokens=eval_tokens, repeats=repeats)
    if not isinstance(symmetric, bool):
        raise SlimlmError(f"--symmetric must be true or false (got {symmetric!r})")
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 2:
        raise SlimlmError(f"--block-size must be an integer >= 2 (got {block_size!r})")
    if not isinstance(runtime, str) or runtime not in quantization.RUNTIMES:
        raise SlimlmError(f"--runtime {runtime!r} is not known; use one of {', '.join(quantization.RUNTIMES)}")


def quantize(model: str, *, out: str, data: str = "sotu", bits: int = 8, granularity: str = "channel",
             group_size: int | None = None, symmetric: bool = False, runtime: str = "dequantized",
             block_size: int = 256,
             eval_tokens: int = 8192, repeats: int = 3, force: bool = False,
             trust_remote_code: bool = False) -> Path:
    """Quantize `model` with the paper's min-max rule, store packed codes, show a before/after table."""
    from slimlm.methods import quantization

    check_quantize_args(bits=bits, granularity=granularity, group_size=group_size, symmetric=symmetric,
                        runtime=runtime, block_size=block_size, eval_tokens=eval_tokens, repeats=repeats)
    model_config(model, trust_remote_code=trust_remote_code)  # a broken model folder is refused before the output
    out = Path(out)
    with claimed(out, force=force) as stage:
        source, tokenizer, source_dir = load_model(model, trust_remote_code=trust_remote_code)
        for name, weight in quantization.quantizable(source).items():
            quantization.check_args(bits, granularity, group_size, weight.shape[-1])
        splits = prepare_data(data, tokenizer, block_size)
        before = measure(source, tokenizer, splits, source_dir, eval_tokens, block_size, repeats)
        result = stage / "result"
        result.mkdir(exist_ok=True)
        settings = quantization.save_quantized(copy.deepcopy(source), tokenizer, result, bits, granularity,
                                               group_size, symmetric, runtime)
        restored = quantization.load_quantized(result)
        after = measure(restored, tokenizer, splits, result, eval_tokens, block_size, repeats)
        return publish_before_after(stage, out, None, None, "quantize", model, source_dir, splits, settings, {},
                        before, after, eval_tokens, block_size)
