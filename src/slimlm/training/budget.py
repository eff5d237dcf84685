"""`--max-time`: a training time budget as a Trainer callback. It times the steps as they go and fits the plan
to the budget, shorter or longer (never past the planned tokens), redrawing the learning-rate schedule to end
there; --resume keeps the fitted plan."""

from __future__ import annotations

import functools
import time
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from slimlm import distributed
from slimlm.distributed import log


class StopAfterSteps(TrainerCallback):
    """Stop (after the step's checkpoint is saved) once `global_step` reaches `stop_at`; used to test resume."""

    def __init__(self, stop_at: int):
        self.stop_at = stop_at

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.stop_at:
            control.should_training_stop = True
        return control


class TimeBudget(TrainerCallback, ExportableState):
    """`--max-time`: training stops cleanly once `seconds` of training have passed (counted over resumes).

    Stopping a cosine schedule half way would leave the learning rate high, so the budget fits the plan to the
    time instead: every `probe_steps` steps (3, or 5% of the plan up to 20) it measures the mean time of the
    steps since the first (which carries one-off costs) and sets the plan to the steps that fit in what is
    left, up to the planned steps, redrawing the learning-rate schedule to end there. The first steps are
    often slower (allocations settle, caches warm), so an early cut is lengthened again as the mean falls,
    and the budget is spent rather than left on the table. The fitted plan is saved with each checkpoint, so
    a resumed run keeps it. What was planned and what was trained are recorded.
    """

    def __init__(
        self,
        seconds: float,
        probe_steps: int | None = None,
        spent: float = 0.0,
        planned_steps: int | None = None,
        fitted_steps: int | None = None,
        stopped: bool = False,
    ):
        self.seconds, self.probe_steps = float(seconds), probe_steps
        self.spent = spent  # training seconds before this attempt (a resume adds on)
        self.planned_steps, self.fitted_steps, self.stopped = planned_steps, fitted_steps, stopped
        self._start = self._first_step_end = self._last = None  # clock readings: one at the start, one a step
        self._start_step = 0
        self.refits, self._logged = 0, None  # plan changes this attempt; the plan last announced
        self._planned = None  # the schedule's lambdas as drawn for the whole plan (on_train_begin)
        self.progress = None  # the Trainer's ProgressCallback, so the bar shows the fitted plan

    def state(self) -> dict:
        return {
            "args": {
                "seconds": self.seconds,
                "probe_steps": self.probe_steps,
                "spent": self._elapsed(self._last),
                "planned_steps": self.planned_steps,
                "fitted_steps": self.fitted_steps,
                "stopped": self.stopped,
            },
            "attributes": {},
        }

    def _elapsed(self, now: float | None) -> float:
        if self._start is None or now is None:
            return self.spent
        return self.spent + (now - self._start)

    def on_train_begin(self, args, state, control, lr_scheduler=None, **kwargs):
        self._start = self._last = time.monotonic()
        self._start_step = state.global_step
        if self.planned_steps is None:
            self.planned_steps = state.max_steps
        if self.probe_steps is None:
            self.probe_steps = max(3, min(20, state.max_steps // 20))
        self._planned = _lambdas(lr_scheduler)  # as the Trainer drew them for the whole plan
        if self.fitted_steps is not None:  # resumed after the plan was fitted: the schedule follows it again
            _redraw_schedule(lr_scheduler, self.fitted_steps, self._planned)
            self._show_plan()

    def on_step_end(self, args, state, control, lr_scheduler=None, **kwargs):
        now = self._last = time.monotonic()  # one clock reading per step (a checkpoint's save counts in the next)
        done = state.global_step - self._start_step
        if done == 1:
            self._first_step_end = now  # the first step carries one-off costs; time the ones after it
        elif done % self.probe_steps == 0 and self._first_step_end is not None:
            self._refit(state, lr_scheduler, (now - self._first_step_end) / (done - 1), now)
        limit = self.fitted_steps if self.fitted_steps is not None else state.max_steps
        over = self._elapsed(now) >= self.seconds
        if distributed.is_distributed():  # one clock decides for all ranks (a rank stopping alone would hang)
            over = distributed.all_sum([float(over and distributed.is_main_process())])[0] > 0
        if state.global_step < state.max_steps and (state.global_step >= limit or over):
            self.stopped = True
            control.should_training_stop = True
        return control

    def _refit(self, state, lr_scheduler, per_step: float, now: float) -> None:
        """Fit the plan to the time left at `per_step` seconds a step: shorter or longer, never past the planned
        steps, never before the current one; the schedule is redrawn to end at the new plan."""
        left = self.seconds - self._elapsed(now)
        fit = min(state.max_steps, state.global_step + max(0, int(left / per_step)))
        if distributed.is_distributed():  # every rank must stop at the same step: rank 0's plan rules
            fit = int(distributed.all_sum([fit if distributed.is_main_process() else 0])[0])
        fit = max(fit, state.global_step)
        before = self.fitted_steps if self.fitted_steps is not None else state.max_steps
        if fit == before:
            return
        self.fitted_steps = fit
        self.refits += 1
        _redraw_schedule(lr_scheduler, fit, self._planned)
        self._show_plan()
        if self._logged is None or abs(fit - self._logged) >= max(2, self._logged // 20):  # no log line a step
            self._logged = fit
            distributed.log(
                f"--max-time {_minutes(self.seconds)}: at {per_step:.1f} s a step, {fit} of the planned "
                f"{self.planned_steps} steps fit; the learning-rate schedule now ends there"
            )

    def _show_plan(self) -> None:
        bar = getattr(self.progress, "training_bar", None)
        if bar is not None and self.fitted_steps is not None:
            bar.total = self.fitted_steps
            bar.refresh()

    def record(self, state, tokens_per_step: int) -> dict:
        """What the budget did, for slimlm.json."""
        return {
            "max_time_s": self.seconds,
            "planned_steps": self.planned_steps,
            "fitted_steps": self.fitted_steps,
            "trained_steps": state.global_step,
            "trained_tokens": state.global_step * tokens_per_step,
            "stopped_by_time_budget": bool(self.stopped),
            "refits": self.refits,
            "budget_used": round(min(1.0, self._elapsed(self._last) / self.seconds), 3),
            "training_seconds": round(self._elapsed(self._last), 1),
        }


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:g}m" if seconds >= 60 else f"{seconds:g}s"


def _lambdas(lr_scheduler) -> tuple | None:
    """(the LambdaLR inside the Trainer's scheduler, its lambdas as drawn for the plan), or None."""
    inner = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate wraps it
    lambdas = getattr(inner, "lr_lambdas", None)
    return (inner, tuple(lambdas)) if lambdas else None


def _redraw_schedule(lr_scheduler, steps: int, planned: tuple | None) -> None:
    """Point the Trainer's LambdaLR (warmup + decay) at a new end step, keeping its shape and its warmup (cut to
    half the plan when the plan is short; drawn from the planned lambdas, so a plan lengthened again gets the
    whole warmup back)."""
    if lr_scheduler is None or planned is None:
        return
    inner, lambdas = planned
    new = []
    for fn in lambdas:
        if isinstance(fn, functools.partial) and "num_training_steps" in fn.keywords:
            keywords = {**fn.keywords, "num_training_steps": steps}
            if "num_warmup_steps" in keywords:  # the warmup stays, unless it would now be most of the run
                keywords["num_warmup_steps"] = min(keywords["num_warmup_steps"], steps // 2)
            fn = functools.partial(fn.func, *fn.args, **keywords)
        new.append(fn)
    inner.lr_lambdas = new


def restore_time_budget(trainer, checkpoint) -> None:
    """Connect the TimeBudget to the progress bar and, on --resume, give it the state saved with the checkpoint
    (time spent, the fitted plan).

    Read here, from trainer_state.json, rather than through TrainingArguments'
    restore_callback_states_from_checkpoint, which would also restore the Trainer's control flags."""
    import json

    from transformers.trainer_callback import ProgressCallback

    budget = time_budget(trainer)
    if budget is None:
        return
    budget.progress = next((cb for cb in trainer.callback_handler.callbacks if isinstance(cb, ProgressCallback)), None)
    if checkpoint is None:
        return
    try:
        saved = json.loads((Path(checkpoint) / "trainer_state.json").read_text())["stateful_callbacks"]["TimeBudget"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # a checkpoint from a run without --max-time: the budget starts now
    saved = saved[-1] if isinstance(saved, list) else saved
    for key in ("spent", "planned_steps", "fitted_steps"):
        setattr(budget, key, saved.get("args", {}).get(key, getattr(budget, key)))


def time_budget(trainer) -> TimeBudget | None:
    """The trainer's TimeBudget callback, if --max-time was given."""
    return next((cb for cb in trainer.callback_handler.callbacks if isinstance(cb, TimeBudget)), None)


def budget_stopped(trainer) -> bool:
    budget = time_budget(trainer)
    return bool(budget and budget.stopped)


def budget_record(trainer, tokens_per_step: int) -> dict | None:
    """What `--max-time` did (None without one); logs the tokens actually trained when it stopped the run."""
    budget = time_budget(trainer)
    if budget is None:
        return None
    record = budget.record(trainer.state, tokens_per_step)
    if record["stopped_by_time_budget"]:
        log(
            f"--max-time: stopped after {record['trained_steps']} of {record['planned_steps']} planned steps "
            f"({record['trained_tokens']:,} tokens trained)"
        )
    return record
