"""The one fused chunked kernel behind every logit loss: the student's lm_head and a loss, chunk by chunk.

Full-vocabulary logits are the largest tensors in LM distillation (tokens x 49152 fp32 = 200 kB a token).
`fused_head_loss` takes the student's final hidden states and lm_head weight instead of logits and works
through the rows in chunks: it makes one chunk's fp32 logits, hands them to the loss's `chunk_loss`, which
returns the chunk's sums and the gradient with respect to those logits in closed form, and pushes that
gradient through the two matmuls right away (dh = G W, dW += G^T h; the approach of Liger-Kernel's fused
linear losses). So backward recomputes nothing and stores only the (N, d) and (V, d) gradients, and no more
than one chunk's logits exist at any time. The KD loss (kd.py) and the cross-tokenizer loss (uld.py) are each
a chunk function plugged in here; the chunking, buffers, dtypes and the backward are this module's alone.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from slimlm.losses.reduce import acc_dtype


def fused_head_loss(
    h: torch.Tensor,
    w: torch.Tensor,
    rows: torch.Tensor,
    chunk_size: int,
    make_chunk: Callable,
    combine: Callable,
    teacher_cols: int = 0,
):
    """(loss_sum, *parts) of a loss over the student's logits h @ w^T at `rows` (indices into h).

    make_chunk(buf) -> chunk_loss, called once the matmul dtype is known (buf.mm_dtype, buf.acc):
        chunk_loss(idx, S, buf) -> (sums, G): the chunk's rows `idx`, their fp32 logits S (m, V) in buf.S (which
        G may reuse), the tuple of the chunk's sums, and G = d(loss)/dS summed over the chunk's rows.
    combine(*sums) -> (loss_sum, parts): the loss from the sums over every chunk, and the detached parts; G
        must be the gradient of that loss_sum (combine only does the arithmetic the chunks' G already include).
    teacher_cols: width of buf.T, a (chunk, teacher_cols) work tensor for a teacher's logits (0: none).
    Gradients reach h and w only; the loss supports one backward pass (the saved gradients are scaled in place).
    """
    return _FusedHeadLoss.apply(h, w, rows, chunk_size, make_chunk, combine, teacher_cols)


class _FusedHeadLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, w, rows, chunk_size, make_chunk, combine, teacher_cols):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dev = h.device
        mm_dtype = matmul_dtype(h, w)
        acc = acc_dtype(mm_dtype)
        n, vs = rows.numel(), w.shape[0]
        grad_h = torch.zeros(h.shape, dtype=acc, device=dev) if need_h else None
        grad_w = torch.zeros(w.shape, dtype=acc, device=dev) if need_w else None
        c = min(chunk_size, max(n, 1))
        sums = None
        with torch.autocast(dev.type, enabled=False):  # dtypes are chosen explicitly below
            wm = w.to(mm_dtype)
            buf = ChunkBuffers(c, vs, teacher_cols, acc, mm_dtype, dev)
            chunk_loss = make_chunk(buf)
            for start in range(0, n, c):
                idx = rows[start : start + c]
                m = idx.numel()
                hc = h.index_select(0, idx).to(mm_dtype)
                S = buf.logits(hc, wm, buf.S[:m])
                chunk_sums, G = chunk_loss(idx, S, buf)
                sums = list(chunk_sums) if sums is None else [a + b for a, b in zip(sums, chunk_sums)]
                if need_h or need_w:
                    Gm = buf.scratch(m, vs, mm_dtype).copy_(G) if mm_dtype != acc else G
                    if need_h:
                        grad_h.index_copy_(0, idx, (Gm @ wm).to(acc))
                    if need_w:
                        grad_w.add_(Gm.t() @ hc)  # low-precision product added into the fp32 sum
        if sums is None:  # no rows: every sum is zero
            sums = [torch.zeros((), dtype=acc, device=dev) for _ in range(_arity(combine))]
        loss_sum, parts = combine(*sums)
        ctx.save_for_backward(grad_h, grad_w)
        ctx.input_dtypes, ctx.used = (h.dtype, w.dtype), False
        ctx.mark_non_differentiable(*parts)
        return (loss_sum, *parts)

    @staticmethod
    def backward(ctx, grad_loss, *_grad_parts):
        if ctx.used:
            raise RuntimeError(
                "the fused head losses support one backward pass (their gradients are scaled in place): "
                "call the loss again instead of retain_graph=True"
            )
        ctx.used = True
        grad_h, grad_w = ctx.saved_tensors
        h_dtype, w_dtype = ctx.input_dtypes
        # in place: no second (V, d) tensor next to the saved one
        gh = grad_h.mul_(grad_loss).to(h_dtype) if grad_h is not None else None
        gw = grad_w.mul_(grad_loss).to(w_dtype) if grad_w is not None else None
        return gh, gw, None, None, None, None, None


def _arity(combine) -> int:
    return combine.__code__.co_argcount


class ChunkBuffers:
    """Three (chunk, V) work tensors, allocated once per call and reused by every chunk: S (student logits,
    then G), T (teacher logits) and X (scratch: p_T^tau, exp(S - max), and, viewed as bf16/fp16, the matmul
    outputs and G's low-precision copy). On a CPU a fresh 200 MB tensor costs more in page faults than the
    softmax that fills it, hence the reuse."""

    def __init__(self, c, vs, vt, acc, mm_dtype, dev):
        self.S = torch.empty(c, vs, dtype=acc, device=dev)
        self.X = torch.empty(c, vs, dtype=acc, device=dev)
        self.T = torch.empty(c, vt, dtype=acc, device=dev) if vt else None
        self.acc, self.mm_dtype = acc, mm_dtype

    def scratch(self, m, cols, dtype=None):
        """A contiguous (m, cols) tensor on X's storage (dtype at most as wide as X's)."""
        return self.X.view(-1).view(dtype or self.acc)[: m * cols].view(m, cols)

    def logits(self, x, weight, out):
        if self.mm_dtype == self.acc:
            return torch.mm(x, weight.t(), out=out)
        low = self.scratch(out.shape[0], out.shape[1], self.mm_dtype)
        torch.mm(x, weight.t(), out=low)  # bf16 matmul, as autocast would run it; softmaxes in fp32 below
        return out.copy_(low)


def matmul_dtype(h, w):
    """bf16/fp16 under autocast (as F.linear would run), else the wider of the two input dtypes."""
    if torch.is_autocast_enabled(h.device.type):
        return torch.get_autocast_dtype(h.device.type)
    return torch.promote_types(h.dtype, w.dtype)
