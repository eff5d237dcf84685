"""Write a Llama-architecture model directory as one GGUF file, for llama.cpp and friends.

We follow llama.cpp's `convert_hf_to_gguf.py` (LlamaModel) so llama.cpp runs the file: `llama.*`
metadata, llama.cpp tensor names, q/k rows permuted into llama.cpp's rope layout, and the byte-level
BPE vocabulary as `tokenizer.ggml.*`. transformers reads the same file back (it undoes the permute),
which is how the tests check it.

Over 350 lines because it mirrors llama.cpp's converter (metadata, vocabulary, tensors, types) in one
place, so the two can be read side by side when llama.cpp changes its format.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from slimlm.config_file import read_config_json
from slimlm.disk import write_problem
from slimlm.distributed import log
from slimlm.errors import SlimlmError

TYPES = ("f16", "q8_0", "q4_0")


def export_gguf(model_dir, out_file, type: str = "f16", *, force: bool = False) -> Path:
    """Write `model_dir` as GGUF `type` to `out_file`, via a temporary file renamed at the end."""
    import gguf

    model_dir, out_file = Path(model_dir), Path(out_file)
    if type not in TYPES:
        raise SlimlmError(f"unsupported GGUF type '{type}'; use one of {', '.join(TYPES)}")
    if out_file.is_dir():
        raise SlimlmError(f"--out {out_file} is a folder; give a file name such as {out_file / 'model.gguf'}")
    if out_file.exists() and not force:
        raise SlimlmError(f"output {out_file} already exists; pass --force to replace it or choose another --out")
    config = _read_config(model_dir)
    shape = _weight_shapes(model_dir)
    _check_against_weights(config, shape, model_dir)
    tmp = out_file.with_name(out_file.name + ".partial")
    _probe_writable(out_file, tmp)

    writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    try:
        _add_metadata(writer, config, model_dir, type)
        _add_tokenizer(writer, model_dir, config, shape["vocab_rows"])
        _add_tensors(writer, model_dir, config, type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out_file)
    except BaseException as exc:
        try:
            writer.close()  # may fail again on a full disk; the partial file goes either way
        except Exception:
            pass
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _write_error(exc, out_file) from None
        raise
    return out_file


def _probe_writable(out_file: Path, tmp: Path) -> None:
    """Create the output folder and the temporary file now, so a read-only --out fails before the work.

    os.access is not enough: root passes it on a read-only mount, so really write."""
    try:
        out_file.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb"):
            pass
        tmp.unlink()
    except OSError as exc:
        raise SlimlmError(f"cannot write --out {out_file} ({exc.strerror or exc}); choose a writable folder") from None


def _write_error(exc: OSError, out_file: Path) -> SlimlmError:
    """One line for a failed write (disk.write_problem: a full disk names the disk and its free space)."""

    return SlimlmError(write_problem(out_file, exc, fix="choose --out on another disk") + "; nothing was written")


def _read_config(model_dir: Path) -> dict:
    """config.json, checked for the one architecture this exporter knows how to lay out."""
    path = model_dir / "config.json"
    if not path.exists():
        raise SlimlmError(f"{model_dir} has no config.json; pass a Hugging Face model directory")
    config = read_config_json(model_dir)
    if config.get("model_type") != "llama":
        raise SlimlmError(
            f"GGUF export supports only Llama-architecture models, not "
            f"'{config.get('model_type')}'; export a Llama model (e.g. one slimlm distilled)"
        )
    scaling = config.get("rope_scaling") or config.get("rope_parameters") or {}
    if not isinstance(scaling, dict):
        raise SlimlmError(f"{path}: rope_scaling must be a mapping (got {scaling!r}); fix config.json")
    if scaling.get("rope_type", scaling.get("type", "default")) != "default":
        raise SlimlmError(
            f"GGUF export does not handle rope scaling '{scaling.get('rope_type')}'; export a model with plain rope"
        )
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads"):
        _positive_int(config, key, path, required=True)
    for key in ("num_key_value_heads", "head_dim", "max_position_embeddings"):
        _positive_int(config, key, path, required=False)
    return config


def _positive_int(config: dict, key: str, path: Path, *, required: bool) -> None:
    value = config.get(key)
    if value is None and not required:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise SlimlmError(
            f"{path}: {key} must be a positive integer (got {value!r}); fix config.json or save the model again"
        )


def _weight_shapes(model_dir: Path) -> dict:
    """The embedding's row count and the number of decoder layers, from the safetensors headers alone.

    Sizes in config.json and tokenizer.json are checked against these before anything is allocated, so a
    hostile `vocab_size: 1e11` is refused instead of building a list of that length."""
    import re

    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise SlimlmError(f"{model_dir} has no .safetensors weights; save the model with safe_serialization")
    rows, layers = None, set()
    for f in files:
        try:
            with safe_open(f, framework="pt") as st:
                for name in st.keys():
                    found = re.match(r"model\.layers\.(\d+)\.", name)
                    if found:
                        layers.add(int(found.group(1)))
                    if name == "model.embed_tokens.weight":
                        rows = st.get_slice(name).get_shape()[0]
        except Exception as exc:  # safetensors' own error type; the file is damaged either way
            raise SlimlmError(
                f"{f} is not a readable safetensors file ({type(exc).__name__}); save or fetch the model again"
            ) from None
    if rows is None:
        raise SlimlmError(f"{model_dir} has no model.embed_tokens.weight; export a standard Llama model")
    return {"vocab_rows": rows, "layers": len(layers)}


def _check_against_weights(config: dict, shape: dict, model_dir: Path) -> None:
    if config["vocab_size"] != shape["vocab_rows"]:
        raise SlimlmError(
            f"{model_dir / 'config.json'} says vocab_size {config['vocab_size']} but the embedding "
            f"has {shape['vocab_rows']} rows; set vocab_size to {shape['vocab_rows']} or save the "
            "model again"
        )
    if config["num_hidden_layers"] != shape["layers"]:
        raise SlimlmError(
            f"{model_dir / 'config.json'} says num_hidden_layers {config['num_hidden_layers']} but "
            f"the weights hold {shape['layers']} layers; fix config.json or save the model again"
        )


def _rope_theta(config: dict) -> float:
    """transformers 5 keeps rope_theta inside rope_parameters; older configs keep it at the top."""
    return float(config.get("rope_theta") or (config.get("rope_parameters") or {}).get("rope_theta") or 10000.0)


def _head_dim(config: dict) -> int:
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def _add_metadata(writer, config: dict, model_dir: Path, type: str) -> None:
    """The `general.*` and `llama.*` keys llama.cpp needs to size the model."""
    import gguf

    writer.add_name(model_dir.resolve().name)
    writer.add_vocab_size(config["vocab_size"])
    writer.add_context_length(config.get("max_position_embeddings", 2048))
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config.get("num_key_value_heads", config["num_attention_heads"]))
    writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
    writer.add_rope_freq_base(_rope_theta(config))
    head_dim = _head_dim(config)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config["hidden_size"] // config["num_attention_heads"]:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    file_type = {
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
        "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
    }[type]
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _add_tokenizer(writer, model_dir: Path, config: dict, vocab_rows: int) -> None:
    """The byte-level BPE vocabulary as llama.cpp's `gpt2` tokenizer: tokens, types, merges, ids."""
    import gguf

    path = model_dir / "tokenizer.json"
    if not path.exists():
        raise SlimlmError(f"{model_dir} has no tokenizer.json; save the model's fast tokenizer with it")
    spec = _json(path)
    bpe = spec.get("model") or {}
    if (
        not isinstance(bpe, dict)
        or bpe.get("type") != "BPE"
        or "ByteLevel" not in json.dumps(spec.get("pre_tokenizer"))
    ):
        raise SlimlmError(
            "GGUF export supports only byte-level BPE tokenizers (GPT-2 style); export a model with such a tokenizer"
        )
    try:
        added = {t["id"]: t for t in spec.get("added_tokens", [])}
        by_id = {i: tok for tok, i in bpe["vocab"].items()} | {i: t["content"] for i, t in added.items()}
        bad = [i for i in by_id if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < vocab_rows]
    except (KeyError, TypeError, AttributeError):
        raise SlimlmError(
            f"{path} is malformed (its vocab or added_tokens are not id mappings); save the tokenizer again"
        ) from None
    if bad:  # checked before the list below is sized by it
        raise SlimlmError(
            f"{path} has token id {bad[0]!r} but the model's embedding has {vocab_rows} rows; "
            "this tokenizer does not belong to the model: save the model's own tokenizer with it"
        )
    size = vocab_rows
    tokens, types = [], []
    for i in range(size):
        if i not in by_id:  # embedding rows past the vocabulary: llama.cpp's padding convention
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in bpe.get("merges", [])]

    writer.add_tokenizer_model("gpt2")
    # SmolLM's tokenizer splits digits one by one; llama.cpp calls that pre-tokenizer "smollm".
    writer.add_tokenizer_pre(
        "smollm" if '"individual_digits": true' in json.dumps(spec.get("pre_tokenizer")) else "gpt-2"
    )
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    tok_config = _json(model_dir / "tokenizer_config.json")
    ids = {t: i for i, t in by_id.items()}
    for key, add in (
        ("bos", writer.add_bos_token_id),
        ("eos", writer.add_eos_token_id),
        ("pad", writer.add_pad_token_id),
    ):
        token_id = config.get(f"{key}_token_id")
        token = tok_config.get(f"{key}_token")
        if isinstance(token, dict):
            token = token.get("content")
        if token in ids:
            token_id = ids[token]
        if isinstance(token_id, int):
            add(token_id)
    writer.add_add_bos_token(bool(tok_config.get("add_bos_token", False)))
    if isinstance(tok_config.get("chat_template"), str):
        writer.add_chat_template(tok_config["chat_template"])


def _json(path: Path) -> dict:
    """A JSON object from the model folder ({} if absent), with one line naming a damaged file."""
    if not path.exists():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        raise SlimlmError(
            f"{path} is not valid JSON; restore it from the model's source or save the model again"
        ) from None
    if not isinstance(value, dict):
        raise SlimlmError(f"{path} is not a JSON object; restore it from the model's source")
    return value


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf's LlamaModel.permute: HF's rotate-half rope rows -> llama.cpp's interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _load_weights(model_dir: Path) -> dict:
    """All safetensors shards, as float32 numpy (bf16 has no numpy dtype, hence torch)."""
    from safetensors.torch import load_file

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise SlimlmError(f"{model_dir} has no .safetensors weights; save the model with safe_serialization")
    weights = {}
    for f in files:
        weights.update({k: v.float().numpy() for k, v in load_file(f).items()})
    return weights


def _add_tensors(writer, model_dir: Path, config: dict, type: str) -> None:
    """Rename, permute and quantize every tensor; 1-D norms stay f32 as llama.cpp expects."""
    import gguf

    n_head = config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads", n_head)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config["num_hidden_layers"])
    weights = _load_weights(model_dir)
    tied = config.get("tie_word_embeddings", True)
    if tied:
        weights.pop("lm_head.weight", None)  # the embedding doubles as the output, as in the source
    unquantized = {}  # matrices left in f16 because their rows are not whole blocks: name -> row length
    for hf_name, data in weights.items():
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise SlimlmError(f"cannot map tensor {hf_name} to a GGUF name; export a standard Llama model")
        if hf_name.endswith("q_proj.weight"):
            data = _permute(data, n_head)
        elif hf_name.endswith("k_proj.weight"):
            data = _permute(data, n_kv)
        qtype = _tensor_type(name, data, type)
        if qtype == gguf.GGMLQuantizationType.F16 and type != "f16":
            unquantized[hf_name] = data.shape[-1]
            writer.add_tensor(name, data.astype(np.float32))
        elif qtype == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(name, data.astype(np.float16))
        else:
            writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    if unquantized:
        matrices = sum(1 for d in weights.values() if d.ndim == 2)
        log(
            f"{len(unquantized)} of {matrices} weight matrices stay f16 in this {type} file: their rows "
            f"({', '.join(map(str, sorted(set(unquantized.values()))))} values) are not whole 32-value blocks, so the "
            "file is larger and slower under llama.cpp; a student whose hidden and MLP widths are multiples of 32 "
            "quantizes fully"
        )


def _tensor_type(name: str, data: np.ndarray, type: str):
    """Norms in f32; the embedding (also the tied output) in q8_0 even for q4_0, as llama-quantize
    keeps the output tensor at higher precision; rows not a whole number of blocks fall back to f16."""
    import gguf

    T = gguf.GGMLQuantizationType
    if data.ndim == 1:
        return T.F32
    wanted = {"f16": T.F16, "q8_0": T.Q8_0, "q4_0": T.Q4_0}[type]
    if wanted == T.Q4_0 and name.startswith(("token_embd", "output")):
        wanted = T.Q8_0
    if wanted != T.F16 and data.shape[-1] % gguf.GGML_QUANT_SIZES[wanted][0]:
        return T.F16
    return wanted
