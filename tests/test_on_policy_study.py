"""bench/on_policy_study.py's own logic: equal wall time from the measured step cost, and a table that pairs every
arm with the off-policy arm of the same seed."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("bench_on_policy_study", ROOT / "bench" / "on_policy_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_equal_minutes_give_costlier_steps_fewer_of_them():
    study = _module()
    cost = study.read_step_cost(str(ROOT / "docs" / "results" / "on-policy" / "step-cost.json"))
    off, half, full = (study.steps_for(a, 14, cost) for a in ("off-policy", "on-policy 0.5", "on-policy 1"))
    assert off == int(14 * 60 / cost["off-policy"]) and off > half > full >= 1
    assert study.steps_for("sequence-level", 14, cost) == off
    # reusing each rollout on 4 steps makes a step cheaper, so the same minutes buy more of them
    reuse = study.steps_for("on-policy 1 reuse 4", 14, cost)
    assert reuse == int(14 * 60 / cost["lambda 1 reuse 4"]) and off > reuse > full
    assert study.steps_for("off-policy equal steps", 14, cost) == full  # the control for what a step does


def test_step_cost_file_is_checked(tmp_path):
    study = _module()
    with pytest.raises(SystemExit, match="run bench/on_policy_bench.py first"):
        study.read_step_cost(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    for text in ("{not json", "[1]", '{"arms": {"off-policy": {}}}'):
        bad.write_text(text)
        with pytest.raises(SystemExit, match="--step-cost"):
            study.read_step_cost(str(bad))
    with pytest.raises(SystemExit, match="no 'lambda 1' arm"):
        study.steps_for("on-policy 1", 14, {"off-policy": 5.0})


def test_table_pairs_each_arm_with_the_off_policy_arm_of_its_seed():
    study = _module()

    def arm(name, seed, ppl, nll):
        row = {k: 1.0 for k in study.METRICS}
        return {**row, "arm": name, "seed": seed, "steps": 10, "test_perplexity": ppl, "teacher_nll_sampled": nll}

    results = {
        "arms": {
            "off-policy-seed0": arm("off-policy", 0, 70.0, 4.0),
            "off-policy-seed1": arm("off-policy", 1, 72.0, 4.2),
            "on-policy 1-seed0": arm("on-policy 1", 0, 71.0, 3.5),
            "on-policy 1-seed1": arm("on-policy 1", 1, 74.0, 3.9),
        }
    }
    results["arms"]["on-policy 1-seed1"]["general_perplexity"] = 0.9  # general-text perplexity: also relative
    results["teacher"] = {k: 2.0 for k in study.METRICS}
    text = study.table(results)
    assert "| teacher | – | – | 2.00 | 200.0 | 2.00 | 2.000 |" in text and text.count("| teacher |") == 1
    assert "| off-policy | 2 | 10 | 71.00 ± 1.41 | 100.0 ± 0.0 | 1.00 ± 0.00 | 4.100 ± 0.141 |" in text
    row = next(line for line in text.split("Paired by seed")[1].splitlines() if line.startswith("| on-policy 1 |"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    # ppl +1.4% and +2.8%: mean +2.1, std 1.0; teacher NLL −0.5 and −0.3
    assert cells[:4] == ["on-policy 1", "2", "+2.1 ± 1.0% (++)", "−0.400 ± 0.141 (−−)"]
    assert cells[-1] == "+0.000 ± 0.000 (00)"  # rep-4 the same on both seeds: neither sign
    assert study.paired_by_seed(results, "on-policy 1", "general_perplexity") == [(0, 0.0), (1, pytest.approx(-0.1))]
    assert "against off-policy equal steps" not in text  # no per-step table without its control
    # the equal-steps control: paired with off-policy like every arm, and the per-step table pairs λ = 1 with it
    results["arms"]["off-policy equal steps-seed0"] = arm("off-policy equal steps", 0, 75.0, 4.5)
    results["arms"]["off-policy equal steps-seed1"] = arm("off-policy equal steps", 1, 77.0, 4.6)
    off, per_step = study.table(results).split("Paired by seed")[1:]
    assert (
        "| off-policy equal steps | 2 |" in off
        and "| on-policy 1 | 2 | −4.6 ± 1.0% (−−) | −0.850 ± 0.212 (−−) |" in per_step
    )
    assert per_step.startswith(" against off-policy equal steps (arm − off-policy equal steps;")
    json.dumps(results)  # what results.json holds stays plain JSON


def test_plot_draws_every_seed_s_paired_difference(tmp_path):
    study = _module()
    rows = {k: 1.0 for k in study.METRICS}
    results = {"protocol": {"minutes": 10}, "arms": {}}
    for seed in (0, 1):
        for arm, nll in (("off-policy", 4.0), ("on-policy 1", 3.5), ("sequence-level", 4.1)):
            results["arms"][f"{arm}-seed{seed}"] = {**rows, "arm": arm, "seed": seed, "teacher_nll_sampled": nll + seed}
    assert study.paired_by_seed(results, "on-policy 1", "teacher_nll_sampled") == [(0, -0.5), (1, -0.5)]
    assert study.paired_by_seed(results, "on-policy 0.5", "teacher_nll_sampled") == []
    study.plot(results, tmp_path / "paired.png")
    assert (tmp_path / "paired.png").stat().st_size > 20_000


def test_sampled_reverse_candidates_train_at_their_own_step_cost():
    study = _module()
    cost = {"off-policy": 4.0, "lambda 1": 8.0, "lambda 1 sampled-reverse": 10.0}
    assert study.steps_for("on-policy 1", 10, cost, "forward") == 75
    assert study.steps_for("on-policy 1", 10, cost, "sampled-reverse") == 60
    assert study.steps_for("off-policy", 10, cost, "sampled-reverse") == 150  # off-policy steps never sample


def test_divergence_pick_is_the_lowest_validation_nll_and_is_resumable(tmp_path, monkeypatch):
    """Each candidate trains once; the teacher's lowest NLL of its validation samples wins; a rerun trains none."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))  # the study imports learning_curve.py beside it, as a script
    study = _module()
    trained = []

    def train(args, student, arm, seed, cost, divergence, name):
        trained.append((arm, seed, divergence))
        return tmp_path / name

    nll = {"grid-forward": 3.1, "grid-reverse": 2.9, "grid-jsd": 3.0}
    monkeypatch.setattr(study, "train", train)
    monkeypatch.setattr(study, "validation_nll", lambda run_dir, prompts_of: nll[run_dir.name])
    args = type("Args", (), {"divergence_grid": ["forward", "reverse", "jsd"]})()
    results, results_file = {}, tmp_path / "results.json"
    assert study.pick_divergence(args, results, results_file, {}, tmp_path / "student") == "reverse"
    assert trained == [("on-policy 1", 0, d) for d in ("forward", "reverse", "jsd")]
    on_disk = json.loads(results_file.read_text())
    assert on_disk["divergence"] == "reverse" and on_disk["divergence_grid"]["reverse"]["run"] == "grid-reverse"
    trained.clear()
    assert study.pick_divergence(args, on_disk, results_file, {}, tmp_path / "student") == "reverse"
    assert trained == []


def test_bad_divergence_grid_is_refused(tmp_path):
    study = _module()
    step_cost = str(ROOT / "docs" / "results" / "on-policy" / "step-cost.json")
    with pytest.raises(SystemExit, match="--divergence-grid"):
        study.main(["--out", str(tmp_path), "--step-cost", step_cost, "--divergence-grid", "forward,skew"])


def test_a_step_cost_a_grid_candidate_would_need_is_checked_before_training(tmp_path):
    """sampled-reverse at λ = 0.5 has no measured step cost: refused up front, not after hours of the grid."""
    study = _module()
    step_cost = str(ROOT / "docs" / "results" / "on-policy" / "step-cost.json")
    argv = ["--out", str(tmp_path / "out"), "--step-cost", step_cost, "--divergence-grid", "forward,sampled-reverse"]
    with pytest.raises(SystemExit, match="no 'lambda 0.5 sampled-reverse' arm"):
        study.main(argv)
    assert not (tmp_path / "out").exists()


def test_table_names_the_picked_divergence():
    study = _module()
    grid = {"reverse": {"run": "grid-reverse", "validation_teacher_nll_sampled": 2.9}}
    text = study.table({"arms": {}, "divergence": "reverse", "divergence_grid": grid})
    assert "On-policy divergence: reverse (teacher NLL of validation samples: reverse 2.900)." in text


def test_run_reuses_the_grid_winner_as_seed_zero_and_a_rerun_trains_nothing(tmp_path, monkeypatch):
    """The study's bookkeeping around the (costly) training and scoring: the divergence grid's winning run is
    "on-policy 1" at seed 0, every other (arm, seed) trains once, and a resumed study trains nothing."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import learning_curve
    import slimlm

    study = _module()
    trained = []

    def train(args, student, arm, seed, cost, divergence, name):
        run_dir = tmp_path / "out" / "arms" / name
        if (run_dir / "slimlm.json").exists():  # as the real train(): a finished run is returned as it is
            return run_dir
        trained.append(name)
        run_dir.mkdir(parents=True)
        record = {"steps": 3, "tokens": 3072, "train_runtime_s": 1.0}
        (run_dir / "slimlm.json").write_text(json.dumps({"training": record}))
        return run_dir

    evaluated = []

    def evaluate(models, **settings):
        evaluated.append((models, settings.get("generation_scorer")))
        row = {"perplexity": 70.0, "accuracy": 0.25, "generation": {k: 1.0 for k in study.WRITTEN}}
        return {"results": {m: {**row, "perplexity": 70.0 + len(m)} for m in models}}

    nll = {"grid-forward": 3.1, "grid-reverse": 2.9}
    monkeypatch.setattr(study, "train", train)
    monkeypatch.setattr(study, "validation_nll", lambda run_dir, prompts_of: nll[run_dir.name])
    monkeypatch.setattr(learning_curve, "initial_student", lambda out, heal: tmp_path / "student")
    monkeypatch.setattr(slimlm, "evaluate", evaluate)
    args = type(
        "Args",
        (),
        {
            "out": str(tmp_path / "out"),
            "step_cost": str(ROOT / "docs" / "results" / "on-policy" / "step-cost.json"),
            "minutes": 1.0,
            "seeds": [0, 1],
            "arms": ["off-policy", "on-policy 1"],
            "divergence_grid": ["forward", "reverse"],
        },
    )()
    results_file = tmp_path / "out" / "results.json"
    results_file.parent.mkdir()  # main() makes it
    results = {}
    study.run(args, results, results_file)
    assert trained == ["grid-forward", "grid-reverse", "off-policy-seed0", "off-policy-seed1", "on-policy 1-seed1"]
    arms = json.loads(results_file.read_text())["arms"]
    assert sorted(arms) == ["off-policy-seed0", "off-policy-seed1", "on-policy 1-seed0", "on-policy 1-seed1"]
    assert arms["on-policy 1-seed0"]["policy_divergence"] == "reverse" == arms["on-policy 1-seed1"]["policy_divergence"]
    assert arms["off-policy-seed0"]["policy_divergence"] is None
    assert arms["on-policy 1-seed0"]["test_perplexity"] == 70.0 + len(str(tmp_path / "out" / "arms" / "grid-reverse"))
    # the teacher measured once, first; every arm scored by it without measuring it again
    assert evaluated[0] == (["smollm2-135m"], None) and len(evaluated) == 5
    assert all(len(models) == 1 and scorer == "smollm2-135m" for models, scorer in evaluated[1:])
    trained.clear()
    evaluated.clear()
    study.run(args, json.loads(results_file.read_text()), results_file)
    assert trained == [] and evaluated == []
    # a new machine: results.json copied without the weights, the grid's winner not scored yet as seed 0
    shutil.rmtree(tmp_path / "out" / "arms")
    results = json.loads(results_file.read_text())
    del results["arms"]["on-policy 1-seed0"]
    study.run(args, results, results_file)
    assert trained == ["grid-reverse"] and len(evaluated) == 1  # the winner trained again, then scored


def test_a_stopped_study_scores_a_trained_arm_as_it_is_and_resumes_a_killed_one(tmp_path, monkeypatch):
    import slimlm

    study = _module()
    calls = []

    def distill(**settings):
        calls.append(settings)
        out = Path(settings["out"])
        out.mkdir(parents=True, exist_ok=True)
        (out / "slimlm.json").write_text(json.dumps({"training": {"steps": settings["max_steps"]}}))
        return out

    monkeypatch.setattr(slimlm, "distill", distill)
    args = type("Args", (), {"out": str(tmp_path), "minutes": 1.0})()
    cost = {"off-policy": 6.0}
    first = study.train(args, tmp_path / "student", "off-policy", 0, cost, None, "off-policy-seed0")
    assert calls[-1]["max_steps"] == 10 and calls[-1]["resume"] is False and calls[-1]["force"] is True
    assert study.train(args, tmp_path / "student", "off-policy", 0, cost, None, "off-policy-seed0") == first
    assert len(calls) == 1  # trained before the stop, not scored yet: not trained again
    args.minutes = 2.0  # a finished run of another length is not this arm's: trained again
    study.train(args, tmp_path / "student", "off-policy", 0, cost, None, "off-policy-seed0")
    assert len(calls) == 2 and calls[-1]["max_steps"] == 20
    (tmp_path / "arms" / "off-policy-seed1.partial").mkdir()  # killed mid-run: resume from its checkpoint
    study.train(args, tmp_path / "student", "off-policy", 1, cost, None, "off-policy-seed1")
    assert calls[-1]["resume"] is True and calls[-1]["seed"] == 1
    assert "on_policy" not in calls[-1] and "rollout_reuse" not in calls[-1]


def test_the_reuse_arm_trains_on_policy_with_each_rollout_on_four_steps(tmp_path, monkeypatch):
    import slimlm

    study = _module()
    calls = []

    def distill(**settings):
        calls.append(settings)
        Path(settings["out"]).mkdir(parents=True, exist_ok=True)
        return settings["out"]

    monkeypatch.setattr(slimlm, "distill", distill)
    args = type("Args", (), {"out": str(tmp_path), "minutes": 1.0})()
    cost = {"lambda 1 reuse 4": 6.0}
    study.train(args, tmp_path / "student", "on-policy 1 reuse 4", 0, cost, "jsd", "reuse-seed0")
    assert calls[-1]["on_policy"] == 1.0 and calls[-1]["rollout_reuse"] == 4 and calls[-1]["max_steps"] == 10
    assert calls[-1]["policy_divergence"] == "jsd"  # the divergence picked for every on-policy arm


@pytest.mark.slow
def test_arms_scored_before_the_student_nll_was_recorded_get_it_from_their_weights(tmp_path, monkeypatch):
    """The fill-in regenerates each arm's samples with the eval's prompts and seed and keeps the student's own NLL
    of them only where the teacher's NLL of them matches the one recorded (the same samples); an arm whose
    weights are gone, or whose samples differ, is left without it."""

    from conftest import save_tiny_model
    from slimlm.data.corpus import prepare_data
    from slimlm.eval.generation import generation_metrics
    from slimlm.sources import load_model
    from slimlm.stages.evaluate import generation_prompts

    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    study = _module()
    monkeypatch.setitem(study.EVAL, "generation", 4)  # 4 prompts of the eval's 32: the same protocol, cheaper
    teacher, tokenizer, _ = load_model("smollm2-135m")
    for name, seed in (("off-policy-seed0", 0), ("off-policy-seed1", 1)):
        save_tiny_model(tmp_path / "arms" / name, tokenizer, layers=1, seed=seed)
    test = prepare_data("sotu", tokenizer, 256).test
    prompts = generation_prompts(test, study.EVAL["generation"])
    student = load_model(str(tmp_path / "arms" / "off-policy-seed0"))[0]
    truth = generation_metrics(student, teacher, prompts, new_tokens=study.EVAL["generation_tokens"])

    def arm(seed, teacher_nll):
        return {"arm": "off-policy", "seed": seed, "teacher_nll_sampled": teacher_nll}

    results = {
        "teacher": {"teacher_nll_sampled": 3.1},
        "arms": {
            "off-policy-seed0": arm(0, truth["teacher_nll_sampled"]),
            "off-policy-seed1": arm(1, truth["teacher_nll_sampled"]),  # another model: other samples
            "off-policy-seed2": arm(2, 4.0),  # its weights are gone
        },
    }
    results_file = tmp_path / "results.json"
    study.fill_in_student_nll(results, tmp_path, results_file)
    arms = json.loads(results_file.read_text())["arms"]
    assert arms["off-policy-seed0"]["student_nll_sampled"] == pytest.approx(truth["student_nll_sampled"], rel=1e-6)
    assert (
        "student_nll_sampled" not in arms["off-policy-seed1"] and "student_nll_sampled" not in arms["off-policy-seed2"]
    )
    assert results["teacher"]["student_nll_sampled"] == 3.1  # the teacher's own text, by itself


def test_the_results_page_quotes_the_study():
    """docs/results/on-policy: the table is the script's own, rendered from run/results.json, and every number the
    prose quotes (verdicts, paired differences, the per-step control, flatness, greedy text) is recomputed here."""
    study = _module()
    run = ROOT / "docs" / "results" / "on-policy" / "run"
    results = json.loads((run / "results.json").read_text(encoding="utf-8"))
    arms = results["arms"]
    table = study.table(results)
    assert (run / "table.md").read_text(encoding="utf-8") == table
    page = (run.parent / "README.md").read_text(encoding="utf-8")
    assert f"<!-- table.md -->\n{table}<!-- /table.md -->" in page
    text = " ".join(page.split())

    def paired(arm, key, control="off-policy"):
        diffs = [d for _, d in study.paired_by_seed(results, arm, key, control)]
        return diffs, study.paired_cell(diffs, key.endswith("perplexity"))

    def mean(name, key):
        values = [r[key] for r in arms.values() if r["arm"] == name]
        return sum(values) / len(values)

    labels = {
        "on-policy 0.5": "on-policy λ = 0.5",
        "on-policy 1": "on-policy λ = 1",
        "on-policy 1 reuse 4": "on-policy λ = 1, each rollout on 4 steps",
        "sequence-level": "sequence-level",
    }
    for arm, label in labels.items():
        nll, nll_cell = paired(arm, "teacher_nll_sampled")
        ppl, ppl_cell = paired(arm, "test_perplexity")
        word = "better" if all(d < 0 for d in nll) else "worse" if all(d > 0 for d in nll) else "inconclusive"
        steps = arms[f"{arm}-seed0"]["steps"]
        assert (
            f"- {label} ({steps} steps): **{word}**, teacher NLL of its samples {nll_cell}; test perplexity {ppl_cell}."
            in text
        ), arm
        assert word == "worse" and all(d > 0 for d in ppl)  # the opening sentence: every arm, every seed
    # per step: λ = 1 against off-policy for the same steps
    control = arms["off-policy equal steps-seed0"]["steps"]
    assert control == arms["on-policy 1-seed0"]["steps"] and f"for the same {control} steps" in text
    per_step = [
        paired("on-policy 1", k, "off-policy equal steps")[1] for k in ("test_perplexity", "teacher_nll_sampled")
    ]
    assert f"λ = 1 against that control is {per_step[0]} in test perplexity and {per_step[1]} in" in text
    # flatness: the student's own NLL of its samples rises with λ
    own = [mean(a, "student_nll_sampled") for a in ("off-policy", "on-policy 0.5", "on-policy 1")]
    assert own == sorted(own)
    assert f"rises from {own[0]:.3f} (off-policy) to {own[1]:.3f} (λ = 0.5) and {own[2]:.3f} (λ = 1)" in text
    assert all(mean(a, "student_nll_sampled") > own[0] for a in labels)  # "every arm ... flatter"
    sequence_level = mean("sequence-level", "student_nll_sampled")
    assert sequence_level > own[0] and f"grows flatter too ({sequence_level:.3f})" in text
    # greedy text: better than off-policy's on average for these arms, and for the short-trained control too
    greedy = {a: paired(a, "teacher_nll_greedy") for a in (*labels, "off-policy equal steps")}
    quoted = ", ".join(greedy[a][1] for a in ("on-policy 0.5", "on-policy 1"))
    assert f"is {quoted} and {greedy['sequence-level'][1]} nats a token" in text
    assert f"for only {control} steps is at {greedy['off-policy equal steps'][1]} too" in text
    greedy = {a: study.statistics.mean(d) for a, (d, _) in greedy.items()}
    assert f"worse than off-policy's ({greedy['on-policy 1 reuse 4']:+.3f})" in text
    assert min(greedy, key=greedy.get) == "sequence-level" and max(greedy, key=greedy.get) == "on-policy 1 reuse 4"
    # sequence-level's perplexity cost and the teacher's one-off writing; the student's distance from the teacher
    assert (
        f"Sequence-level costs the least perplexity** ({paired('sequence-level', 'test_perplexity')[1].split(' (')[0]})"
        in text
    )
    written = arms["sequence-level-seed1"]["teacher_generated"]
    assert f"its {written['blocks']} continuations of {written['continuation_tokens']} tokens" in text
    assert f"in {written['seconds']:.0f} s for seed 1" in text
    ratio = mean("off-policy", "test_perplexity") / results["teacher"]["test_perplexity"]
    assert f"whose perplexity is {ratio:.1f}× the teacher's" in text


def test_the_readme_row_quotes_the_study():
    study = _module()
    results = json.loads((ROOT / "docs" / "results" / "on-policy" / "run" / "results.json").read_text(encoding="utf-8"))
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    row = next(line for line in readme.splitlines() if line.startswith("| [On-policy and sequence-level distillation]"))
    words = {"on-policy 0.5": "λ = 0.5", "on-policy 1": "λ = 1", "sequence-level": "sequence-level"}
    pairs = {a: [d for _, d in study.paired_by_seed(results, a, "teacher_nll_sampled")] for a in words}
    seeds = min(len(d) for d in pairs.values())
    assert f"{seeds} seed{'s' if seeds > 1 else ''}, AMD Zen 4" in row
    assert all(d > 0 for diffs in pairs.values() for d in diffs)  # "neither beats off-policy KD"
    nll = {a: study.statistics.mean(d) for a, d in pairs.items()}
    quoted = ", ".join(f"+{nll[a]:.2f} ({w})" for a, w in words.items())
    quoted = " and ".join(quoted.rsplit(", ", 1))
    assert quoted in row
