"""`slimlm distill` and `slimlm finetune` under torchrun: two CPU processes (gloo) against one.

N ranks with a per-process batch b and one process with batch N*b see the same global batches (the
blocks are in a seeded order and the sampler is sequential; accelerate deals micro-batch i to rank
i % N), the token count of a step is summed over ranks, and DDP averages gradients, so the two runs
compute the same loss and the same update. What differs is the order of floating-point sums (each
rank sums its half, then the all-reduce adds the halves), so the results agree to rounding, not bit
for bit: measured here, the largest weight difference after 4 AdamW steps at lr 3e-3 is ~4e-6 and
the logged losses agree to ~1e-7 relative. The tolerances below (weights 1e-4 absolute, losses 1e-5
relative) leave room for other CPUs and thread counts while still catching any real difference: a
wrong loss scale or a batch seen twice moves the weights by ~1e-3 (the learning rate) per step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

RECIPE = "eval_window: 32\neval_tokens: 512\n"
WEIGHT_ATOL, LOSS_RTOL = 1e-4, 1e-5


def env(cache):
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "SLIMLM_CACHE": str(cache),
    }


def torchrun(*argv, cache):
    """`torchrun --standalone --nproc_per_node 2 -m slimlm ARGS`, as a user types it."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "slimlm",
            *map(str, argv),
        ],
        capture_output=True,
        text=True,
        env=env(cache),
        timeout=600,
    )
    return done.returncode, done.stderr


def in_process(*argv, cache, monkeypatch, capsys):
    """The same command in this process (one process, no launcher), sharing the caches."""
    from slimlm.cli import main

    monkeypatch.setenv("SLIMLM_CACHE", str(cache))
    code = main([*map(str, argv)])
    return code, capsys.readouterr().err


def assert_same_weights(a, b):
    a, b = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=WEIGHT_ATOL, msg=key)
    return max((a[k] - b[k]).abs().max().item() for k in a)


def record(path):
    return json.loads((path / "slimlm.json").read_text())


def assert_same_log(one, two):
    log1, log2 = record(one)["training"]["log"], record(two)["training"]["log"]
    assert len(log1) == len(log2) == record(one)["training"]["steps"]
    for a, b in zip(log1, log2):
        for key in ("loss", "kd", "ce", "feature", "grad_norm"):
            if key in a:
                parts_abs = 1e-4 if key in ("kd", "ce", "feature") else 0
                assert b[key] == pytest.approx(a[key], rel=LOSS_RTOL, abs=parts_abs), key


# a narrow student with the feature term: its projections are trained with the student (training/trainable.py),
# so DDP must synchronise their gradients too, or the two ranks' students drift apart
NARROW_FEATURE = ["--student-config", '{"hidden_size": 16}', "--feature-layers", "4:2", "--feature-weight", 0.5]


@pytest.mark.parametrize("extra", [[], NARROW_FEATURE], ids=["plain", "narrow-feature"])
def test_distill_on_two_processes_equals_one_process_with_the_same_global_batch(
    tiny_teacher, text_dir, tmp_path, monkeypatch, capsys, extra
):
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    common = [
        "distill",
        "--recipe",
        tmp_path / "recipe.yaml",
        "--teacher",
        tiny_teacher,
        "--data",
        text_dir,
        "--block-size",
        32,
        "--learning-rate",
        3e-3,
        "--no-bf16",
        "--logging-steps",
        1,
        "--max-steps",
        4,
        "--seed",
        1,
        "--teacher-cache",
        "--layers",
        2,
        *extra,
    ]
    # a fresh cache: both ranks need the data and teacher caches, which rank 0 fills before the other reads
    code, err = torchrun(*common, "--batch-size", 2, "--out", tmp_path / "two", cache=tmp_path / "cache")
    assert code == 0, err[-3000:]
    code, err1 = in_process(
        *common,
        "--batch-size",
        4,
        "--out",
        tmp_path / "one",
        cache=tmp_path / "cache",
        monkeypatch=monkeypatch,
        capsys=capsys,
    )
    assert code == 0, err1[-3000:]
    assert_same_log(tmp_path / "one", tmp_path / "two")
    assert_same_weights(tmp_path / "one", tmp_path / "two")
    two = record(tmp_path / "two")
    assert two["training"]["processes"] == 2 and record(tmp_path / "one")["training"]["processes"] == 1
    assert two["training"]["tokens"] == record(tmp_path / "one")["training"]["tokens"] == 4 * 4 * 32
    for key in ("validation_before", "validation_after"):  # scored in halves on the two ranks, then summed
        assert two["metrics"][key]["tokens_scored"] == record(tmp_path / "one")["metrics"][key]["tokens_scored"]
        assert two["metrics"][key]["nll"] == pytest.approx(record(tmp_path / "one")["metrics"][key]["nll"], rel=1e-5)
    assert err.count("slimlm: wrote") == 1, err[-3000:]  # rank 0 alone reports and writes
    assert not (tmp_path / "two.partial").exists() and not list(tmp_path.glob("*.old"))


def test_finetune_on_two_processes_equals_one_process(tiny_teacher, text_dir, tmp_path, monkeypatch, capsys):
    """LoRA with the online teacher in the loss: the teacher is loaded, frozen, on every rank."""
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    common = [
        "finetune",
        tiny_teacher,
        "--recipe",
        tmp_path / "recipe.yaml",
        "--teacher",
        tiny_teacher,
        "--data",
        text_dir,
        "--method",
        "lora",
        "--rank",
        2,
        "--dropout",
        0,
        "--block-size",
        32,
        "--learning-rate",
        1e-2,
        "--no-bf16",
        "--logging-steps",
        1,
        "--max-steps",
        3,
        "--seed",
        2,
    ]
    code, err = torchrun(
        *common, "--batch-size", 1, "--grad-accum", 2, "--out", tmp_path / "two", cache=tmp_path / "cache"
    )
    assert code == 0, err[-3000:]
    code, err1 = in_process(
        *common,
        "--batch-size",
        2,
        "--grad-accum",
        2,
        "--out",
        tmp_path / "one",
        cache=tmp_path / "cache",
        monkeypatch=monkeypatch,
        capsys=capsys,
    )
    assert code == 0, err1[-3000:]
    assert_same_log(tmp_path / "one", tmp_path / "two")
    assert_same_weights(tmp_path / "one", tmp_path / "two")
    assert (tmp_path / "two" / "adapter" / "adapter_model.safetensors").exists()


def test_an_error_on_rank_0_stops_every_rank_with_its_one_line_message(tiny_teacher, text_dir, tmp_path):
    (tmp_path / "taken").mkdir()
    code, err = torchrun(
        "distill",
        "--teacher",
        tiny_teacher,
        "--data",
        text_dir,
        "--keep-layers",
        "0",
        "--out",
        tmp_path / "taken",
        cache=tmp_path / "cache",
    )
    assert code != 0
    # each rank prints the line (the two may interleave on the shared stderr)
    assert err.count("slimlm: error: output") == err.count("slimlm: error:") == 2, err[-3000:]
    assert err.count("already exists; pass --force") == 2, err[-3000:]
    assert "SlimlmError" not in err and "Timeout" not in err  # no traceback of ours, no rank left waiting


FSDP_SCRIPT = r"""
import sys, torch, torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from transformers import AutoModelForCausalLM
from slimlm.losses.kd import distill_loss
from slimlm.training.signal import fsdp_teacher
from slimlm.methods.layers import build_student

dist.init_process_group("gloo")
rank, teacher_dir = dist.get_rank(), sys.argv[1]
load = lambda: AutoModelForCausalLM.from_pretrained(teacher_dir).eval().requires_grad_(False)
teacher = load()
student, reference = build_student(teacher, [0, 3]), build_student(teacher, [0, 3])
ids = torch.randint(0, teacher.config.vocab_size, (4, 16), generator=torch.Generator().manual_seed(0))
labels = torch.cat([ids[:, 1:], torch.full((4, 1), -100)], 1)
sharded_teacher = fsdp_teacher(load())
for layer in student.model.layers:
    fully_shard(layer)
fully_shard(student)

def loss(s, t, x, y, n):  # what the output term (training/terms.py) computes, on one rank's share
    out = s(input_ids=x, output_hidden_states=True, logits_to_keep=1, use_cache=False)
    with torch.no_grad():
        t_out = t(input_ids=x, output_hidden_states=True, logits_to_keep=1, use_cache=False)
    w = t.get_output_embeddings().weight
    w = w.full_tensor() if hasattr(w, "full_tensor") else w
    value, _ = distill_loss(out.hidden_states[-1].flatten(0, 1), s.get_output_embeddings().weight, y.flatten(),
                            teacher_hidden=t_out.hidden_states[-1].flatten(0, 1), teacher_head=w,
                            num_items=n)
    return value

n = labels.ne(-100).sum()  # the step's token count over both ranks; x2: FSDP averages gradients over ranks
share = slice(2 * rank, 2 * rank + 2)
(loss(student, sharded_teacher, ids[share], labels[share], n) * 2).backward()
loss(reference, teacher, ids, labels, n).backward()
worst = 0.0
for (name, p), (_, q) in zip(student.named_parameters(), reference.named_parameters()):
    g = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
    worst = max(worst, (g - q.grad).abs().max().item() / max(q.grad.abs().max().item(), 1e-12))
if rank == 0:
    print(f"RELATIVE_GRAD_DIFF {worst:.3e}", flush=True)
dist.barrier()
dist.destroy_process_group()
import os
os._exit(0)  # gloo's threads can abort in C++ destructors at interpreter exit under load (flaky SIGABRT)
"""


def test_fsdp2_sharded_teacher_and_student_give_one_process_gradients(tiny_teacher, tmp_path):
    """accelerate runs FSDP on accelerators only, so the FSDP pieces slimlm adds (the teacher sharded with
    fully_shard, the student's output head read outside its forward for the chunked loss) are checked
    here with torch's FSDP2 on two CPU processes; bench/multi_gpu_check.sh runs the whole stage on GPUs."""
    script = tmp_path / "fsdp_check.py"
    script.write_text(FSDP_SCRIPT)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(script),
            str(tiny_teacher),
        ],
        capture_output=True,
        text=True,
        env=env(tmp_path),
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    worst = float(done.stdout.split("RELATIVE_GRAD_DIFF")[1].split()[0])
    assert worst < 1e-5, worst


# ------------------------------------------------------------------------------------------ coordination units


def test_rank_and_world_size_come_from_mpi_variables_too(monkeypatch):
    """`accelerate launch` on CPUs starts processes through MPI: until accelerate's setup copies them to
    RANK/WORLD_SIZE they have only Open MPI's, PMI's or MVAPICH2's variables (the ones accelerate reads)."""
    from slimlm import distributed

    for key in distributed._RANK + distributed._WORLD_SIZE + distributed._LOCAL_RANK:
        monkeypatch.delenv(key, raising=False)
    assert (distributed.rank(), distributed.world_size(), distributed.local_rank()) == (0, 1, 0)
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "3")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_RANK", "1")
    assert (distributed.rank(), distributed.world_size(), distributed.local_rank()) == (3, 4, 1)
    assert distributed.is_distributed() and not distributed.is_main_process()
    for key in ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("PMI_RANK", "1")
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setenv("MPI_LOCALRANKID", "1")
    assert (distributed.rank(), distributed.world_size(), distributed.local_rank()) == (1, 2, 1)
    monkeypatch.setenv("MV2_COMM_WORLD_RANK", "5")  # PMI comes first in accelerate's order
    assert distributed.rank() == 1
    monkeypatch.setenv("RANK", "0")  # torchrun's variables win
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert (distributed.rank(), distributed.world_size(), distributed.local_rank()) == (0, 8, 0)


def test_rank_0_sends_one_message_and_encodes_the_result_before_sending(monkeypatch):
    """A result that is not JSON fails on rank 0 before anything is sent, so the other ranks get that error
    (not "no error" followed by a result that never comes: a 12-hour wait)."""
    from slimlm import distributed
    from slimlm.errors import SlimlmError

    sent = []
    monkeypatch.setattr(distributed, "_broadcast_bytes", lambda data, src=0: sent.append(data) or data)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert distributed.on_main(lambda: {"kept": [1, 2]}) == {"kept": [1, 2]}
    assert [json.loads(m) for m in sent] == [{"error": None, "result": {"kept": [1, 2]}}]
    sent.clear()
    with pytest.raises(TypeError, match="not JSON serializable"):
        distributed.on_main(lambda: object())
    assert len(sent) == 1
    message = json.loads(sent[0])
    assert message["result"] is None and message["error"].startswith("rank 0 failed (TypeError: ")
    sent.clear()
    model = object()  # main_first shares only the outcome: the other ranks run fn themselves
    assert distributed.main_first(lambda: model) is model
    assert [json.loads(m) for m in sent] == [{"error": None, "result": None}]

    monkeypatch.setenv("RANK", "1")  # another rank receives rank 0's one message
    error = json.dumps(
        {"error": "rank 0 failed (TypeError: Object of type object is not JSON serializable)", "result": None}
    ).encode()
    monkeypatch.setattr(distributed, "_broadcast_bytes", lambda data, src=0: error)
    with pytest.raises(SlimlmError, match="not JSON serializable"):
        distributed.on_main(lambda: pytest.fail("only rank 0 runs fn"))
    ok = json.dumps({"error": None, "result": [7]}).encode()
    monkeypatch.setattr(distributed, "_broadcast_bytes", lambda data, src=0: ok)
    assert distributed.on_main(lambda: pytest.fail("only rank 0 runs fn")) == [7]


ENCODE_SCRIPT = r"""
import os
from slimlm import distributed
from slimlm.errors import SlimlmError
try:
    distributed.on_main(lambda: object())
    print(f"rank {distributed.rank()}: NO ERROR", flush=True)
except (SlimlmError, TypeError) as exc:
    print(f"rank {distributed.rank()}: {type(exc).__name__}: {exc}", flush=True)
distributed.barrier()
os._exit(0)
"""


def test_a_result_that_is_not_json_ends_every_rank_with_rank_0s_error(tmp_path):
    script = tmp_path / "encode_check.py"
    script.write_text(ENCODE_SCRIPT)
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)],
        capture_output=True,
        text=True,
        env=env(tmp_path),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rank 0: TypeError: Object of type object is not JSON serializable" in done.stdout, done.stdout
    assert (
        "rank 1: SlimlmError: rank 0 failed (TypeError: Object of type object is not JSON serializable)" in done.stdout
    ), done.stdout


def test_accelerates_fsdp2_default_sharded_state_dict_is_refused():
    """`accelerate launch --use_fsdp --fsdp_version 2` without a state-dict type gives SHARDED_STATE_DICT
    (resumed through a pickle); the trainer refuses it with settings/training.py's one-line message."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    from slimlm.errors import SlimlmError
    from slimlm.training.trainer import check_fsdp_state_dict_type

    check_fsdp_state_dict_type(FullyShardedDataParallelPlugin(fsdp_version=1))  # FULL_STATE_DICT: fine
    check_fsdp_state_dict_type(FullyShardedDataParallelPlugin(fsdp_version=2, state_dict_type="FULL_STATE_DICT"))
    fsdp2 = FullyShardedDataParallelPlugin(fsdp_version=2)
    assert "SHARDED_STATE_DICT" in str(fsdp2.state_dict_type)
    with pytest.raises(SlimlmError, match="SHARDED_STATE_DICT .* pickle.*--fsdp_state_dict_type FULL_STATE_DICT"):
        check_fsdp_state_dict_type(fsdp2)


def test_teacher_cache_moves_the_teacher_to_the_device_only_when_it_computes(tiny_teacher, tmp_path, monkeypatch):
    """Ranks that read the cache, and runs whose cache is complete, never put the teacher on the device."""
    from transformers import AutoModelForCausalLM

    from slimlm.training.teacher_cache import teacher_cache

    monkeypatch.setenv("SLIMLM_CACHE", str(tmp_path / "cache"))
    teacher = AutoModelForCausalLM.from_pretrained(tiny_teacher)
    moves, real_to = [], teacher.to
    teacher.to = lambda *a, **k: moves.append(a) or real_to(*a, **k)
    blocks = torch.randint(0, teacher.config.vocab_size, (4, 16), generator=torch.Generator().manual_seed(0))
    kwargs = dict(precision=None, device="cpu")
    entry = teacher_cache(teacher, tiny_teacher, blocks, hidden_layers=[], **kwargs)
    assert moves == [("cpu",)] and (entry / "samples.safetensors").exists()
    assert teacher_cache(teacher, tiny_teacher, blocks, hidden_layers=[], **kwargs) == entry
    assert moves == [("cpu",)]  # complete: not moved
    teacher_cache(teacher, tiny_teacher, blocks, hidden_layers=[2], **kwargs)  # a missing layer: moved
    assert moves == [("cpu",)] * 2 and (entry / "hidden_2.safetensors").exists()
    teacher_cache(teacher, tiny_teacher, blocks, hidden_layers=[2], precision=None)  # no device: never
    assert moves == [("cpu",)] * 2


def test_shutdown_destroys_the_process_group_and_the_cli_calls_it(tmp_path, monkeypatch, capsys):
    """Left to interpreter teardown, a gloo group can SIGABRT a rank that finished its work (a torchrun run
    then fails after writing its model); `distributed.shutdown` closes it first, and the CLI always calls it."""
    import torch.distributed as dist

    from slimlm import distributed
    from slimlm.cli import main

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    assert dist.is_initialized()
    distributed.shutdown()
    assert not dist.is_initialized()
    distributed.shutdown()  # a second call (atexit after the CLI's) does nothing

    calls = []
    monkeypatch.setattr(distributed, "shutdown", lambda: calls.append(1))
    assert main(["cache", "list"]) == 0
    with pytest.raises(SystemExit):  # argparse's own exit ends the command: still called
        main(["distill", "--max-tokens", "-1"])
    assert len(calls) == 2
