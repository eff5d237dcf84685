"""Stage `prune`: prune weights, channels or key/value groups and show one before/after table."""

from __future__ import annotations

import copy
from pathlib import Path

from slimlm import precision as precisions
from slimlm.data.corpus import calibration_sample, prepare_data
from slimlm.distributed import log
from slimlm.errors import SlimlmError
from slimlm.methods import pruning
from slimlm.output import claimed
from slimlm.settings import PruneSettings
from slimlm.sources import load_model, model_config
from slimlm.stages.before_after import measure, publish_before_after


def check_prune_model(config, *, method: str, nm: tuple[int, int], kv_groups_removed: int) -> None:
    """The settings that depend on the model's shape, checked from its config before any weight is loaded."""
    if method == "structured":
        heads = getattr(config, "num_attention_heads", None)
        n_kv = getattr(config, "num_key_value_heads", None) or heads
        if isinstance(n_kv, int) and kv_groups_removed >= n_kv:
            raise SlimlmError(
                f"--kv-groups-removed {kv_groups_removed}: the model has {n_kv} key/value groups per "
                f"layer and at least one must stay; remove 0..{n_kv - 1}"
            )
    if method == "nm":
        m = nm[1]
        widths = {getattr(config, k, None) for k in ("hidden_size", "intermediate_size")}
        bad = sorted(w for w in widths if isinstance(w, int) and w % m)
        if bad:
            raise SlimlmError(
                f"--nm {nm[0]}:{m}: the model's layer width {bad[0]} is not a multiple of M={m}; "
                "choose an M that divides it, e.g. 2:4"
            )


def prune(model: str, *, out: str, force: bool = False, **settings) -> Path:
    """Prune `model` and write the result with a before/after table (stage `prune`).

    `settings` are PruneSettings' fields (slimlm.settings: data, method, sparsity, scope, nm,
    kv_groups_removed, calibration_blocks, recover_tokens, block_size, eval_tokens, repeats, precision),
    with their defaults there. `recover_tokens` > 0 then distils the pruned model from the unpruned one for
    that many tokens (the `distill` stage, default settings), which only makes sense for structured pruning:
    training would refill the zeros of unstructured sparsity. `precision` (precision.py) is what the
    calibration passes and the recovery compute in; the before/after table is measured in fp32, like `slimlm eval`.
    """
    s = PruneSettings.from_dict({**settings, "model": model, "out": out, "force": force}).validate()
    n, m = s.nm_pattern()
    check_prune_model(
        model_config(s.model, trust_remote_code=s.trust_remote_code),
        method=s.method,
        nm=(n, m),
        kv_groups_removed=s.kv_groups_removed,
    )
    out = Path(s.out)
    with claimed(out, force=s.force) as stage:
        decided = precisions.resolve(s.precision, "cpu", announce=log)  # calibration runs on the CPU
        source, tokenizer, source_dir = load_model(s.model, trust_remote_code=s.trust_remote_code)
        splits = prepare_data(s.data, tokenizer, s.block_size)
        calib = calibration_sample(splits.train, s.calibration_blocks, 0, stream=20_000)
        before = measure(source, tokenizer, splits, source_dir, s.eval_tokens, s.block_size, s.repeats)
        pruned = copy.deepcopy(source)
        with precisions.autocast(decided):
            if s.method in ("magnitude", "wanda"):
                detail = pruning.prune_unstructured(pruned, s.sparsity, s.method, s.scope, calib)
            elif s.method == "nm":
                detail = pruning.prune_nm(pruned, n, m, calib)
            else:
                detail = {
                    **pruning.prune_mlp_channels(pruned, s.sparsity, calib),
                    **pruning.prune_kv_groups(pruned, s.kv_groups_removed, calib),
                }
        detail["precision"] = decided.to_dict()
        if s.method != "structured":  # structured pruning removes rows and columns; no zeros to count
            detail["sparsity_by_kind"] = pruning.sparsity_report(pruned)
        tmp = stage / "measure"
        pruned.save_pretrained(tmp)  # measure the size that will be published
        if s.recover_tokens:
            from slimlm.stages.distill import distill  # the one stage that runs another (docs/architecture.md)

            tokenizer.save_pretrained(tmp)
            recovered = distill(
                teacher=str(source_dir),
                student=str(tmp),
                data=s.data,
                out=stage / "recovered",
                max_tokens=s.recover_tokens,
                block_size=s.block_size,
                force=True,
                precision=s.precision,
                trust_remote_code=s.trust_remote_code,
            )
            pruned, _, _ = load_model(recovered, trust_remote_code=s.trust_remote_code)
            detail["recovery"] = {"tokens": s.recover_tokens, "stage": "distill (defaults) from the unpruned model"}
            tmp = recovered
        after = measure(pruned, tokenizer, splits, tmp, s.eval_tokens, s.block_size, s.repeats)
        recorded = {
            "method": s.method,
            "sparsity": s.sparsity,
            "scope": s.scope,
            "nm": s.nm,
            "kv_groups_removed": s.kv_groups_removed,
            "calibration_blocks": s.calibration_blocks,
            "recover_tokens": s.recover_tokens,
        }
        return publish_before_after(
            stage,
            out,
            pruned,
            tokenizer,
            "prune",
            s.model,
            source_dir,
            splits,
            recorded,
            detail,
            before,
            after,
            s.eval_tokens,
            s.block_size,
        )
