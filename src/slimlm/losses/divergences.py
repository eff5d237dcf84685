"""The KD divergences at temperature tau (paper section 2, eq. L_KD), one small function each, as the fused
kernel (losses/kd.py) calls them on one chunk of tokens.

With p^tau = softmax(logits / tau), each function gets the chunk's fp32 student logits S (m, V_s), read only,
the teacher's side, and lse_s = log sum exp(S[:, :cols] / tau), and returns

    (sum over the chunk's rows of D(p_T^tau, p_S^tau),   g)    with   d(tau^2 D) / dS[:, :cols] = tau * g

where cols is the number of logits compared. The kernel multiplies the rows' sum by tau^2 and pushes
(1 - alpha) * tau * g through the lm_head. Work tensors come from the kernel's buffers (`buf.T`, the
teacher's logits, which a function may consume; `buf.scratch(m, cols)`), so the common forward-KL path
allocates nothing of size (m, V). Plain-torch versions of these formulas, and tests that compare the kernel
with them in float64, are in tests/reference_losses.py and tests/test_losses.py.
"""

from __future__ import annotations

import functools
import math

import torch


def teacher_softmax(T: torch.Tensor, tau: float, out: torch.Tensor):
    """(p_T^tau in `out`, log sum exp(T / tau) per row) from raw teacher logits T (m, v)."""
    mt = T.amax(1, keepdim=True)
    P = torch.sub(T, mt, out=out).mul_(1 / tau).exp_()
    zt = P.sum(1, keepdim=True)
    return P.div_(zt), mt / tau + zt.log()


def tempered_lse(X: torch.Tensor, tau: float, out: torch.Tensor):
    """log sum exp(X / tau) per row of X (m, v), with `out` (m, v) as scratch; X is left as it was."""
    mx = X.amax(1, keepdim=True)
    z = torch.sub(X, mx, out=out).mul_(1 / tau).exp_().sum(1, keepdim=True)
    return mx / tau + z.log()


def forward_kl(S, T, tau, lse_s, buf):
    """KL(p_T || p_S), the paper's L_KD / tau^2;  g = p_S^tau - p_T^tau.  Consumes T (m, v)."""
    m, v = T.shape
    P, lse_t = teacher_softmax(T, tau, buf.scratch(m, v))
    # KL = sum p_T (T - S) / tau - lse_t + lse_s   (both log-softmaxes written out; sum p_T = 1)
    dot = T.sub_(S[:, :v]).mul_(P).sum(1, keepdim=True)
    kd = (dot / tau - lse_t + lse_s).sum()
    g = torch.div(S[:, :v], tau, out=T).sub_(lse_s).exp_().sub_(P)  # in T's storage
    return kd, g


def reverse_kl(S, T, tau, lse_s, buf):
    """KL(p_S || p_T);  with r = log p_S - log p_T:  g = p_S * (r - KL)."""
    m, v = T.shape
    _, lse_t = teacher_softmax(T, tau, buf.scratch(m, v))
    log_pt = T.div_(tau).sub_(lse_t)
    log_ps = S[:, :v].div(tau).sub_(lse_s)
    ps = log_ps.exp()
    r = log_ps - log_pt
    kd_rows = (ps * r).sum(1, keepdim=True)
    return kd_rows.sum(), ps * (r - kd_rows)


def jsd(S, T, tau, lse_s, buf):
    """Generalized Jensen-Shannon with beta = 1/2, M = (p_S + p_T) / 2:
    JSD = (KL(p_S || M) + KL(p_T || M)) / 2;  with u = (log p_S - log M) / 2:  g = p_S * (u - sum p_S u)."""
    m, v = T.shape
    P, lse_t = teacher_softmax(T, tau, buf.scratch(m, v))
    log_pt = T.div_(tau).sub_(lse_t)
    log_ps = S[:, :v].div(tau).sub_(lse_s)
    ps = log_ps.exp()
    log_m = torch.logaddexp(log_ps, log_pt) - math.log(2.0)
    kd_rows = 0.5 * ((ps * (log_ps - log_m)).sum(1, keepdim=True) + (P * (log_pt - log_m)).sum(1, keepdim=True))
    u = 0.5 * (log_ps - log_m)
    return kd_rows.sum(), ps * (u - (ps * u).sum(1, keepdim=True))


def generalized_jsd(S, T, tau, lse_s, buf, beta):
    """Generalised Jensen-Shannon, 0 < beta < 1, in TRL's convention (GKD paper eq. 1, Agarwal et al. 2024, with
    P = teacher, Q = student):  M = beta p_T + (1 - beta) p_S,  D = beta KL(p_T || M) + (1 - beta) KL(p_S || M).
    dD/dp_S = (1 - beta)(log p_S - log M) (the p_T/M and p_S/M terms cancel), so with that u:
    g = p_S * (u - sum p_S u).  beta = 1/2 is `jsd` up to rounding (divergence_for sends 1/2 to `jsd`)."""
    m, v = T.shape
    P, lse_t = teacher_softmax(T, tau, buf.scratch(m, v))
    log_pt = T.div_(tau).sub_(lse_t)
    log_ps = S[:, :v].div(tau).sub_(lse_s)
    ps = log_ps.exp()
    # log M = logaddexp(log p_S + log(1 - beta), log p_T + log beta): stable, no exp of raw logits
    log_m = torch.logaddexp(log_ps + math.log1p(-beta), log_pt + math.log(beta))
    u = log_ps.sub_(log_m).mul_(1 - beta)  # (1 - beta)(log p_S - log M), the KL(p_S || M) term's share
    pu = (ps * u).sum(1, keepdim=True)
    kd_rows = beta * (P * log_pt.sub_(log_m)).sum(1, keepdim=True) + pu
    return kd_rows.sum(), u.sub_(pu).mul_(ps)


IS_WEIGHT_CLIP = 10.0  # largest importance weight p_S(y) / q(y) a sampled row gets


def sampled_reverse_kl(S, teacher, tau, lse_s, buf):
    """KL(p_S || p_T) on a row whose label y the student sampled (on-policy distillation, Tinker cookbook
    `train_on_policy.py`: per-token reverse KL as the advantage of an importance-sampling loss):

        c = log p_S^tau(y) - log p_T^tau(y),   w = p_S^tau(y) / q(y) clipped at 10,   D_row = w c,
        g = w c (onehot(y) - p_S^tau)

    with q the sampler's probability of y (w = 1 when none is given: y drawn from p_S^tau itself). c and w
    are held constant (score function): E_{y~q}[w c (onehot(y) - p_S)] = p_S (r - KL), r = log p_S - log p_T,
    the full reverse-KL gradient of `reverse_kl` (unbiased while w stays under the clip). Needs only
    log sum exp(T / tau) and T[y], not the teacher's softmax. teacher = (T (m, v) logits, consumed; y (m, 1);
    log q(y) (m, 1) or None)."""
    T, y, log_q = teacher
    m, v = T.shape
    lse_t = tempered_lse(T, tau, buf.scratch(m, v))
    log_ps_y = S.gather(1, y).div_(tau).sub_(lse_s)
    c = log_ps_y - T.gather(1, y).div_(tau).sub_(lse_t)
    w = 1.0 if log_q is None else (log_ps_y - log_q).exp_().clamp_(max=IS_WEIGHT_CLIP)
    wc = c.mul_(w)
    g = torch.div(S[:, :v], tau, out=T).sub_(lse_s).exp_().mul_(wc.neg())  # -w c p_S, in T's storage
    return wc.sum(), g.scatter_add_(1, y, wc)


def topk_forward_kl(S, teacher, tau, lse_s, buf):
    """KL(p_T || p_S) over a cached teacher's top-k support: p_T = softmax(values / tau) renormalised over the k
    entries, log p_S read at the same k indices from the student's full-vocabulary log-softmax (exact when
    k = V; it drops the teacher's tail mass, small for k >= 64 at tau <= 2).  g = p_S^tau - scatter(p_T)."""
    values, indices = teacher
    m, vs = S.shape
    log_pt = torch.log_softmax(values / tau, dim=1)
    pt = log_pt.exp()
    log_ps_k = S.gather(1, indices).div_(tau).sub_(lse_s)
    kd = (pt * (log_pt - log_ps_k)).sum()
    g = torch.div(S, tau, out=buf.scratch(m, vs)).sub_(lse_s).exp_()
    return kd, g.scatter_add_(1, indices, pt.neg_())


def sampled_forward_kl(S, teacher, tau, lse_s, buf):
    """KL(p_T || p_S) estimated from n tokens drawn from p_T^tau with replacement (random-sampling KD, Anshumann
    et al., ACL 2025): with ids x_1..x_n and the teacher's entropy H(p_T^tau), both cached,

        KL ~= (1/n) sum_j -log p_S^tau(x_j) - H(p_T^tau),      g = p_S^tau - (1/n) sum_j onehot(x_j).

    E[(1/n) sum_j onehot(x_j)] = p_T^tau, so the estimate of the loss and of its gradient are unbiased: the
    expected step is the full-vocabulary KD step (tests/test_teacher_cache.py checks this by Monte Carlo). Unlike
    top-k renormalisation, no teacher mass is dropped: a tail token is drawn as often as the teacher says."""
    ids, entropy = teacher
    m, vs = S.shape
    log_ps = S.gather(1, ids).div_(tau).sub_(lse_s)
    kd = (-log_ps.mean(1, keepdim=True) - entropy).sum()
    g = torch.div(S, tau, out=buf.scratch(m, vs)).sub_(lse_s).exp_()
    return kd, g.scatter_add_(1, ids, torch.full(ids.shape, -1.0 / ids.shape[1], dtype=g.dtype, device=g.device))


DIVERGENCES = {"forward": forward_kl, "reverse": reverse_kl, "jsd": jsd}  # keys: losses.KL_KINDS


def divergence_for(kl: str, beta: float = 0.5):
    """The chunk function for `kl` (a losses.KL_KINDS name); for "jsd", the generalised JSD at `beta`, picked
    as TRL's `generalized_jsd_loss` does: beta 0 -> forward KL, 1 -> reverse KL, 1/2 -> `jsd` (bit for bit),
    else `generalized_jsd`. The endpoints are not continuous in scale: JSD_beta ~ beta KL(p_T || p_S) as
    beta -> 0 and ~ (1 - beta) KL(p_S || p_T) as beta -> 1, so 0 and 1 are the limits of JSD_beta / beta
    and JSD_beta / (1 - beta). `beta` is read for "jsd" only."""
    if kl not in DIVERGENCES:
        raise ValueError(f"kl must be one of {', '.join(DIVERGENCES)}, got {kl!r}")
    beta = float(beta)
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"jsd beta must be in [0, 1], got {beta}")
    if kl != "jsd" or beta == 0.5:
        return DIVERGENCES[kl]
    if beta == 0.0:
        return forward_kl
    if beta == 1.0:
        return reverse_kl
    return functools.partial(generalized_jsd, beta=beta)
