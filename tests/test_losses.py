"""Numerical parity tests for slimlm.losses (float64 references in tests/reference_losses.py; a few seconds)."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from reference_losses import distill_loss_checkpointed, kd_reference, naive_distill_loss
from slimlm.errors import SlimlmError
from slimlm.losses.attention import attention_loss
from slimlm.losses.feature import feature_loss, make_projection
from slimlm.losses.kd import distill_loss
from slimlm.settings import parse_layer_map

N, D, V = 64, 16, 97
F64 = torch.float64


def setup(seed=0, n=N, d=D, vs=V, vt=V, ignored=True):
    """Student/teacher hidden states and heads (float64, leaves) and labels with some ignored positions."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g, dtype=F64).requires_grad_()
    w = (torch.randn(vs, d, generator=g, dtype=F64) * 0.7).requires_grad_()
    th = torch.randn(n, d, generator=g, dtype=F64)
    tw = torch.randn(vt, d, generator=g, dtype=F64) * 0.7
    labels = torch.randint(vs, (n,), generator=g)
    if ignored:
        labels[::5] = -100
        labels[-3:] = -100
    return h, w, th, tw, labels


def grads(loss, *xs):
    return torch.autograd.grad(loss, xs)


def close(a, b, tol=1e-10):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


# ------------------------------------------------------------------------------------------------- logit KD


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0, 5.0, 10.0])
def test_kd_term_matches_hand_written_kl(tau):
    h, w, th, tw, labels = setup()
    loss, parts = distill_loss(
        h, w, labels, teacher_hidden=th, teacher_head=tw, temperature=tau, alpha=0.0, chunk_size=16
    )
    ref = kd_reference(h @ w.T, th @ tw.T, labels, tau, 0.0)
    close(loss, ref)
    close(parts["kd"], ref)
    for got, want in zip(grads(loss, h, w), grads(ref, h, w)):
        close(got, want)


def test_alpha_one_is_cross_entropy_and_mixture_is_the_combination():
    h, w, th, tw, labels = setup()
    ce_ref = F.cross_entropy(h @ w.T, labels, ignore_index=-100)
    loss, parts = distill_loss(h, w, labels, teacher_hidden=th, teacher_head=tw, alpha=1.0)
    close(loss, ce_ref)
    close(parts["ce"], ce_ref)
    loss_ce_only, _ = distill_loss(h, w, labels, alpha=1.0)  # no teacher at all
    close(loss_ce_only, ce_ref)
    for got, want in zip(grads(loss_ce_only, h, w), grads(ce_ref, h, w)):
        close(got, want)
    loss, parts = distill_loss(h, w, labels, teacher_hidden=th, teacher_head=tw, temperature=2.0, alpha=0.3)
    ref = kd_reference(h @ w.T, th @ tw.T, labels, 2.0, 0.3)
    close(loss, ref)
    close(loss, 0.3 * parts["ce"] + 0.7 * parts["kd"])
    for got, want in zip(grads(loss, h, w), grads(ref, h, w)):
        close(got, want)


def test_naive_reference_matches_hand_written():
    h, w, th, tw, labels = setup()
    s, t = h @ w.T, th @ tw.T
    close(naive_distill_loss(s, t, labels, 2.0, 0.4), kd_reference(s, t, labels, 2.0, 0.4))


def topk(th, tw, k):
    values, indices = (th @ tw.T).topk(k, dim=-1)
    return values.float(), indices.int()  # as a cache stores them


@pytest.mark.parametrize("teacher", ["online", "topk"])
@pytest.mark.parametrize("chunk", [7, 16])
def test_chunked_equals_unchunked(teacher, chunk):
    h, w, th, tw, labels = setup()
    kw = (
        dict(teacher_hidden=th, teacher_head=tw)
        if teacher == "online"
        else dict(zip(("teacher_topk_values", "teacher_topk_indices"), topk(th, tw, 10)))
    )
    full, full_parts = distill_loss(h, w, labels, **kw, temperature=2.0, alpha=0.5, chunk_size=10 * N)
    part, part_parts = distill_loss(h, w, labels, **kw, temperature=2.0, alpha=0.5, chunk_size=chunk)
    close(part, full)
    close(part_parts["kd"], full_parts["kd"])
    for got, want in zip(grads(part, h, w), grads(full, h, w)):
        close(got, want)


@pytest.mark.parametrize("teacher", ["online", "topk"])
def test_splitting_the_batch_does_not_change_loss_or_gradients(teacher):
    h, w, th, tw, labels = setup()
    total = int((labels != -100).sum())

    def kd(sl, num_items=None):
        kw = (
            dict(teacher_hidden=th[sl], teacher_head=tw)
            if teacher == "online"
            else dict(zip(("teacher_topk_values", "teacher_topk_indices"), topk(th[sl], tw, 10)))
        )
        return distill_loss(h[sl], w, labels[sl], **kw, temperature=2.0, alpha=0.5, chunk_size=8, num_items=num_items)[
            0
        ]

    whole = kd(slice(None))
    halves = kd(slice(0, 23), total) + kd(slice(23, None), torch.tensor(total))  # int or tensor count
    close(halves, whole)
    for got, want in zip(grads(halves, h, w), grads(whole, h, w)):
        close(got, want)


def test_topk_with_k_equal_vocab_is_the_full_kl():
    h, w, th, tw, labels = setup()
    values, indices = (th @ tw.T).topk(V, dim=-1)
    online, _ = distill_loss(h, w, labels, teacher_hidden=th, teacher_head=tw, temperature=2.0, alpha=0.0)
    cached, _ = distill_loss(
        h, w, labels, teacher_topk_values=values, teacher_topk_indices=indices, temperature=2.0, alpha=0.0, chunk_size=9
    )
    close(cached, online)
    for got, want in zip(grads(cached, h, w), grads(online, h, w)):
        close(got, want)


def test_topk_is_kl_over_the_renormalised_support():
    h, w, th, tw, labels = setup()
    values, indices = (th @ tw.T).topk(8, dim=-1)
    tau = 2.0
    loss, _ = distill_loss(
        h,
        w,
        labels,
        teacher_topk_values=values,
        teacher_topk_indices=indices,
        temperature=tau,
        alpha=0.0,
        chunk_size=16,
    )
    lt = (values / tau).log_softmax(-1)
    ls = ((h @ w.T) / tau).log_softmax(-1).gather(1, indices)
    valid = labels != -100
    ref = tau**2 * ((lt.exp() * (lt - ls)).sum(-1) * valid).sum() / valid.sum()
    close(loss, ref)
    for got, want in zip(grads(loss, h, w), grads(ref, h, w)):
        close(got, want)


@pytest.mark.parametrize("kl", ["forward", "reverse", "jsd"])
@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("chunk", [7, 64])
def test_every_divergence_tau_alpha_and_chunk_matches_the_reference(kl, tau, alpha, chunk):
    """The fused kernel (one small function per divergence) against the formula spelled out in float64."""
    h, w, th, tw, labels = setup()
    loss, parts = distill_loss(
        h, w, labels, teacher_hidden=th, teacher_head=tw, temperature=tau, alpha=alpha, kl=kl, chunk_size=chunk
    )
    ref = kd_reference(h @ w.T, th @ tw.T, labels, tau, alpha, kl)
    close(loss, ref)
    close(parts["kd"], kd_reference(h @ w.T, th @ tw.T, labels, tau, 0.0, kl))
    close(parts["ce"], kd_reference(h @ w.T, th @ tw.T, labels, tau, 1.0, kl))
    for got, want in zip(grads(loss, h, w), grads(ref, h, w)):
        close(got, want)


@pytest.mark.parametrize("kl", ["reverse", "jsd"])
@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_reverse_and_jsd_match_references(kl, tau):
    h, w, th, tw, labels = setup()
    loss, _ = distill_loss(
        h, w, labels, teacher_hidden=th, teacher_head=tw, temperature=tau, alpha=0.2, kl=kl, chunk_size=16
    )
    ref = kd_reference(h @ w.T, th @ tw.T, labels, tau, 0.2, kl)
    close(loss, ref)
    for got, want in zip(grads(loss, h, w), grads(ref, h, w)):
        close(got, want)


def test_jsd_is_symmetric():
    h, w, th, tw, labels = setup()
    a, _ = distill_loss(h, w, labels, teacher_hidden=th, teacher_head=tw, alpha=0.0, kl="jsd")
    b, _ = distill_loss(th, tw, labels, teacher_hidden=h.detach(), teacher_head=w.detach(), alpha=0.0, kl="jsd")
    close(a, b)


@pytest.mark.parametrize("kl", ["forward", "reverse", "jsd"])
@pytest.mark.parametrize("tau", [0.5, 1.0, 3.0])
def test_every_divergence_is_zero_when_student_equals_teacher(kl, tau):
    h, w, _, _, labels = setup()
    loss, _ = distill_loss(
        h,
        w,
        labels,
        teacher_hidden=h.detach(),
        teacher_head=w.detach(),
        temperature=tau,
        alpha=0.0,
        kl=kl,
        chunk_size=16,
    )
    close(loss, torch.zeros((), dtype=F64), tol=1e-12)
    for g in grads(loss, h, w):
        close(g, torch.zeros_like(g), tol=1e-12)


def test_padded_vocabularies_compare_the_shared_rows():
    h, w, th, tw, labels = setup(vs=101, vt=97)
    loss, _ = distill_loss(h, w, labels, teacher_hidden=th, teacher_head=tw, temperature=2.0, alpha=0.5)
    ref = kd_reference(h @ w.T, th @ tw.T, labels, 2.0, 0.5)  # CE on 101 logits, KL on the first 97
    close(loss, ref)
    for got, want in zip(grads(loss, h, w), grads(ref, h, w)):
        close(got, want)
    h, w, th, tw, labels = setup(vs=97, vt=101)
    close(
        distill_loss(h, w, labels, teacher_hidden=th, teacher_head=tw)[0],
        kd_reference(h @ w.T, th @ tw.T, labels, 2.0, 0.5),
    )


@pytest.mark.parametrize("kw", [dict(kl="forward"), dict(kl="jsd"), dict(topk=10)])
def test_checkpointed_variant_agrees(kw):
    h, w, th, tw, labels = setup()
    teacher = (
        dict(teacher_hidden=th, teacher_head=tw)
        if "topk" not in kw
        else dict(zip(("teacher_topk_values", "teacher_topk_indices"), topk(th, tw, kw["topk"])))
    )
    kl = kw.get("kl", "forward")
    a, pa = distill_loss(h, w, labels, **teacher, kl=kl, chunk_size=16)
    b, pb = distill_loss_checkpointed(h, w, labels, **teacher, kl=kl, chunk_size=16)
    close(a, b)
    close(pa["ce"], pb["ce"])
    close(pa["kd"], pb["kd"])
    for got, want in zip(grads(a, h, w), grads(b, h, w)):
        close(got, want)


def test_bf16_autocast_and_bf16_hidden_states_track_fp32():
    h, w, th, tw, labels = setup()
    h32, w32 = h.detach().float().requires_grad_(), w.detach().float().requires_grad_()
    ref, _ = distill_loss(h32, w32, labels, teacher_hidden=th.float(), teacher_head=tw.float(), chunk_size=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp, _ = distill_loss(h32, w32, labels, teacher_hidden=th.float(), teacher_head=tw.float(), chunk_size=16)
    assert amp.dtype == torch.float32  # the loss is accumulated in float32
    gh, gw = grads(amp, h32, w32)
    assert gh.dtype == gw.dtype == torch.float32
    torch.testing.assert_close(amp, ref, rtol=0.03, atol=0.03)
    # bf16 hidden states with an fp32 head, no autocast (a bf16 teacher's cached states): upcast, no error
    hb = h.detach().bfloat16().requires_grad_()
    loss, _ = distill_loss(hb, w32, labels, teacher_hidden=th.bfloat16(), teacher_head=tw.float())
    (g,) = grads(loss, hb)
    assert g.dtype == torch.bfloat16 and torch.isfinite(loss)


def test_no_grad_and_frozen_head():
    h, w, th, tw, labels = setup()
    ref, _ = distill_loss(h, w, labels, teacher_hidden=th, teacher_head=tw)
    with torch.no_grad():
        value, _ = distill_loss(h, w, labels, teacher_hidden=th, teacher_head=tw)
    close(value, ref.detach())
    loss, _ = distill_loss(h, w.detach(), labels, teacher_hidden=th, teacher_head=tw)  # frozen lm_head (LoRA)
    close(grads(loss, h)[0], grads(ref, h)[0])


def test_all_positions_ignored_gives_zero():
    h, w, th, tw, _ = setup()
    labels = torch.full((N,), -100)
    loss, parts = distill_loss(h, w, labels, teacher_hidden=th, teacher_head=tw)
    assert float(loss.detach()) == 0.0 and float(parts["kd"]) == 0.0
    close(grads(loss, h)[0], torch.zeros_like(h))


class MaxNumel(TorchDispatchMode):
    """Records the largest tensor any aten op creates, forward and backward."""

    def __init__(self):
        super().__init__()
        self.max = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.max = max(self.max, t.numel())
        return out


def test_full_logits_are_never_saved_or_created():
    n, d, v, chunk = 256, 8, 97, 32
    h, w, th, tw, labels = setup(n=n, d=d)
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    values, indices = topk(th, tw, 10)
    runs = [(distill_loss, dict(kl=kl, teacher_hidden=th, teacher_head=tw)) for kl in ("forward", "reverse", "jsd")]
    runs += [
        (distill_loss, dict(teacher_topk_values=values, teacher_topk_indices=indices)),
        (distill_loss_checkpointed, dict(teacher_hidden=th, teacher_head=tw)),
    ]
    for fn, kw in runs:
        name = f"{fn.__name__} {kw.get('kl', 'top-k' if 'teacher_topk_values' in kw else 'forward')}"
        saved.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss, _ = fn(h, w, labels, **kw, chunk_size=chunk)
        assert max(saved) < n * v, name  # nothing of full-logits size kept for backward
        with MaxNumel() as mode:
            loss, _ = fn(h, w, labels, **kw, chunk_size=chunk)
            loss.backward()
        assert mode.max <= chunk * v, name  # no tensor bigger than one chunk's logits, ever
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        naive_distill_loss(h @ w.T, th @ tw.T, labels, 2.0, 0.5)
    assert max(saved) >= n * v  # the naive loss keeps full logits: the check can see them


def test_bad_arguments_raise_plain_value_or_type_errors_that_name_no_cli_flag():
    """Loss code is a library: it raises ValueError/TypeError (the CLI turns them into one line) and its
    messages speak of arguments, never of flags (the settings layer checks user input before this)."""
    h, w, th, tw, labels = setup()
    teacher = dict(teacher_hidden=th, teacher_head=tw)
    values, indices = topk(th, tw, 5)
    cases = [
        (ValueError, dict(**teacher, temperature=0)),
        (ValueError, dict(**teacher, temperature=-1.0)),
        (ValueError, dict(**teacher, temperature=float("nan"))),
        (ValueError, dict(**teacher, alpha=-0.1)),
        (ValueError, dict(**teacher, alpha=1.5)),
        (ValueError, dict(**teacher, chunk_size=0)),
        (ValueError, dict(**teacher, kl="backward")),
        (ValueError, dict(**teacher, num_items=0)),
        (TypeError, dict(alpha=0.5)),  # no teacher
        (TypeError, dict(teacher_hidden=th)),  # half an online teacher
        (TypeError, dict(**teacher, teacher_topk_values=values, teacher_topk_indices=indices)),
        (ValueError, dict(teacher_topk_values=values, teacher_topk_indices=indices + V)),
    ]
    cases += [
        (ValueError, dict(teacher_topk_values=values, teacher_topk_indices=indices, kl=kl)) for kl in ("reverse", "jsd")
    ]
    for error, kwargs in cases:
        with pytest.raises(error) as caught:
            distill_loss(h, w, labels, **kwargs)
        assert "--" not in str(caught.value) and not isinstance(caught.value, SlimlmError), kwargs
    with pytest.raises(ValueError, match="top-k"):
        distill_loss(h, w, labels, teacher_topk_values=values, teacher_topk_indices=indices, kl="jsd")
    with pytest.raises(ValueError):
        distill_loss(h[:10], w, labels, **teacher)
    with pytest.raises(ValueError):
        distill_loss(h.view(4, 16, D), w, labels, **teacher)
    with pytest.raises(ValueError, match="at least one"):
        feature_loss([], [])
    with pytest.raises(ValueError, match="attention maps are missing"):
        attention_loss([None], [None])


# ------------------------------------------------------------------------------------------- feature, attention


def test_feature_loss_zero_for_equal_states_positive_otherwise():
    g = torch.Generator().manual_seed(3)
    states = [torch.randn(2, 8, 12, generator=g) for _ in range(2)]
    assert float(feature_loss(states, [s.clone() for s in states])) == 0.0
    other = [s + 0.5 * torch.randn(s.shape, generator=g) for s in states]
    loss = feature_loss(states, other)
    ref = sum(((a - b) ** 2).mean(-1) for a, b in zip(states, other)).mean()
    close(loss, ref, tol=1e-6)


def test_feature_loss_standardises_masks_and_splits():
    g = torch.Generator().manual_seed(4)
    t, s = torch.randn(20, 6, generator=g, dtype=F64), torch.randn(20, 6, generator=g, dtype=F64)
    std = torch.rand(6, generator=g, dtype=F64) + 0.5
    mask = torch.rand(20, generator=g) > 0.3
    loss = feature_loss([t], [s], teacher_std=[std], mask=mask)
    ref = (((t - s) / std) ** 2).mean(-1)[mask].mean()
    close(loss, ref)
    total = int(mask.sum())
    halves = feature_loss([t[:7]], [s[:7]], teacher_std=[std], mask=mask[:7], num_items=total) + feature_loss(
        [t[7:]], [s[7:]], teacher_std=[std], mask=mask[7:], num_items=total
    )
    close(halves, loss)


def test_projection_identity_init_and_gradient_flow():
    assert make_projection(16, 16) is None
    proj = make_projection(8, 12)
    assert isinstance(proj, torch.nn.Linear) and proj.bias is None
    x = torch.randn(5, 8)
    close(proj(x)[:, :8], x, tol=0)  # truncated identity: student dims copied, the rest start at 0
    teacher = torch.randn(5, 12)
    student = torch.randn(5, 8, requires_grad=True)
    loss = feature_loss([teacher], [student], projections=[proj])
    loss.backward()
    assert float(loss.detach()) > 0 and proj.weight.grad.abs().sum() > 0 and student.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="make_projection"):
        feature_loss([teacher], [student])


def causal_attention(b, h, t, seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(b, h, t, t, generator=g, dtype=F64)
    scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    return scores.softmax(-1)


def test_attention_loss_zero_for_equal_maps_and_kl_otherwise():
    a = causal_attention(2, 4, 6, 0)
    assert float(attention_loss([a], [a.clone()])) == pytest.approx(0.0, abs=1e-12)
    b = causal_attention(2, 4, 6, 1)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False
    loss = attention_loss([a], [b], mask=mask)
    kl = torch.where(a > 0, a * (a / b).log(), torch.zeros_like(a)).sum(-1).mean(1)  # (B, T)
    close(loss, kl[mask].mean())
    assert float(loss) > 0
    # differing head counts: compared after averaging over heads
    c = causal_attention(2, 2, 6, 2)
    am, cm = a.mean(1), c.mean(1)
    ref = torch.where(am > 0, am * (am / cm).log(), torch.zeros_like(am)).sum(-1).mean()
    close(attention_loss(a, c), ref)


# ------------------------------------------------------------------------------------------------- layer maps


def test_parse_layer_map():
    assert parse_layer_map("6:3,12:6", 30, 15) == [(6, 3), (12, 6)]
    assert parse_layer_map(" 0:0 , 30:15 ", 30, 15) == [(0, 0), (30, 15)]
    assert parse_layer_map("", 30, 15) == [] and parse_layer_map(None, 30, 15) == []
    for bad in ("31:3", "6:16", "-1:2", "6", "6:3:1", "a:b", "6:3,", "6;3"):
        with pytest.raises(SlimlmError):
            parse_layer_map(bad, 30, 15)
    with pytest.raises(SlimlmError, match=r"0\.\.30"):
        parse_layer_map("31:3", 30, 15)


def test_second_backward_is_refused_with_a_clear_error():
    h, w, th, tw, labels = setup()
    loss, _ = distill_loss(h, w, labels, teacher_hidden=th, teacher_head=tw)
    torch.autograd.grad(loss, [h], retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward"):
        torch.autograd.grad(loss, [h])


# ------------------------------------------------------------------------------------------- the shared kernel


def test_the_fused_kernel_matches_autograd_for_any_chunk_function_and_allows_one_backward():
    """losses/fused.py once, with a chunk function of its own (softmax cross-entropy written in closed form):
    every chunk size gives autograd's loss and gradients in float64, masked rows are skipped, and a second
    backward pass is refused for every loss built on it."""
    from slimlm.losses.fused import fused_head_loss
    from slimlm.losses.uld import cross_tokenizer_kd

    torch.manual_seed(0)
    n, d, v = 23, 6, 11
    h = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    w = torch.randn(v, d, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, v, (n,))
    rows = torch.arange(0, n, 2)  # every other row

    def make_chunk(buf):
        def chunk_loss(idx, S, buf):
            target = y.index_select(0, idx)
            lse = S.logsumexp(1, keepdim=True)
            loss = (lse.squeeze(1) - S.gather(1, target.unsqueeze(1)).squeeze(1)).sum()
            G = (S - lse).exp().scatter_add_(1, target.unsqueeze(1), -torch.ones(len(idx), 1, dtype=S.dtype))
            return (loss,), G

        return chunk_loss

    expected = torch.nn.functional.cross_entropy(h[rows] @ w.T, y[rows], reduction="sum")
    gh, gw = torch.autograd.grad(expected, (h, w))
    for chunk in (1, 5, 64):
        loss, part = fused_head_loss(h, w, rows, chunk, make_chunk, lambda s: (s, (s / n,)))
        got_h, got_w = torch.autograd.grad(loss, (h, w))
        close(loss, expected)
        close(part, expected / n)
        close(got_h, gh)
        close(got_w, gw)
        assert not got_h[1::2].any()  # rows not asked for get no gradient
    th, tw = torch.randn(n, 5, dtype=torch.float64), torch.randn(13, 5, dtype=torch.float64)
    for value in (
        fused_head_loss(h, w, rows, 4, make_chunk, lambda s: (s, (s / n,)))[0],
        cross_tokenizer_kd(h, w, th, tw, chunk=4)[0],
    ):
        value.backward(retain_graph=True)
        with pytest.raises(RuntimeError, match="one backward pass"):
            value.backward()
