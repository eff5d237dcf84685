"""Which float precision a run computes in, decided once from the hardware it runs on.

bf16 autocast roughly halves matmul time on a CPU with native bf16 (AVX-512 BF16 or AMX; also
Arm's BF16) and on a CUDA device that supports it. On a CPU without it (AVX2 only, e.g. AMD Zen 3)
torch emulates bf16 and a matmul runs ~7x *slower* than fp32 (measured on AMD EPYC Zen 3: a demo step
took 98.9 s in bf16 against 12 s in fp32; bench/README.md). So `auto`, the default, asks the hardware,
and every autocast region in slimlm goes through `autocast()` below: one decision, printed once, recorded in
`slimlm.json` and in experiment reports.

Tests replace `native_bf16` (the capability probe) to check the decision and that every stage
honours it.
"""

from __future__ import annotations

import contextlib
import platform
from dataclasses import asdict, dataclass

import torch

from slimlm.distributed import log
from slimlm.errors import SlimlmError

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class Precision:
    """The decision: `dtype` is what autocast computes in ("bf16") or "fp32" (autocast off)."""

    requested: str
    dtype: str
    device: str
    reason: str

    @property
    def bf16(self) -> bool:
        return self.dtype == "bf16"

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        return f"precision {self.dtype} ({self.reason})"


def cpu_name() -> str:
    """The CPU's model name as the OS reports it (recorded beside every measurement)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# (vendor, family, first model, last model) -> microarchitecture: the CPU kinds a 2-core cloud machine is likely
# to be, from the vendors' family/model numbers. A model name such as "AMD EPYC" alone does not say which.
MICROARCHITECTURES = (
    ("AuthenticAMD", 23, 0x00, 0x2F, "AMD Zen / Zen+"),
    ("AuthenticAMD", 23, 0x30, 0xFF, "AMD Zen 2"),
    ("AuthenticAMD", 25, 0x00, 0x0F, "AMD Zen 3"),
    ("AuthenticAMD", 25, 0x10, 0x1F, "AMD Zen 4"),
    ("AuthenticAMD", 25, 0x20, 0x5F, "AMD Zen 3"),
    ("AuthenticAMD", 25, 0x60, 0xAF, "AMD Zen 4"),
    ("AuthenticAMD", 26, 0x00, 0x7F, "AMD Zen 5"),
    ("GenuineIntel", 6, 0x55, 0x55, "Intel Skylake-SP / Cascade Lake / Cooper Lake"),
    ("GenuineIntel", 6, 0x6A, 0x6C, "Intel Ice Lake-SP"),
    ("GenuineIntel", 6, 0x8F, 0x8F, "Intel Sapphire Rapids"),
    ("GenuineIntel", 6, 0xCF, 0xCF, "Intel Emerald Rapids"),
    ("GenuineIntel", 6, 0xAD, 0xAE, "Intel Granite Rapids"),
)


def microarchitecture(cpuinfo: str | None = None) -> str | None:
    """The CPU's kind (e.g. "AMD Zen 4") from /proc/cpuinfo's vendor, family and model; None where unknown."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
                cpuinfo = fh.read(8192)
        except OSError:
            return None
    fields = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    try:
        vendor, family, model = fields["vendor_id"], int(fields["cpu family"]), int(fields["model"])
    except (KeyError, ValueError):
        return None
    return next(
        (name for v, f, lo, hi, name in MICROARCHITECTURES if (v, f) == (vendor, family) and lo <= model <= hi), None
    )


def cpu_kind() -> dict:
    """What a reader needs to compare two CPU numbers: model and kind, vector ISA torch uses, native bf16 or not."""
    return {
        "model": cpu_name(),
        "kind": microarchitecture(),
        "capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": _cpu_native_bf16(),
        "threads": torch.get_num_threads(),
    }


def describe_cpu() -> str:
    kind = cpu_kind()
    name = f"{kind['model']} ({kind['kind']})" if kind["kind"] else kind["model"]
    return f"{name}, {kind['capability']}, {'native' if kind['native_bf16'] else 'no native'} bf16"


def _cpu_native_bf16() -> bool:
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN: no fast bf16 path
        return False


def native_bf16(device_type: str) -> tuple[bool, str]:
    """The capability probe: (does `device_type` run bf16 matmuls natively, why we think so)."""
    if device_type == "cuda":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return True, f"CUDA device {torch.cuda.get_device_name()} supports bf16"
        return False, "this CUDA device has no bf16 support"
    if device_type == "cpu":
        capability = torch.backends.cpu.get_cpu_capability()
        if _cpu_native_bf16():
            return True, f"this CPU runs bf16 natively ({capability})"
        return False, f"this CPU has no native bf16 ({capability}; bf16 matmuls would be emulated, ~7x slower)"
    return False, f"device {device_type} is not known to run bf16 natively"


def default_device_type() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def check(requested) -> str:
    """A user's --precision value, refused with the fix before anything runs."""
    if requested not in PRECISIONS:
        raise SlimlmError(
            f"--precision must be one of {', '.join(PRECISIONS)} (got {requested!r}); "
            "auto uses bf16 only where the hardware runs it natively"
        )
    return requested


_announced: set = set()


def resolve(requested: str = "auto", device_type: str | None = None, *, announce=None) -> Precision:
    """Decide the precision for a run on `device_type` (default: CUDA if present, else CPU).

    `announce` (a log function) prints the choice and its reason once per process and decision."""
    check(requested)
    device_type = device_type or default_device_type()
    native, why = native_bf16(device_type)
    if requested == "fp32":
        decision = Precision(requested, "fp32", device_type, f"asked for fp32; {why}")
    elif requested == "bf16":
        reason = why if native else f"asked for bf16 although {why}"
        decision = Precision(requested, "bf16", device_type, reason)
    else:
        decision = Precision(requested, "bf16" if native else "fp32", device_type, why)
    if announce is not None and decision not in _announced:
        _announced.add(decision)
        announce(decision.describe())
    return decision


def autocast(precision: Precision | None, device_type: str | None = None):
    """The autocast region every forward pass of slimlm runs in: bf16 when decided, else nothing.

    Work on another device than the run was decided for (e.g. a CPU-held teacher in a CUDA run) is decided
    again for that device, and the new decision is printed once."""
    if precision is None:
        return contextlib.nullcontext()
    if device_type is not None and device_type != precision.device:
        precision = resolve(precision.requested, device_type, announce=_announce_redecision)
    if not precision.bf16:
        return contextlib.nullcontext()
    return torch.autocast(precision.device, dtype=torch.bfloat16)


def _announce_redecision(message: str) -> None:
    log(f"work on another device than the run's: {message}")


def from_legacy(values: dict) -> dict:
    """Old recipes and callers said `bf16: true/false`; map it to `precision` (an explicit choice)."""
    if values.get("bf16") is None:
        return {k: v for k, v in values.items() if k != "bf16"}
    values = dict(values)
    legacy = values.pop("bf16")
    if not isinstance(legacy, bool):
        raise SlimlmError(f"bf16 must be true or false (got {legacy!r}); better: precision: auto|fp32|bf16")
    meant = "bf16" if legacy else "fp32"
    if values.get("precision") not in (None, meant):
        raise SlimlmError(f"bf16: {str(legacy).lower()} contradicts precision: {values['precision']}; keep precision")
    values["precision"] = meant
    return values
