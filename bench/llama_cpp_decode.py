"""Decode speed of slimlm's GGUF exports under llama.cpp (llama-cpp-python), when it is installed.

llama.cpp is what many users deploy on CPUs, so this is the number to compare against HF `generate`.
Install it beside slimlm (it builds from source): `pip install llama-cpp-python`. Run:
    python bench/llama_cpp_decode.py FILE.gguf [FILE.gguf ...]
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    from llama_cpp import Llama

    prompt = "The state of the Union is"
    print(f"{'file':40s} {'decode tok/s':>12s}  first words (greedy)")
    for path in args.files:
        llm = Llama(model_path=path, n_threads=args.threads, n_ctx=512, verbose=False)
        llm(prompt, max_tokens=8, temperature=0.0)  # warm-up
        rates, text = [], ""
        for _ in range(args.repeats):
            start = time.perf_counter()
            out = llm(prompt, max_tokens=args.new_tokens, temperature=0.0)
            rates.append(out["usage"]["completion_tokens"] / (time.perf_counter() - start))
            text = out["choices"][0]["text"]
        print(f"{path:40s} {statistics.median(rates):12.1f}  {text[:60]!r}")


if __name__ == "__main__":
    main()
