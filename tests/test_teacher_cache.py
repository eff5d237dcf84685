"""The teacher cache: its sampled mode is an unbiased estimate of the full-vocabulary KD gradient (checked by
Monte Carlo against the exact gradient, within a tolerance set by the estimator's standard error), the top-k
mode is not (the same check fails for it), and what the cache stores is what the teacher says."""

from __future__ import annotations

import json
import math

import pytest
import torch

import slimlm
from slimlm.losses.kd import distill_loss
from test_errors import run_cli

TAUS = (0.5, 1.0, 2.0, 5.0, 10.0)
V, POSITIONS, DRAWS, REPEATS = 40, 6, 31, 400


def _setup(tau: float, seed: int = 0):
    """Student logits S and teacher logits T for a few positions; the student's head is the identity, so the
    gradient with respect to the 'hidden states' is the gradient with respect to the logits."""
    g = torch.Generator().manual_seed(seed)
    S = torch.randn(POSITIONS, V, generator=g, dtype=torch.float64) * 2
    T = torch.randn(POSITIONS, V, generator=g, dtype=torch.float64) * 3
    p_t = torch.softmax(T / tau, dim=1)
    exact = tau * (torch.softmax(S / tau, dim=1) - p_t)  # d(tau^2 KL(p_T || p_S)) / dS, per position
    return S, T, p_t, exact


def _tolerance(tau, p_t):
    """5 standard errors of the mean gradient, plus three single draws' worth (tau / (DRAWS * REPEATS) each) for
    tokens so rare that a draw or two is a matter of luck, where the normal approximation does not hold."""
    n = DRAWS * REPEATS
    return 5 * tau * torch.sqrt(p_t * (1 - p_t) / n) + 3 * tau / n


def _gradient(S, labels, **teacher):
    """Per-row gradient of the KD term (alpha = 0) with respect to the student logits, rows summed not averaged."""
    h = S.clone().requires_grad_(True)
    loss, _ = distill_loss(h, torch.eye(V, dtype=S.dtype), labels, alpha=0.0, chunk_size=256, **teacher)
    loss.backward()
    return h.grad * len(S)  # distill_loss averages over the rows


@pytest.mark.parametrize("tau", TAUS)
def test_sampled_cache_gives_the_full_kd_gradient_in_expectation(tau):
    """REPEATS independent caches of DRAWS ids per position: the mean of their gradients matches the exact
    full-vocabulary gradient within 5 standard errors of that mean, for every position and vocabulary entry.
    The standard error is the estimator's own: one draw's indicator has variance p(1 - p), so the mean of
    DRAWS * REPEATS draws has tau * sqrt(p (1 - p) / (DRAWS * REPEATS)) (see _tolerance)."""
    S, T, p_t, exact = _setup(tau)
    g = torch.Generator().manual_seed(1)
    rows = S.repeat(REPEATS, 1)  # each copy of a position gets its own draws: REPEATS caches in one call
    ids = torch.multinomial(p_t.repeat(REPEATS, 1), DRAWS, replacement=True, generator=g)
    entropy = -(p_t * p_t.log()).sum(1).repeat(REPEATS)
    labels = torch.zeros(len(rows), dtype=torch.long)
    grads = _gradient(rows, labels, teacher_samples=ids, teacher_entropy=entropy, temperature=tau)
    mean = grads.view(REPEATS, POSITIONS, V).mean(0)
    assert ((mean - exact).abs() <= _tolerance(tau, p_t)).all(), float(
        ((mean - exact).abs() / _tolerance(tau, p_t)).max()
    )
    # and the loss: its estimate of tau^2 KL is unbiased too (to 5 standard errors over the repeats)
    h = rows.clone()
    per_row = []
    for r in range(REPEATS):
        sl = slice(r * POSITIONS, (r + 1) * POSITIONS)
        loss, _ = distill_loss(
            h[sl],
            torch.eye(V, dtype=S.dtype),
            labels[sl],
            alpha=0.0,
            teacher_samples=ids[sl],
            teacher_entropy=entropy[sl],
            temperature=tau,
        )
        per_row.append(float(loss))
    kl = tau**2 * (p_t * (p_t.log() - torch.log_softmax(S / tau, 1))).sum(1).mean()
    mean_loss, se_loss = sum(per_row) / REPEATS, torch.tensor(per_row).std().item() / math.sqrt(REPEATS)
    assert abs(mean_loss - float(kl)) <= 5 * se_loss + 1e-9


@pytest.mark.parametrize("tau", TAUS)
def test_top_k_renormalised_cache_fails_the_same_check(tau):
    """The top-k estimator is deterministic: its 'mean' is itself, and its bias (the teacher's tail, moved onto
    the top k) is far outside the tolerance the sampled estimator meets, at every temperature."""
    S, T, p_t, exact = _setup(tau)
    k = 8
    values, indices = T.topk(k, dim=1)
    labels = torch.zeros(POSITIONS, dtype=torch.long)
    grad = _gradient(S, labels, teacher_topk_values=values, teacher_topk_indices=indices, temperature=tau)
    assert ((grad - exact).abs() > _tolerance(tau, p_t)).any()
    assert (grad - exact).abs().max() > 0.01 * tau  # not a rounding matter: a real bias


def test_cache_stores_draws_from_the_teacher_at_the_run_temperature(tiny_teacher, tmp_path, monkeypatch):
    """uint16 ids and an fp16 entropy, 64 bytes a position; the entropy is the teacher's own at tau, and at a
    tiny temperature every draw is the teacher's argmax (so the draws come from p_T^tau, not something else)."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from slimlm.training.teacher_cache import bytes_per_position, teacher_cache

    monkeypatch.setenv("SLIMLM_CACHE", str(tmp_path / "cache"))
    teacher = AutoModelForCausalLM.from_pretrained(tiny_teacher).eval()
    blocks = torch.randint(0, teacher.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    entry = teacher_cache(teacher, tiny_teacher, blocks, temperature=2.0, hidden_layers=[], precision=None)
    stored = load_file(str(entry / "samples.safetensors"))
    assert stored["sample_ids"].dtype == torch.uint16 and stored["sample_ids"].shape == (2, 16, 31)
    assert stored["teacher_entropy"].dtype == torch.float16 and bytes_per_position("sample", 1000) == 64
    with torch.no_grad():
        logits = teacher(input_ids=blocks).logits.float()
    log_p = torch.log_softmax(logits / 2.0, dim=-1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    torch.testing.assert_close(stored["teacher_entropy"].float(), entropy, rtol=2e-3, atol=2e-3)
    meta = json.loads((entry / "meta.json").read_text())
    assert (meta["mode"], meta["temperature"], meta["draws"], meta["bytes_per_position"]) == ("sample", 2.0, 31, 64)

    cold = teacher_cache(teacher, tiny_teacher, blocks, temperature=1e-3, hidden_layers=[], precision=None)
    assert cold != entry  # one entry per temperature
    ids = load_file(str(cold / "samples.safetensors"))["sample_ids"].long()
    # where the teacher's top two logits are 0.05 apart, a draw at tau=1e-3 picks the runner-up with
    # probability below e^-50: every draw there must be the argmax. Near-ties are left out, because the cache's
    # own head matmul may round them differently from the model's forward.
    top2 = logits.topk(2, dim=-1).values
    clear = (top2[..., 0] - top2[..., 1]) > 0.05
    assert clear.sum() > clear.numel() // 2
    assert torch.equal(ids[clear], logits.argmax(-1, keepdim=True).expand_as(ids)[clear])


def test_distill_with_the_default_cache_records_its_storage_and_topk_stays_by_name(
    tiny_teacher, text_dir, capsys, tmp_path, monkeypatch
):
    monkeypatch.setenv("SLIMLM_CACHE", str(tmp_path / "cache"))
    common = dict(
        teacher=str(tiny_teacher),
        keep_layers="0,3",
        data=str(text_dir),
        max_steps=2,
        block_size=32,
        batch_size=2,
        teacher_cache=True,
        precision="fp32",
        logging_steps=1,
    )
    out = slimlm.distill(out="sampled", **common)
    training = json.loads((out / "slimlm.json").read_text())["training"]
    storage = training["teacher_cache_storage"]
    assert training["teacher_cache"] and storage["mode"] == "sample" and storage["bytes_per_position"] <= 64
    # the logged kd is a Monte Carlo estimate of KL (mean of -log q over draws, minus H(p_T)): it may dip below 0
    # near a student this close to its teacher, so check it is computed (finite, non-zero), not its sign
    kd = [row["kd"] for row in training["log"] if "kd" in row]
    assert kd and all(math.isfinite(v) for v in kd) and any(v != 0 for v in kd)
    assert "64 bytes a position" in capsys.readouterr().err
    slimlm.distill(out="again", **common)
    assert "reusing cached teacher outputs" in capsys.readouterr().err  # same blocks, same tau: one entry
    out = slimlm.distill(out="topk", cache_mode="topk", top_k=8, **common)
    storage = json.loads((out / "slimlm.json").read_text())["training"]["teacher_cache_storage"]
    assert (storage["mode"], storage["top_k"], storage["bytes_per_position"]) == ("topk", 8, 64)
    assert "--cache-draws 127" not in capsys.readouterr().err
    # at a high temperature the default draws are noisy (docs/results/cache-quality): the run says what to pass
    slimlm.distill(out="hot", temperature=10.0, **common)
    assert "pass --cache-draws 127" in capsys.readouterr().err
    slimlm.distill(out="hot-127", temperature=10.0, cache_draws=127, **common)
    assert "--cache-draws 127" not in capsys.readouterr().err


def test_cache_list_and_remove(tiny_teacher, text_dir, capsys, tmp_path, monkeypatch):
    from slimlm.cli import main
    from slimlm.training.teacher_cache import list_entries

    monkeypatch.setenv("SLIMLM_CACHE", str(tmp_path / "cache"))
    slimlm.distill(
        teacher=str(tiny_teacher),
        keep_layers="0,3",
        data=str(text_dir),
        out="d",
        max_steps=1,
        block_size=32,
        batch_size=2,
        teacher_cache=True,
        precision="fp32",
    )
    (entry,) = list_entries()
    assert entry["mode"] == "sample" and entry["bytes"] > 0
    capsys.readouterr()
    assert main(["cache", "list"]) == 0
    listing = capsys.readouterr().out
    assert entry["key"] in listing and "sample" in listing and "64 B/position" in listing
    code, err = run_cli(capsys, "cache", "remove", "no-such-key")
    assert code == 2 and "no entry" in err[-1] and "slimlm cache list" in err[-1]
    code, err = run_cli(capsys, "cache", "remove", entry["key"][:6])
    assert code == 0 and list_entries() == [] and "freed" in err[-1]


@pytest.mark.parametrize("chunk", [3, 256])
@pytest.mark.parametrize("alpha", [0.0, 0.4])
def test_sampled_kernel_equals_the_plain_formula(chunk, alpha):
    """The fused kernel's sampled KD (any chunking, with CE mixed in) against the formula written in plain torch,
    in float64: loss, parts and the gradients of the hidden states and the head."""
    g = torch.Generator().manual_seed(3)
    n_tok, d, tau = 10, 6, 2.0
    h = torch.randn(n_tok, d, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(V, d, generator=g, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(0, V, (n_tok, DRAWS), generator=g)
    entropy = torch.rand(n_tok, generator=g, dtype=torch.float64) + 1
    labels = torch.randint(0, V, (n_tok,), generator=g)
    labels[4] = -100
    loss, parts = distill_loss(
        h, w, labels, teacher_samples=ids, teacher_entropy=entropy, temperature=tau, alpha=alpha, chunk_size=chunk
    )
    loss.backward()
    got = (h.grad.clone(), w.grad.clone())
    h.grad = w.grad = None
    keep = labels.ne(-100)
    logits = h @ w.T
    ce = torch.nn.functional.cross_entropy(logits[keep], labels[keep], reduction="sum")
    log_ps = torch.log_softmax(logits / tau, dim=1).gather(1, ids)
    kd = tau**2 * (-log_ps.mean(1) - entropy)[keep].sum()
    n = keep.sum()
    want = (alpha * ce + (1 - alpha) * kd) / n
    want.backward()
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(parts["kd"], kd / n)
    torch.testing.assert_close(got[0], h.grad)
    torch.testing.assert_close(got[1], w.grad)


@pytest.mark.parametrize(
    "argv,words",
    [
        (["--cache-draws", "0"], ["--cache-draws", "positive integer"]),
    ],
)
def test_bad_cache_settings_are_one_line_errors(capsys, tiny_teacher, text_dir, argv, words):
    from test_errors import assert_one_line_error

    code, err = run_cli(
        capsys,
        "distill",
        "--teacher",
        tiny_teacher,
        "--data",
        text_dir,
        "--keep-layers",
        "0,3",
        "--teacher-cache",
        "--out",
        "out",
        *argv,
    )
    assert_one_line_error(code, err, *words)


@pytest.mark.parametrize(
    "values,word", [({"cache_mode": "everything"}, "--cache-mode"), ({"cache_draws": "many"}, "cache_draws")]
)
def test_bad_cache_settings_in_the_api_or_a_recipe(values, word):
    from slimlm.errors import SlimlmError
    from slimlm.settings import DistillSettings

    with pytest.raises(SlimlmError, match=word):
        DistillSettings.from_dict({"keep_layers": "0", "teacher_cache": True, **values}).validate()


def test_cache_list_refuses_keys(capsys):
    code, err = run_cli(capsys, "cache", "list", "abc")
    assert code == 2 and "slimlm cache remove KEY" in err[-1]
