"""On-policy distillation: which steps sample, what a sampled batch is, the loss on it, and the stage end to end."""

from __future__ import annotations

import json

import pytest
import torch

import slimlm
from slimlm.errors import SlimlmError
from slimlm.losses import IGNORE_INDEX
from slimlm.losses.kd import distill_loss
from slimlm.losses.teachers import OnlineTeacher, PolicyTeacher
from slimlm.settings import DistillSettings
from slimlm.sources import load_model
from slimlm.training.on_policy import OnPolicy
from slimlm.training.signal import Signal
from slimlm.training.terms import OutputTerm, Step
from test_errors import assert_one_line_error, run_cli

FAST = dict(
    block_size=32,
    batch_size=2,
    learning_rate=3e-3,
    precision="fp32",
    logging_steps=1,
    calibration_blocks=2,
    eval_tokens=256,
    eval_window=32,
)


@pytest.mark.parametrize("share", [0.0, 0.25, 0.5, 1.0, 0.3])
def test_due_marks_exactly_the_share_spread_evenly(share):
    policy = OnPolicy(share, 4)
    due = [policy.due(k) for k in range(100)]
    assert sum(due) == round(100 * share)
    if share == 0.5:
        assert due[:4] == [False, True, False, True]
    assert due == [OnPolicy(share, 4).due(k) for k in range(100)]  # no state, no draw: a resume agrees


def _blocks(tokenizer_vocab: int, batch=2, length=16, seed=0):
    ids = torch.randint(0, tokenizer_vocab, (batch, length), generator=torch.Generator().manual_seed(seed))
    labels = torch.cat([ids[:, 1:], torch.full((batch, 1), IGNORE_INDEX)], dim=1)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "shift_labels": labels}


def test_a_sampled_batch_keeps_the_prompt_and_labels_the_sampled_tokens(tiny_teacher):
    model, _, _ = load_model(tiny_teacher)
    inputs = _blocks(model.config.vocab_size)
    policy = OnPolicy(1.0, 6, seed=3)
    batch = policy.batch(model, inputs, step=0, precision=None)
    ids, labels, rows = batch["input_ids"], batch["shift_labels"], batch["policy_rows"]
    assert ids.shape == inputs["input_ids"].shape and torch.equal(ids[:, :10], inputs["input_ids"][:, :10])
    # row t predicts token t + 1: the last 6 tokens are the student's, predicted by rows 9..14
    assert rows.sum() == 2 * 6 and rows[:, 9:15].all() and not rows[:, :9].any() and not rows[:, 15].any()
    assert torch.equal(labels[:, 9:15], ids[:, 10:16]) and torch.equal(labels[:, :9], inputs["shift_labels"][:, :9])
    assert labels.ne(IGNORE_INDEX).sum() == inputs["shift_labels"].ne(IGNORE_INDEX).sum()  # the token count holds
    # the recorded log-probabilities are the student's at the sampled tokens (temperature 1)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits.float(), -1)
    expected = logp[:, 9:15].gather(-1, ids[:, 10:16, None]).squeeze(-1)
    torch.testing.assert_close(batch["sample_logprobs"][:, 9:15], expected, atol=1e-4, rtol=0)
    again = OnPolicy(1.0, 6, seed=3).batch(model, inputs, step=0, precision=None)
    other = OnPolicy(1.0, 6, seed=3).batch(model, inputs, step=1, precision=None)
    assert torch.equal(again["input_ids"], ids) and not torch.equal(other["input_ids"], ids)
    assert policy.rollouts == 1 and policy.tokens == 12 and policy.record()["tokens_sampled"] == 12


def test_reuse_trains_a_rollout_again_before_sampling_anew(tiny_teacher):
    model, _, _ = load_model(tiny_teacher)
    policy = OnPolicy(1.0, 4, reuse=2)
    first = policy.batch(model, _blocks(model.config.vocab_size, seed=0), step=0, precision=None)
    second = policy.batch(model, _blocks(model.config.vocab_size, seed=1), step=1, precision=None)
    third = policy.batch(model, _blocks(model.config.vocab_size, seed=2), step=2, precision=None)
    assert second is first and policy.reused == 1 and policy.rollouts == 2
    assert policy.reused_tokens == 2 * 16 and policy.record()["reused_tokens"] == 32
    assert not torch.equal(third["input_ids"], first["input_ids"])


@pytest.mark.parametrize("divergence", ["forward", "reverse", "jsd", "sampled-reverse"])
def test_the_sampled_rows_get_the_divergence_alone(divergence):
    """The output term on an on-policy step: alpha*CE + (1-alpha)*KD on the prompt's rows, (1-alpha)*KD' on the
    sampled rows, both over the step's tokens; checked against the kernel called on each row set by hand."""
    torch.manual_seed(0)
    n, d, v = 12, 8, 20
    hidden = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    head = torch.randn(v, d, dtype=torch.float64)
    t_hidden, t_head = torch.randn(n, d, dtype=torch.float64), torch.randn(v, d, dtype=torch.float64)
    labels = torch.randint(0, v, (n,))
    policy = torch.zeros(n, dtype=torch.bool)
    policy[6:11] = True
    logq = torch.randn(n, dtype=torch.float64).clamp(max=-0.1)

    student = torch.nn.Module()
    student.get_output_embeddings = lambda: type("H", (), {"weight": head})()
    out = type("O", (), {"hidden_states": [hidden.view(1, n, d)]})()
    signal = Signal("online", OnlineTeacher(t_hidden, t_head))
    term = OutputTerm(2.0, 0.3, "forward", 5, policy_divergence=divergence, jsd_beta=0.5)
    loss, parts = term(Step(student, out, signal, labels, n, policy, logq))
    data_labels = labels.masked_fill(policy, IGNORE_INDEX)
    sampled = labels.masked_fill(~policy, IGNORE_INDEX)
    ref_data, _ = distill_loss(
        hidden, head, data_labels, teacher_hidden=t_hidden, teacher_head=t_head, temperature=2.0, alpha=0.3, num_items=n
    )
    teacher = OnlineTeacher(t_hidden, t_head)
    if divergence == "sampled-reverse":
        teacher = PolicyTeacher(t_hidden, t_head, sampled.clamp(min=0), logq)
    ref_policy, _ = distill_loss(
        hidden, head, sampled, teacher=teacher, temperature=2.0, alpha=0.0, kl=divergence, num_items=n
    )
    torch.testing.assert_close(loss, ref_data + 0.7 * ref_policy)
    assert set(parts) >= {"ce", "kd", "kd_policy", "nll_policy"}
    loss.backward()
    assert hidden.grad is not None and hidden.grad[6:11].abs().sum() > 0


def test_on_policy_zero_is_the_off_policy_run(tiny_teacher, text_dir):
    base = dict(teacher=str(tiny_teacher), data=str(text_dir), keep_layers="0,3", max_steps=2, **FAST)
    slimlm.distill(**base, out="off")
    slimlm.distill(**base, on_policy=0.0, out="zero")
    from safetensors.torch import load_file

    a, b = load_file("off/model.safetensors"), load_file("zero/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert "on_policy" not in json.loads(open("zero/slimlm.json").read())["training"]


def test_distill_on_policy_end_to_end(tiny_teacher, text_dir, capsys):
    slimlm.distill(
        teacher=str(tiny_teacher),
        data=str(text_dir),
        keep_layers="0,3",
        max_steps=4,
        on_policy=0.5,
        continuation_tokens=8,
        policy_divergence="jsd",
        jsd_beta=0.9,
        out="s",
        **FAST,
    )
    record = json.loads(open("s/slimlm.json").read())
    facts = record["training"]["on_policy"]
    assert facts["rollouts"] == 2 and facts["tokens_sampled"] == 2 * 2 * 8 and facts["sampling_s"] > 0
    assert record["settings"]["on_policy"] == 0.5 and record["settings"]["jsd_beta"] == 0.9
    logged = [entry for entry in record["training"]["log"] if "kd_policy" in entry]
    assert len(logged) == 2 and all(0 < entry["sampling_share"] < 1 for entry in logged)
    assert "data_tokens" not in record["training"]  # fresh samples on every due step: every data block trained


def test_an_interrupted_on_policy_run_resumes_to_the_same_weights_and_counts(tiny_teacher, text_dir):
    """The checkpoint keeps the sampler's counters and the stored rollout a reuse step trains on again."""
    common = dict(
        teacher=str(tiny_teacher),
        data=str(text_dir),
        keep_layers="0,3",
        max_steps=6,
        save_steps=3,
        on_policy=1.0,
        rollout_reuse=2,
        continuation_tokens=8,
        **FAST,
    )
    straight = slimlm.distill(out="straight", **common)
    stage = slimlm.distill(out="interrupted", stop_after=3, **common)
    assert (stage / "checkpoints" / "checkpoint-3" / "on-policy-rollout-0.safetensors").is_file()
    resumed = slimlm.distill(out="interrupted", resume=True, **common)
    from safetensors.torch import load_file

    a, b = load_file(f"{straight}/model.safetensors"), load_file(f"{resumed}/model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    facts = [json.loads(open(f"{run}/slimlm.json").read())["training"]["on_policy"] for run in (straight, resumed)]
    for key in ("rollouts", "reused_batches", "reused_tokens", "tokens_sampled"):
        assert facts[0][key] == facts[1][key], key
    assert facts[1]["rollouts"] == 3 and facts[1]["reused_batches"] == 3


def test_reused_rollouts_are_counted_apart_from_the_data_trained(tiny_teacher, text_dir):
    slimlm.distill(
        teacher=str(tiny_teacher),
        data=str(text_dir),
        keep_layers="0,3",
        max_steps=4,
        on_policy=1.0,
        rollout_reuse=2,
        continuation_tokens=8,
        out="s",
        **FAST,
    )
    training = json.loads(open("s/slimlm.json").read())["training"]
    block = FAST["batch_size"] * FAST["block_size"]
    assert training["on_policy"]["rollouts"] == 2 and training["on_policy"]["reused_tokens"] == 2 * block
    assert training["tokens"] == 4 * block and training["data_tokens"] == 2 * block


@pytest.mark.parametrize("batch_size,grad_accum", [(2, 1), (1, 2)])
def test_policy_parts_are_averaged_over_the_due_steps_only(tiny_teacher, text_dir, batch_size, grad_accum):
    """A log covering two steps, one of them on-policy, shows that step's policy parts, not half of them (with
    gradient accumulation too: each of the step's micro-batches carries them)."""
    base = dict(teacher=str(tiny_teacher), data=str(text_dir), keep_layers="0,3", max_steps=4, on_policy=0.5)
    fast = {k: v for k, v in FAST.items() if k != "logging_steps"} | {
        "batch_size": batch_size,
        "grad_accum": grad_accum,
    }
    slimlm.distill(**base, continuation_tokens=8, logging_steps=1, out="each", **fast)
    slimlm.distill(**base, continuation_tokens=8, logging_steps=2, out="pairs", **fast)

    def policy_logs(folder):
        log = json.loads(open(f"{folder}/slimlm.json").read())["training"]["log"]
        return {entry["step"]: entry["nll_policy"] for entry in log if "nll_policy" in entry}

    each, pairs = policy_logs("each"), policy_logs("pairs")
    assert sorted(each) == [2, 4] == sorted(pairs) and all(nll > 1 for nll in each.values())
    assert pairs == pytest.approx(each, abs=2e-4)


@pytest.mark.parametrize(
    "values,words",
    [
        ({"on_policy": 1.5}, ["--on-policy", "[0, 1]"]),
        ({"on_policy": 0.5, "continuation_tokens": 32}, ["--continuation-tokens 32", "no prompt"]),
        ({"on_policy": 0.5, "teacher_cache": True}, ["--on-policy", "drop --teacher-cache"]),
        ({"on_policy": 0.5, "alpha": 1.0}, ["--alpha 1"]),
        ({"on_policy": 0.5, "sample_temperature": 0.0}, ["--sample-temperature", "> 0"]),
        ({"policy_divergence": "reverse"}, ["--policy-divergence", "--on-policy"]),
        ({"jsd_beta": 1.5}, ["--jsd-beta", "[0, 1]"]),
        ({"rollout_reuse": 0}, ["--rollout-reuse", "positive integer"]),
        ({"continuation_tokens": 0}, ["--continuation-tokens", "positive integer"]),
    ],
)
def test_bad_on_policy_settings(values, words):
    with pytest.raises(SlimlmError) as err:
        DistillSettings.from_dict({"keep_layers": "0", "block_size": 32, "continuation_tokens": 8, **values}).validate()
    for word in words:
        assert word in str(err.value)


def test_bad_on_policy_flag_cli(capsys, tiny_teacher, text_dir):
    code, err = run_cli(
        capsys,
        "distill",
        "--teacher",
        str(tiny_teacher),
        "--data",
        str(text_dir),
        "--keep-layers",
        "0",
        "--on-policy",
        "2",
        "--out",
        "x",
    )
    assert_one_line_error(code, err, "--on-policy")


def test_teacher_generated_blocks_are_written_once_and_listed(tiny_teacher, text_dir, tmp_path, monkeypatch, capsys):
    from slimlm.training.teacher_cache import list_entries, remove_entries

    monkeypatch.setenv("SLIMLM_CACHE", str(tmp_path / "cache"))
    base = dict(teacher=str(tiny_teacher), data=str(text_dir), keep_layers="0,3", max_steps=2, **FAST)
    slimlm.distill(**base, teacher_generated=True, continuation_tokens=8, out="a")
    (entry,) = list_entries()
    assert entry["mode"] == "generated" and entry["continuation_tokens"] == 8 and entry["positions"] == 4 * 8
    capsys.readouterr()
    slimlm.distill(**base, teacher_generated=True, continuation_tokens=8, out="b")
    assert "reusing the teacher's continuations" in capsys.readouterr().err and len(list_entries()) == 1
    facts = json.loads(open("b/slimlm.json").read())["training"]["teacher_generated"]
    assert facts["tokens"] == 4 * 8 and facts["continuation_tokens"] == 8
    # the student trained on other text than the plain run's: its weights differ
    slimlm.distill(**base, out="plain")
    from safetensors.torch import load_file

    a, plain = load_file("a/model.safetensors"), load_file("plain/model.safetensors")
    assert any(not torch.equal(a[k], plain[k]) for k in a)
    assert remove_entries([entry["key"]]) > 0 and list_entries() == []


def test_eval_generation_scores_what_each_model_writes(tiny_teacher, text_dir, tmp_path, capsys):
    """--generation: every model continues the same test prompts and the first model scores them; the first
    model against itself writes what it would write (ROUGE-L 1) and a cut student does not."""
    student = tmp_path / "student"
    slimlm.distill(
        teacher=str(tiny_teacher), data=str(text_dir), keep_layers="0", max_steps=1, out=str(student), **FAST
    )
    report = slimlm.evaluate(
        [str(tiny_teacher), str(student)],
        data=str(text_dir),
        window=32,
        new_tokens=2,
        repeats=1,
        generation=3,
        generation_tokens=8,
    )
    own, other = (report["results"][str(m)]["generation"] for m in (tiny_teacher, student))
    assert own["scored_by"] == str(tiny_teacher) and own["rougeL_vs_teacher"] == 1.0
    assert own["generation_protocol"]["prompts"] == 3 and own["generation_protocol"]["new_tokens"] == 8
    assert other["rougeL_vs_teacher"] < 1.0 and other["teacher_nll_greedy"] > own["teacher_nll_greedy"]
    # the same prompts' count from the general text's test split, where the student writes something else
    general = report["results"][str(student)]["general_generation"]
    assert general["prompts_from"] == "wikipedia test split" and other["prompts_from"] == "test split"
    assert general["generation_protocol"]["prompts"] == 3
    assert general["teacher_nll_greedy"] != other["teacher_nll_greedy"]
    out = capsys.readouterr().out
    assert f"generation {student}:" in out and f"generation, general text {student}:" in out
    # the teacher as --generation-scorer alone: the student's writing scored the same, the teacher not measured
    alone = slimlm.evaluate(
        [str(student)],
        data=str(text_dir),
        window=32,
        new_tokens=2,
        repeats=1,
        generation=3,
        generation_tokens=8,
        generation_scorer=str(tiny_teacher),
    )
    assert list(alone["results"]) == [str(student)]
    scored = alone["results"][str(student)]["generation"]
    assert scored["scored_by"] == str(tiny_teacher)
    for key in ("teacher_nll_greedy", "rougeL_vs_teacher", "distinct_2"):
        assert scored[key] == pytest.approx(other[key], abs=1e-6), key
    # the scorer listed as a measured model too: loaded once, its own writing scored as before
    both = slimlm.evaluate(
        [str(tiny_teacher), str(student)],
        data=str(text_dir),
        window=32,
        new_tokens=2,
        repeats=1,
        generation=3,
        generation_tokens=8,
        generation_scorer=str(tiny_teacher),
    )
    assert both["results"][str(tiny_teacher)]["generation"]["rougeL_vs_teacher"] == 1.0


def test_a_generation_scorer_with_another_tokenizer_is_refused_before_measuring(
    tiny_teacher, metaspace_tokenizer, text_dir, tmp_path, capsys
):
    from conftest import save_tiny_model

    other = save_tiny_model(tmp_path / "other", metaspace_tokenizer)
    flags = ["--data", text_dir, "--generation", 3, "--generation-scorer", other]
    code, err = run_cli(capsys, "eval", tiny_teacher, *flags)
    assert_one_line_error(code, err, "uses another tokenizer than --generation-scorer", "separate `slimlm eval`")
    assert not any("perplexity" in line for line in err[:-1])  # refused before the model was measured


@pytest.mark.parametrize(
    "values,words",
    [
        ({"generation": -1}, ["--generation", ">= 0"]),
        ({"generation_tokens": 0}, ["--generation-tokens", "positive integer"]),
        ({"dtype": "fp16"}, ["--dtype", "auto, fp32, bf16"]),
        ({"generation_scorer": "smollm2-135m"}, ["--generation-scorer", "add --generation N"]),
        ({"generation": 4, "runtime": "llama.cpp"}, ["--generation", "transformers", "--runtime llama.cpp"]),
    ],
)
def test_bad_eval_generation_and_dtype_settings(values, words):
    from slimlm.settings import EvalSettings

    with pytest.raises(SlimlmError) as err:
        EvalSettings.from_dict({"models": ["m"], **values}).validate()
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize("value,words", [("-1", ["--generation", ">= 0"]), ("x", ["'x' is not an integer"])])
def test_bad_generation_prompts_values_are_one_line_errors(value, words):
    """--generation-prompts is another spelling of --generation: its bad values get the same one-line errors."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "slimlm", "eval", "m", "--generation-prompts", value], capture_output=True, text=True
    )
    assert done.returncode != 0 and "Traceback" not in done.stderr
    for word in words:
        assert word in done.stderr
