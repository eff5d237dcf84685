"""Measure a GGUF file under llama.cpp with the protocol `slimlm eval` uses under transformers.

Quantizing the teacher with llama.cpp (q8_0, q4_0) is the first thing a user can do to ship a smaller model,
so a student has to beat it on the same ruler: the same token ids (the test split, tokenized by the model's
own tokenizer), the same sliding windows (each token scored once, metrics.windows), the same greedy batch-1
decode from the same 32-token prompt. llama.cpp runs the file's own tensor types, on `threads` CPU threads;
llama-cpp-python is optional (`pip install llama-cpp-python`, compiled on install), so it is imported here only.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from slimlm.distributed import log
from slimlm.errors import SlimlmError
from slimlm.eval.metrics import perplexity_result, windows

PREFILL_TOKENS = 256
INSTALL_HINT = "pip install llama-cpp-python (it compiles llama.cpp, a few minutes)"


def available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def check_runtime(specs: list[str]) -> None:
    """Before anything loads: llama-cpp-python is installed and every model is a .gguf file."""
    if not available():
        raise SlimlmError(f"--runtime llama.cpp needs llama-cpp-python: {INSTALL_HINT}")
    for spec in specs:
        path = Path(spec)
        if path.suffix.lower() != ".gguf" or not path.is_file():
            raise SlimlmError(
                f"--runtime llama.cpp measures .gguf files; {spec} is not one (write one with "
                "`slimlm export MODEL --type q8_0 --out model.gguf`)"
            )


def load_gguf(path: Path, context: int, threads: int, repack: bool = True):
    """`repack=False` turns off llama.cpp's extra weight buffers (the AMX and CPU_REPACK layouts): the AMX
    matmul segfaults on some Sapphire Rapids machines (ggml-org/llama.cpp#20824, seen here on q8_0). Llama()
    has no argument for it, so its default model parameters are wrapped, in this child process only."""
    import llama_cpp.llama_cpp as low
    from llama_cpp import Llama

    if not repack:
        defaults = low.llama_model_default_params

        def without_extra_buffers():
            params = defaults()
            if "use_extra_bufts" not in dict(type(params)._fields_):  # an older llama-cpp-python: no such switch
                raise SlimlmError(f"this llama-cpp-python cannot turn off weight repacking: {INSTALL_HINT} (newer)")
            params.use_extra_bufts = False
            return params

        low.llama_model_default_params = without_extra_buffers
    try:
        return Llama(
            model_path=str(path),
            n_ctx=context,
            n_batch=context,
            n_threads=threads,
            n_threads_batch=threads,
            logits_all=True,
            verbose=False,
        )
    except (ValueError, RuntimeError) as exc:
        raise SlimlmError(f"llama.cpp cannot load {path} ({exc}); is it a complete GGUF file?") from None


def measure_gguf(
    path: str | Path,
    ids: torch.Tensor,
    *,
    window: int = 256,
    stride: int = 256,
    text_bytes: int | None = None,
    new_tokens: int = 64,
    repeats: int = 3,
    progress: bool = True,
) -> dict:
    """Perplexity, next-token accuracy, bits/byte, decode and prefill tokens/s, parameters and file size of
    one GGUF file under llama.cpp (the keys of metrics.evaluate_model, plus `runtime`).

    llama.cpp runs in a child process: native code that crashes (seen here: llama-cpp-python 0.3.36 segfaults
    on batched q8_0 matmuls on an AMX CPU) becomes a one-line error instead of killing a long study."""
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool
    from multiprocessing import get_context

    args = (str(path), torch.as_tensor(ids).reshape(-1).tolist(), window, stride, text_bytes, new_tokens, repeats)
    for repack in (True, False):  # a crash with repacked weights is retried once without them (load_gguf)
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
            try:
                result = pool.submit(_measure, *args, progress, torch.get_num_threads(), repack).result()
                return {**result, "weight_repacking": "on" if repack else "off: the process crashed with it"}
            except BrokenProcessPool:
                if repack:
                    log(f"llama.cpp crashed on {path} with repacked weights; measuring it again without them")
    raise SlimlmError(
        f"llama.cpp crashed measuring {path} (its process died), with and without weight repacking; try another "
        "GGUF type (f16), or rebuild llama-cpp-python (CMAKE_ARGS=-DGGML_NATIVE=OFF pip install --force-reinstall "
        "llama-cpp-python)"
    )


def _measure(path, ids, window, stride, text_bytes, new_tokens, repeats, progress, threads, repack=True) -> dict:
    """measure_gguf's work, in the child process."""
    path = Path(path)
    torch.set_num_threads(threads)
    llm = load_gguf(path, max(window, PREFILL_TOKENS, 32 + new_tokens), threads, repack)
    nll, correct, scored = 0.0, 0, 0
    for begin, end, k in tqdm(windows(len(ids), window, stride), desc="perplexity (llama.cpp)", disable=not progress):
        llm.reset()
        llm.eval(ids[begin:end])
        logits = np.asarray(llm.scores[end - begin - 1 - k : end - begin - 1], dtype=np.float64)
        targets = np.asarray(ids[end - k : end])
        log_z = logits.max(1) + np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1))
        nll += float((log_z - logits[np.arange(k), targets]).sum())
        correct += int((logits.argmax(1) == targets).sum())
        scored += k
    prompt = ids[:32]  # as metrics.decode_speed: the same prompt, tiled to 256 tokens for prefill
    tiled = (prompt * -(-PREFILL_TOKENS // len(prompt)))[:PREFILL_TOKENS]
    decode, prefill = [], []
    for _ in range(repeats + 1):  # the first is a warm-up
        llm.reset()
        start = time.perf_counter()
        llm.eval(tiled)
        prefill.append(len(tiled) / (time.perf_counter() - start))
        llm.reset()
        llm.eval(prompt)
        llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])  # the first new token comes from the prefill
        start = time.perf_counter()
        for _ in range(new_tokens - 1):
            llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
        decode.append((new_tokens - 1) / (time.perf_counter() - start))
    import llama_cpp

    parameters = int(llama_cpp.llama_model_n_params(llm.model))
    return {
        "runtime": "llama.cpp",
        "dtype": "gguf",
        "device": "cpu",
        "parameters": parameters,
        "size_on_disk_mb": os.path.getsize(path) / 1e6,
        **perplexity_result(nll, correct, scored, text_bytes, window, stride),
        "decode_tokens_per_s": statistics.median(decode[1:]),
        "prefill_tokens_per_s": statistics.median(prefill[1:]),
        "decode_new_tokens": new_tokens,
        "prefill_tokens": PREFILL_TOKENS,
        "repeats": repeats,
        "threads": threads,
    }
