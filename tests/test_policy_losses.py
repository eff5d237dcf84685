"""The on-policy divergences in the fused kernel: generalised JSD (TRL's convention, GKD eq. 1) and the sampled
reverse-KL estimate (Tinker's on-policy distillation) against float64 autograd references
(tests/reference_losses.py), the latter also by Monte Carlo: its mean gradient is the full reverse-KL gradient."""

import functools

import pytest
import torch

from reference_losses import kd_reference, sampled_reverse_kl_reference
from slimlm.losses import KL_KINDS, POLICY_DIVERGENCES
from slimlm.losses import kd as kd_module
from slimlm.losses.divergences import (
    DIVERGENCES,
    IS_WEIGHT_CLIP,
    divergence_for,
    forward_kl,
    generalized_jsd,
    jsd,
    reverse_kl,
)
from slimlm.losses.fused import ChunkBuffers
from slimlm.losses.kd import distill_loss
from slimlm.losses.teachers import OnlineTeacher, PolicyTeacher
from test_losses import MaxNumel, close, grads, setup

N, V = 64, 97
F64 = torch.float64
BETAS = (0.0, 0.1, 0.5, 0.9, 1.0)


def online(th, tw):
    return dict(teacher_hidden=th, teacher_head=tw)


# ------------------------------------------------------------------------------------------- generalised JSD


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("tau", [0.5, 2.0])
@pytest.mark.parametrize("alpha,chunk", [(0.0, 7), (0.3, 16), (0.0, 10 * N)])
def test_generalized_jsd_matches_the_reference(beta, tau, alpha, chunk):
    """Chunks of 7 and 16 split the rows; loss, parts and gradients are the TRL formula's in float64."""
    h, w, th, tw, labels = setup()
    s, t = h @ w.T, th @ tw.T
    loss, parts = distill_loss(
        h, w, labels, **online(th, tw), temperature=tau, alpha=alpha, kl="jsd", jsd_beta=beta, chunk_size=chunk
    )
    ref = kd_reference(s, t, labels, tau, alpha, "jsd", beta)
    close(loss, ref)
    close(parts["kd"], kd_reference(s, t, labels, tau, 0.0, "jsd", beta))
    for got, want in zip(grads(loss, h, w), grads(ref, h, w)):
        close(got, want)


def _chunk(fn, S, T, tau):
    """One chunk of a divergence, called as the kernel calls it: (sum of D, g) from fresh buffers."""
    m, v = S.shape
    buf = ChunkBuffers(m, v, v, F64, F64, S.device)
    buf.T.copy_(T)
    return fn(S, buf.T, tau, (S / tau).logsumexp(1, keepdim=True), buf)


@pytest.mark.parametrize("beta", [0.01, 0.1, 0.5, 0.9, 0.99])
def test_generalized_jsd_closed_form_gradient_is_autograds(beta):
    """g = p_S (u - sum p_S u), u = (1 - beta)(log p_S - log M), is dD/d(S / tau), beta = 1/2 included (which
    divergence_for sends to `jsd`; the two agree to rounding)."""
    g = torch.Generator().manual_seed(1)
    S, T, tau = torch.randn(9, 31, generator=g, dtype=F64) * 2, torch.randn(9, 31, generator=g, dtype=F64) * 3, 1.5
    z = (S / tau).requires_grad_()
    ls, lt = z.log_softmax(1), (T / tau).log_softmax(1)
    m = beta * lt.exp() + (1 - beta) * ls.exp()
    d = beta * (lt.exp() * (lt - m.log())).sum() + (1 - beta) * (ls.exp() * (ls - m.log())).sum()
    (want_g,) = torch.autograd.grad(d, z)
    kd, got_g = _chunk(lambda *a: generalized_jsd(*a, beta), S, T, tau)
    close(kd, d.detach(), tol=1e-12)
    close(got_g, want_g, tol=1e-12)
    if beta == 0.5:
        kd_half, g_half = _chunk(jsd, S, T, tau)
        close(kd, kd_half, tol=1e-12)
        close(got_g, g_half, tol=1e-12)


def test_beta_half_and_the_endpoints_are_todays_divergences_bit_for_bit():
    assert divergence_for("jsd", 0.5) is jsd
    assert divergence_for("jsd", 0.0) is forward_kl and divergence_for("jsd", 1.0) is reverse_kl
    assert isinstance(divergence_for("jsd", 0.3), functools.partial)
    h, w, th, tw, labels = setup()
    for kl in KL_KINDS:  # the defaults are today's functions, and beta is read for jsd only
        assert divergence_for(kl) is DIVERGENCES[kl] and OnlineTeacher(th, tw).divergence(kl) is DIVERGENCES[kl]
        if kl != "jsd":
            assert divergence_for(kl, 0.3) is DIVERGENCES[kl]
    for beta, same in ((None, "jsd"), (0.5, "jsd"), (0.0, "forward"), (1.0, "reverse")):
        extra = {} if beta is None else dict(jsd_beta=beta)
        a, pa = distill_loss(h, w, labels, **online(th, tw), kl="jsd", alpha=0.2, chunk_size=7, **extra)
        b, pb = distill_loss(h, w, labels, **online(th, tw), kl=same, alpha=0.2, chunk_size=7)
        assert torch.equal(a, b) and torch.equal(pa["kd"], pb["kd"]), (beta, same)
        for got, want in zip(grads(a, h, w), grads(b, h, w)):
            assert torch.equal(got, want), (beta, same)


def test_generalized_jsd_swaps_beta_with_the_roles_and_is_zero_at_equality():
    """JSD_beta(p_T, p_S) = JSD_(1-beta)(p_S, p_T): M and the weights swap together."""
    h, w, th, tw, labels = setup()
    a, _ = distill_loss(h, w, labels, **online(th, tw), alpha=0.0, kl="jsd", jsd_beta=0.3)
    b, _ = distill_loss(th, tw, labels, **online(h.detach(), w.detach()), alpha=0.0, kl="jsd", jsd_beta=0.7)
    close(a, b)
    for beta in BETAS:
        loss, _ = distill_loss(
            h, w, labels, **online(h.detach(), w.detach()), alpha=0.0, kl="jsd", jsd_beta=beta, chunk_size=16
        )
        close(loss, torch.zeros((), dtype=F64), tol=1e-12)
        for g in grads(loss, h, w):
            close(g, torch.zeros_like(g), tol=1e-12)


def test_the_endpoints_are_limits_of_jsd_over_beta_not_of_jsd():
    """As in TRL: JSD_beta / beta -> KL(p_T || p_S) as beta -> 0 and JSD_beta / (1 - beta) -> KL(p_S || p_T) as
    beta -> 1, so the loss jumps in scale at 0 and 1."""
    h, w, th, tw, labels = setup()
    kd = lambda **kw: distill_loss(h, w, labels, **online(th, tw), alpha=0.0, **kw)[0].detach()
    eps = 1e-6
    torch.testing.assert_close(kd(kl="jsd", jsd_beta=eps) / eps, kd(kl="forward"), rtol=1e-4, atol=0)
    torch.testing.assert_close(kd(kl="jsd", jsd_beta=1 - eps) / eps, kd(kl="reverse"), rtol=1e-4, atol=0)


# ------------------------------------------------------------------------------------------- sampled reverse KL


def policy_setup(vs=V, vt=V, clipped=False, tau=2.0):
    """setup() with each valid label a token the student 'sampled' (below both vocabularies), and sampling
    log-probabilities near the student's own, some far enough below it that the weight is clipped."""
    h, w, th, tw, labels = setup(vs=vs, vt=vt)
    labels = torch.where(labels >= 0, labels % min(vs, vt), labels)
    g = torch.Generator().manual_seed(5)
    log_ps = ((h @ w.T)[:, : min(vs, vt)] / tau).log_softmax(1).detach()
    y = labels.clamp_min(0)[:, None]
    log_q = log_ps.gather(1, y).squeeze(1) + torch.randn(len(labels), generator=g, dtype=F64) * (2.0 if clipped else 0)
    return h, w, th, tw, labels, log_q


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("alpha", [0.0, 0.3])
@pytest.mark.parametrize("chunk", [7, 64])
@pytest.mark.parametrize("weights", ["none", "importance"])
def test_sampled_reverse_kl_matches_the_reference(tau, alpha, chunk, weights):
    h, w, th, tw, labels, log_q = policy_setup(clipped=True, tau=tau)
    log_q = None if weights == "none" else log_q
    if log_q is not None:  # some valid rows have p_S / q above the clip
        ratio = ((h @ w.T / tau).log_softmax(1).gather(1, labels.clamp_min(0)[:, None]).squeeze(1) - log_q).exp()
        assert bool((ratio[labels >= 0] > IS_WEIGHT_CLIP).any())
    teacher = PolicyTeacher(th, tw, labels, log_q)  # ignored rows hold -100: never read
    loss, parts = distill_loss(
        h, w, labels, teacher=teacher, temperature=tau, alpha=alpha, kl="sampled-reverse", chunk_size=chunk
    )
    s, t = h @ w.T, th @ tw.T
    ref = sampled_reverse_kl_reference(s, t, labels, tau, alpha, log_q)
    close(loss, ref)
    close(parts["kd"], sampled_reverse_kl_reference(s, t, labels, tau, 0.0, log_q))
    close(parts["ce"], sampled_reverse_kl_reference(s, t, labels, tau, 1.0, log_q))
    for got, want in zip(grads(loss, h, w), grads(ref, h, w)):
        close(got, want)


def test_sampled_reverse_kl_with_padded_vocabularies_and_an_equal_teacher():
    for vs, vt in ((101, 97), (97, 101)):
        h, w, th, tw, labels, _ = policy_setup(vs, vt)
        loss, _ = distill_loss(h, w, labels, teacher=PolicyTeacher(th, tw, labels), kl="sampled-reverse", chunk_size=9)
        ref = sampled_reverse_kl_reference(h @ w.T, th @ tw.T, labels, 2.0, 0.5)
        close(loss, ref)
        for got, want in zip(grads(loss, h, w), grads(ref, h, w)):
            close(got, want)
    h, w, _, _, labels, _ = policy_setup()
    same = PolicyTeacher(h.detach(), w.detach(), labels)
    loss, _ = distill_loss(h, w, labels, teacher=same, alpha=0.0, kl="sampled-reverse", chunk_size=16)
    close(loss, torch.zeros((), dtype=F64), tol=1e-12)
    for g in grads(loss, h, w):
        close(g, torch.zeros_like(g), tol=1e-12)


MC_V, POSITIONS, DRAWS = 40, 6, 4000


def _mean_policy_gradient(S, T, tau, tokens, teacher):
    """(loss, mean over each position's DRAWS rows of d loss / d logits) of the policy teacher's estimate, summed."""
    h = S.repeat_interleave(DRAWS, 0).requires_grad_()
    eye = torch.eye(MC_V, dtype=F64)
    loss, _ = distill_loss(
        h, eye, tokens, teacher=teacher, temperature=tau, alpha=0.0, kl="sampled-reverse", chunk_size=1000, num_items=1
    )
    loss.backward()
    return loss.detach(), h.grad.view(POSITIONS, DRAWS, MC_V).mean(1)


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("sampler", ["student", "hotter"])
def test_sampled_reverse_kl_gradient_is_unbiased(tau, sampler):
    """DRAWS tokens per position from the sampler (the student itself, or the student at 1.5 tau with importance
    weights, all under the clip): the mean per-draw gradient is the full reverse-KL gradient tau p_S (r - KL)
    within 5 of the estimator's own standard errors, plus three draws' worth for tokens too rare for the normal
    approximation (as tests/test_teacher_cache.py); the mean loss is KL(p_S || p_T) within 5 standard errors."""
    g = torch.Generator().manual_seed(0)
    S = torch.randn(POSITIONS, MC_V, generator=g, dtype=F64) * 2
    T = torch.randn(POSITIONS, MC_V, generator=g, dtype=F64) * 3
    log_ps, log_pt = (S / tau).log_softmax(1), (T / tau).log_softmax(1)
    z = (S / tau).requires_grad_()
    kl = (z.softmax(1) * (z.log_softmax(1) - log_pt)).sum(1)
    exact = tau * torch.autograd.grad(kl.sum(), z)[0]  # d(tau^2 KL(p_S || p_T)) / dS, by autograd
    kl = kl.detach()
    log_q = log_ps if sampler == "student" else (S / (1.5 * tau)).log_softmax(1)
    q, wc = log_q.exp(), (log_ps - log_q).exp() * (log_ps - log_pt)  # w c of each token
    assert float((log_ps - log_q).exp().max()) < IS_WEIGHT_CLIP  # no clipping: the estimate is unbiased
    # one draw y ~ q moves entry j by tau w_y c_y (onehot(y)_j - p_j): its exact variance, per entry
    one = tau * wc[:, :, None] * (torch.eye(MC_V, dtype=F64) - log_ps.exp()[:, None, :])  # (pos, y, j)
    se = (((q[:, :, None] * one**2).sum(1) - exact**2) / DRAWS).sqrt()
    ids = torch.multinomial(q, DRAWS, replacement=True, generator=g)  # (POSITIONS, DRAWS)
    tokens = ids.reshape(-1)
    eye = torch.eye(MC_V, dtype=F64)  # identity heads: hidden states are logits
    teacher = PolicyTeacher(
        T.repeat_interleave(DRAWS, 0), eye, tokens, None if sampler == "student" else log_q.gather(1, ids).reshape(-1)
    )
    loss, mean = _mean_policy_gradient(S, T, tau, tokens, teacher)
    one_draw = tau * wc.abs() / DRAWS  # what one more draw of token j moves entry j
    assert ((mean - exact).abs() <= 5 * se + 3 * one_draw).all(), float(((mean - exact).abs() / se).max())
    if sampler != "student":  # the check has power: the same draws without their importance weights fail it
        _, unweighted = _mean_policy_gradient(S, T, tau, tokens, PolicyTeacher(teacher.hidden, eye, tokens))
        assert not ((unweighted - exact).abs() <= 5 * se + 3 * one_draw).all()
    drawn = wc.gather(1, ids)  # (POSITIONS, DRAWS)
    close(loss, tau * tau * drawn.sum())
    se_kl = (((q * wc**2).sum(1) - kl**2) / DRAWS).sqrt()
    assert ((drawn.mean(1) - kl).abs() <= 5 * se_kl).all()


# ------------------------------------------------------------------------------------------- the shared kernel


def test_on_policy_losses_run_in_the_shared_kernel_without_full_logits(monkeypatch):
    """Both new divergences are chunk functions of losses/fused.py's kernel (called once per loss, with the
    teacher-logit buffer), keep nothing of full-logits size for backward, and create no tensor bigger than one
    chunk's logits, forward or backward."""
    n, d, chunk = 256, 8, 32
    h, w, th, tw, labels = setup(n=n, d=d)
    log_q = torch.randn(n, dtype=F64) - 4
    calls, real = [], kd_module.fused_head_loss

    def spy(*args):
        calls.append(args[6])  # teacher_cols
        return real(*args)

    monkeypatch.setattr(kd_module, "fused_head_loss", spy)
    runs = [dict(**online(th, tw), kl="jsd", jsd_beta=b) for b in (0.1, 0.9)]
    runs += [dict(teacher=PolicyTeacher(th, tw, labels, q), kl="sampled-reverse") for q in (None, log_q)]
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    for kw in runs:
        calls.clear(), saved.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss, _ = distill_loss(h, w, labels, **kw, chunk_size=chunk)
        assert max(saved) < n * V and calls == [V], kw["kl"]
        with MaxNumel() as mode:
            loss, _ = distill_loss(h, w, labels, **kw, chunk_size=chunk)
            loss.backward()
        assert mode.max <= chunk * V, kw["kl"]


# ------------------------------------------------------------------------------------------- names and errors


def test_policy_divergence_names_each_have_a_teacher():
    assert POLICY_DIVERGENCES == ("forward", "reverse", "jsd", "sampled-reverse")
    h, w, th, tw, labels = setup()
    for kl in POLICY_DIVERGENCES:
        teacher = PolicyTeacher(th, tw, labels) if kl == "sampled-reverse" else OnlineTeacher(th, tw)
        loss, _ = distill_loss(h, w, labels, teacher=teacher, kl=kl)
        assert torch.isfinite(loss)


def test_bad_on_policy_arguments_raise_plain_value_errors():
    h, w, th, tw, labels = setup()
    values, indices = (th @ tw.T).topk(5, dim=-1)
    cases = [dict(**online(th, tw), kl="jsd", jsd_beta=b) for b in (-0.1, 1.5, float("nan"))]
    cases += [
        dict(**online(th, tw), kl="sampled-reverse"),  # no sampled tokens
        dict(teacher_topk_values=values, teacher_topk_indices=indices, kl="sampled-reverse"),
        dict(teacher=PolicyTeacher(th, tw, labels), kl="reverse"),
        dict(teacher=PolicyTeacher(th, tw, labels[:10]), kl="sampled-reverse"),
        dict(teacher=PolicyTeacher(th, tw, labels, torch.zeros(3, dtype=F64)), kl="sampled-reverse"),
        dict(teacher=PolicyTeacher(th, tw, labels + V), kl="sampled-reverse"),
        dict(teacher=PolicyTeacher(th[:10], tw, labels), kl="sampled-reverse"),
    ]
    for kwargs in cases:
        with pytest.raises(ValueError) as caught:
            distill_loss(h, w, labels, **kwargs)
        assert "--" not in str(caught.value), kwargs
    for kl, beta in (("sampled-reverse", 0.5), ("jsd", 2.0), ("backward", 0.5)):
        with pytest.raises(ValueError):
            divergence_for(kl, beta)
