"""The few things slimlm needs to know when `torchrun` or `accelerate launch` starts it N times.

There is no runtime here: the launcher sets RANK/WORLD_SIZE, accelerate opens the process group
(gloo on CPU, NCCL on CUDA) exactly as `TrainingArguments` would, and the Trainer does the data
parallelism. What slimlm adds is who does the one-time work:

- rank 0 claims the output folder, fills the data and teacher caches, writes checkpoints'
  completion records, the result, `slimlm.json` and the model card; the others wait at a barrier;
- an error on rank 0 is raised on every rank with the same one-line message, so no rank hangs;
- values cross ranks as JSON in a byte tensor, never as pickles.

In a single process (no launcher) every helper is a no-op that runs the function directly.
"""

from __future__ import annotations

import atexit
import json
import os
from datetime import timedelta

import torch

from slimlm.errors import SlimlmError

# The variables accelerate reads (accelerate.utils.environment.get_cpu_distributed_information): torchrun
# sets the first of each list; processes started through MPI (`accelerate launch` on CPUs) have only the
# MPI ones (Open MPI, Intel MPI/MPICH's PMI, MVAPICH2) until accelerate's setup copies them to RANK/WORLD_SIZE.
_RANK = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
_WORLD_SIZE = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
_LOCAL_RANK = ("LOCAL_RANK", "MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_RANK")


def _env_int(keys: tuple[str, ...], default: int) -> int:
    """The first of `keys` set to a non-negative integer (as accelerate's get_int_from_env), else `default`."""
    for key in keys:
        value = os.environ.get(key, "").strip()
        if value.isdigit():
            return int(value)
    return default


def world_size() -> int:
    return _env_int(_WORLD_SIZE, 1)


def rank() -> int:
    return _env_int(_RANK, 0)


def local_rank() -> int:
    return _env_int(_LOCAL_RANK, 0)


def is_distributed() -> bool:
    return world_size() > 1


def is_main_process() -> bool:
    return rank() == 0


def log(message: str) -> None:
    """One line on stderr, from rank 0 only (under torchrun every rank runs the same code)."""
    if is_main_process():
        import sys

        print(f"slimlm: {message}", file=sys.stderr, flush=True)


# slimlm's own waits (rank 0 filling a teacher cache, publishing a large model) can outlast NCCL's
# default timeout, so they go through a gloo group of their own, on CPU, with a long timeout.
WAIT_TIMEOUT = timedelta(hours=12)
_group = None


def _dist():
    """The process group for slimlm's coordination, opened once on every rank (collectively)."""
    global _group
    import torch.distributed as dist

    if not dist.is_initialized():  # opened the way TrainingArguments opens it (accelerate's PartialState)
        from accelerate import PartialState

        PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(seconds=1800))
    if _group is None:
        _group = dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT)
        atexit.register(shutdown)  # for the Python API; the CLI calls it itself
    return dist


def shutdown() -> None:
    """Destroy the process groups while the interpreter is still whole. Left to interpreter teardown, gloo's
    worker threads can abort a rank that has finished its work ("terminate called without an active
    exception", SIGABRT; pytorch/pytorch#179291), and torchrun then reports the whole run as failed."""
    global _group
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _group = None


def barrier() -> None:
    if is_distributed():
        _dist().barrier(group=_group)


def _broadcast_bytes(data: bytes, src: int = 0) -> bytes:
    """Rank `src`'s `data` on every rank (a uint8 tensor; the other ranks pass b"")."""
    dist = _dist()
    length = torch.tensor([len(data)], dtype=torch.long)
    dist.broadcast(length, src, group=_group)
    buffer = (
        torch.frombuffer(bytearray(data), dtype=torch.uint8).clone()
        if rank() == src
        else torch.empty(int(length.item()), dtype=torch.uint8)
    )
    dist.broadcast(buffer, src, group=_group)
    return buffer.numpy().tobytes()


def all_sum(values: list[float]) -> list[float]:
    """Element-wise sum over ranks, in float64 (metrics gathered from every rank's share)."""
    if not is_distributed():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64)
    _dist().all_reduce(tensor, group=_group)
    return tensor.tolist()


def _message(exc: BaseException) -> str:
    if isinstance(exc, SlimlmError):
        return str(exc)
    return f"rank 0 failed ({type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''})"


def _share_outcome(fn, *args, share_result: bool, **kwargs):
    """Run fn on rank 0 and send every rank one message: rank 0's error, or none and (if `share_result`)
    its result. The result is encoded before anything is sent, so a result that is not JSON is rank 0's
    error too, and the other ranks raise it instead of waiting for a second message that never comes."""
    if is_main_process():
        try:
            result = fn(*args, **kwargs)
            message = json.dumps({"error": None, "result": result if share_result else None}).encode()
        except BaseException as exc:
            _broadcast_bytes(json.dumps({"error": _message(exc), "result": None}).encode())
            raise
        _broadcast_bytes(message)
        return result
    outcome = json.loads(_broadcast_bytes(b"").decode())
    if outcome["error"] is not None:
        raise SlimlmError(outcome["error"])
    return outcome["result"]


def on_main(fn, *args, **kwargs):
    """Run fn on rank 0 only and return its (JSON-serialisable) result on every rank."""
    if not is_distributed():
        return fn(*args, **kwargs)
    return _share_outcome(fn, *args, share_result=True, **kwargs)


def main_first(fn, *args, **kwargs):
    """Rank 0 runs fn first (filling a cache), then every other rank runs it (and reads the cache)."""
    if not is_distributed():
        return fn(*args, **kwargs)
    result = _share_outcome(fn, *args, share_result=False, **kwargs)
    return result if is_main_process() else fn(*args, **kwargs)
