"""The metrics that say what compression bought: quality (perplexity, bits/byte, next-token
accuracy), speed (decode and prefill tokens/s), memory, parameters and size on disk.

Honesty rules, since these numbers are compared across models: eval mode and
`torch.inference_mode`, warm-up runs, the median of repeats, the same prompt and the same
scoring protocol for every model, and the protocol written next to every table. Speed is
batch-1 HF `generate` with the KV cache: on CPU that is bandwidth-bound, so it shows what fewer
weight bytes buy; on a GPU it is launch-bound and understates any gain (bench/README.md sets
decode speed beside its bandwidth roofline). The printed table of these numbers is table.py.
"""

from __future__ import annotations

import inspect
import math
import statistics
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from slimlm.errors import SlimlmError

MIB = 2**20


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def keeps_logits(model) -> bool:
    """Whether forward() can skip the lm_head for positions we do not score (saves vocab-sized logits)."""
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def max_positions(model) -> int | None:
    """The model's position limit, when its config states one (prompts are cut to fit it)."""
    return getattr(getattr(model, "config", None), "max_position_embeddings", None)


def windows(n: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, scored) per window, HF's loop: score only tokens not scored by an earlier window.
    A window's first token has no context inside it, so it is never scored there."""
    out, prev_end = [], 0
    for begin in range(0, n, stride):
        end = min(begin + window, n)
        scored = min(end - max(prev_end, 1), end - begin - 1)
        if scored > 0:
            out.append((begin, end, scored))
        prev_end = end
        if end == n:
            break
    return out


def perplexity(
    model, ids: torch.LongTensor, *, window=256, stride=256, batch_size=8, text_bytes=None, progress=True
) -> dict:
    """Sliding-window perplexity on a 1-D token stream (HF's standard protocol): windows of `window` tokens
    every `stride` tokens; each token is scored once, with up to window-stride tokens of context re-fed but
    not scored (stride == window: plain non-overlapping blocks, each block's first token unscored).
    Returns perplexity, nll (mean nats/token), tokens_scored, accuracy (next-token top-1 = the paper's
    'model accuracy'), bits_per_byte (total bits / text_bytes, the UTF-8 bytes the scored tokens cover;
    None without text_bytes), window, stride. Only one batch's logits are ever alive."""
    ids = torch.as_tensor(ids)
    if ids.dim() > 1 and ids.shape[0] != 1 or ids.dim() > 2:
        raise SlimlmError(f"ids has shape {tuple(ids.shape)}: pass one 1-D token stream (concatenate documents first)")
    ids = ids.reshape(-1)
    if window < 2:
        raise SlimlmError(f"window={window} is too small: use a window of at least 2 tokens")
    if not 1 <= stride <= window:
        raise SlimlmError(f"stride={stride} must be between 1 and window={window}: pick a stride in that range")
    if ids.numel() < 2:
        raise SlimlmError(f"the token stream has {ids.numel()} token(s): give at least 2 tokens to score")
    if batch_size < 1:
        raise SlimlmError(f"batch_size={batch_size}: use a batch size of at least 1")
    model.eval()
    device, keep = model_device(model), keeps_logits(model)
    wins = windows(ids.numel(), window, stride)
    batches, cur = [], []  # consecutive windows of equal length share a batch (only the last can be shorter)
    for w in wins:
        if cur and (len(cur) == batch_size or w[1] - w[0] != cur[0][1] - cur[0][0]):
            batches.append(cur)
            cur = []
        cur.append(w)
    batches.append(cur)
    nll, correct, scored = 0.0, 0, 0
    with torch.inference_mode():
        for batch in tqdm(batches, desc="perplexity", disable=not progress, leave=False):
            x = torch.stack([ids[b:e] for b, e, _ in batch]).to(device)
            k = max(s for _, _, s in batch)  # predictions for the last k targets sit at positions L-1-k .. L-2
            kwargs = {"logits_to_keep": k + 1} if keep else {}
            logits = model(input_ids=x, use_cache=False, **kwargs).logits[:, -(k + 1) : -1].float()
            targets = x[:, -k:]
            mask = torch.stack([torch.arange(k, device=device) >= k - s for _, _, s in batch])
            ce = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
            nll += ce[mask].double().sum().item()
            correct += (logits.argmax(-1) == targets)[mask].sum().item()
            scored += int(mask.sum())
            del logits, ce
    return perplexity_result(nll, correct, scored, text_bytes, window, stride)


def perplexity_result(nll: float, correct: int, scored: int, text_bytes, window: int, stride: int) -> dict:
    """The perplexity metrics from summed NLL (nats), correct top-1 predictions and tokens scored; one place,
    so every runtime (transformers here, llama.cpp in llama_cpp.py) reports the same keys the same way."""
    mean = nll / scored
    return {
        "perplexity": math.exp(mean),
        "nll": mean,
        "tokens_scored": scored,
        "accuracy": correct / scored,
        "bits_per_byte": nll / math.log(2) / text_bytes if text_bytes else None,
        "window": window,
        "stride": stride,
    }


def _timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t


def decode_speed(
    model, *, prompt_ids=None, vocab_size=None, new_tokens=64, repeats=3, warmup=1, prefill_tokens=256
) -> dict:
    """Batch-1 greedy decoding with the KV cache, median tokens/s over `repeats` runs after `warmup` runs.
    Prefill is excluded: decode rate = (new_tokens-1) / (median time of an n-token generate - median time of
    a 1-token generate), since the first new token comes from the prefill. min_new_tokens = max_new_tokens,
    so eos never cuts a run short. When the two medians are too close to tell apart (a busy machine, a few
    new tokens), the rate is new_tokens / (n-token time), prefill included, and `decode_note` says so.
    Prefill tokens/s: one forward over `prefill_tokens` tokens (the prompt tiled). Pass the same `prompt_ids`
    for every model; without it a seeded random prompt of 32 tokens."""
    if new_tokens < 2 or repeats < 1 or warmup < 0 or prefill_tokens < 1:
        raise SlimlmError(
            "decode_speed needs new_tokens >= 2, repeats >= 1, warmup >= 0, prefill_tokens >= 1: fix the argument"
        )
    model.eval()
    device = model_device(model)
    if prompt_ids is None:
        vocab_size = vocab_size or model.config.vocab_size
        prompt_ids = torch.randint(vocab_size, (32,), generator=torch.Generator().manual_seed(0))
    prompt = torch.as_tensor(prompt_ids).reshape(1, -1).to(device)
    if prompt.numel() < 1:
        raise SlimlmError("prompt_ids is empty: give at least one prompt token")
    prefill = prompt.repeat(1, -(-prefill_tokens // prompt.shape[1]))[:, :prefill_tokens]
    pad = getattr(model.config, "pad_token_id", None)
    pad = pad if pad is not None else 0
    made = {}

    def generate(n):
        out = model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            use_cache=True,
            pad_token_id=pad,
            temperature=None,
            top_p=None,
            top_k=None,
        )
        made[n] = out.shape[1] - prompt.shape[1]

    fwd_kwargs = {"logits_to_keep": 1} if keeps_logits(model) else {}
    times = {"one": [], "all": [], "prefill": []}
    with torch.inference_mode():
        for i in range(warmup + repeats):
            t_one = _timed(lambda: generate(1), device)
            t_all = _timed(lambda: generate(new_tokens), device)
            t_pre = _timed(lambda: model(input_ids=prefill, use_cache=True, **fwd_kwargs), device)
            if i >= warmup:
                for key, t in zip(times, (t_one, t_all, t_pre)):
                    times[key].append(t)
    if made[new_tokens] != new_tokens:
        raise SlimlmError(
            f"generate made {made[new_tokens]} tokens, not {new_tokens}: check the model's generation_config"
        )
    t_all = statistics.median(times["all"])
    decode_s = t_all - statistics.median(times["one"])
    separable = decode_s > 0.05 * t_all  # else noise (a busy machine, few new tokens) swamps the difference
    extra = {} if separable else {"decode_note": "prefill not separable from decoding; rate includes the prefill"}
    return {
        "decode_tokens_per_s": (new_tokens - 1) / decode_s if separable else new_tokens / t_all,
        **extra,
        "prefill_tokens_per_s": prefill_tokens / statistics.median(times["prefill"]),
        "decode_new_tokens": made[new_tokens],
        "prefill_tokens": prefill_tokens,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
    }


def weights_bytes(model) -> int:
    """Bytes of unique parameters and buffers (tied weights and shared storage counted once)."""
    seen = {}
    for t in list(model.parameters()) + list(model.buffers()):
        seen[(t.data_ptr(), t.numel(), t.dtype)] = t.numel() * t.element_size()
    return sum(seen.values())


def peak_memory(model, run=None, *, interval_s=0.002) -> dict:
    """Peak memory while `run()` (default: one short decode_speed pass, prefill included) does inference.
    CUDA: torch.cuda.max_memory_allocated. CPU has no allocator counter, so a background thread samples the
    process RSS every `interval_s`: that counts the whole process (Python, torch, any other loaded model), so
    the rise over the RSS before the run is reported too. Kept apart from the speed runs so the sampler
    cannot slow them."""
    run = run or (lambda: decode_speed(model, new_tokens=8, repeats=1, warmup=0))
    device = model_device(model)
    out = {"weights_mib": weights_bytes(model) / MIB}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        run()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        method = "cuda: torch.cuda.max_memory_allocated during the run (tensors only, not the CUDA context)"
    else:
        import psutil

        proc, stop = psutil.Process(), threading.Event()
        before = peak = proc.memory_info().rss

        def sample():
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, proc.memory_info().rss)
                stop.wait(interval_s)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            run()
        finally:
            stop.set()
            thread.join()
        peak = max(peak, proc.memory_info().rss)
        method = f"cpu: peak process RSS sampled every {interval_s * 1e3:g} ms during the run (whole process)"
    out.update(peak_memory_mib=peak / MIB, peak_memory_over_baseline_mib=(peak - before) / MIB, memory_method=method)
    # What this model needs to run, comparable across models evaluated in one process: its weights plus
    # what decoding added on top of them (activations, KV cache, temporaries).
    out["inference_memory_mib"] = out["weights_mib"] + max(0.0, out["peak_memory_over_baseline_mib"])
    return out


def _int8_kernel_parameters(model) -> int:
    """Weights held inside torch's dynamic int8 Linear modules, which .parameters() does not list.

    A tied LM head quantized this way is an int8 copy of the embedding, not a new parameter: not counted.
    """
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

    tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
    return sum(
        m.weight().numel() + (m.bias().numel() if m.bias() is not None else 0)
        for name, m in model.named_modules()
        if isinstance(m, DynamicInt8Linear) and not (tied and name.endswith("lm_head"))
    )


def model_size(model_dir_or_model, model_dir=None) -> dict:
    """Unique parameter count (tied weights once) and the *.safetensors bytes on disk in MB (10^6 bytes).
    Given a directory alone, parameters are counted from the safetensors headers (HF stores tied weights once)."""
    if isinstance(model_dir_or_model, torch.nn.Module):
        params = {p.data_ptr(): p.numel() for p in model_dir_or_model.parameters()}
        count = sum(params.values()) + _int8_kernel_parameters(model_dir_or_model)
    else:
        model_dir, count = model_dir_or_model, None
    if model_dir is None:
        return {"parameters": count, "size_on_disk_mb": None}
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise SlimlmError(
            f"no *.safetensors files in {model_dir}: point at a model directory saved with save_pretrained"
        )
    if count is None:
        from safetensors import safe_open

        count = 0
        for f in files:
            with safe_open(f, "pt") as st:
                count += sum(math.prod(st.get_slice(k).get_shape()) for k in st.keys())
    return {"parameters": count, "size_on_disk_mb": sum(f.stat().st_size for f in files) / 1e6}


def evaluate_model(
    model,
    tokenizer,
    test_ids,
    *,
    model_dir=None,
    text_bytes=None,
    window=256,
    stride=256,
    new_tokens=64,
    repeats=3,
    progress=True,
) -> dict:
    """All metrics for one model in one flat, JSON-serialisable dict (model put in eval mode). The speed
    prompt is the start of `test_ids`, so every model evaluated on the same text decodes the same prompt.
    Without text_bytes, the tokenizer (when given) decodes ids[1:] to count their UTF-8 bytes: exact when
    stride < window (every token but the first is scored); with stride == window each block's unscored first
    token is still counted, so bits/byte reads low by about 1/window."""
    model.eval()
    test_ids = torch.as_tensor(test_ids).reshape(-1)
    if text_bytes is None and tokenizer is not None:
        text_bytes = len(tokenizer.decode(test_ids[1:].tolist()).encode("utf-8"))
    result = {"dtype": str(next(model.parameters()).dtype).removeprefix("torch."), "device": str(model_device(model))}
    result.update(model_size(model, model_dir))
    result.update(perplexity(model, test_ids, window=window, stride=stride, text_bytes=text_bytes, progress=progress))
    prompt = test_ids[:32]
    result.update(decode_speed(model, prompt_ids=prompt, new_tokens=new_tokens, repeats=repeats))
    result.update(
        peak_memory(model, lambda: decode_speed(model, prompt_ids=prompt, new_tokens=new_tokens, repeats=1, warmup=0))
    )
    return result
