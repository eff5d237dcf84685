"""Hostile or mistaken input found by an adversarial pass: each gets one line naming the problem and the fix,
before any long work, and leaves no half-written output."""

from __future__ import annotations

import errno
import json
import math
import shutil
from pathlib import Path

import pytest

from slimlm.errors import SlimlmError
from slimlm.settings import DistillSettings, FinetuneSettings, load_recipe
from test_errors import assert_one_line_error, run_cli


def _recipe(text: str, name: str = "r.yaml") -> Path:
    path = Path(name)
    path.write_text(text, encoding="utf-8")
    return path


def _model_copy(src, tmp_path, name="model") -> Path:
    dest = tmp_path / name
    shutil.copytree(src, dest)
    return dest


def _no_model_load(monkeypatch):
    """Make any weight load or data preparation by a stage fail the test: the checks under test must come
    before it (they need only the settings and config.json)."""
    import importlib
    import pkgutil
    import sys

    import slimlm.stages
    import slimlm.training

    for package in (slimlm.stages, slimlm.training):
        for info in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{package.__name__}.{info.name}")

    def refuse(*args, **kwargs):
        raise AssertionError("a model or its data was loaded before the settings were checked")

    for name, module in list(sys.modules.items()):
        if name.startswith(("slimlm.stages", "slimlm.training")):
            for attr in ("load_model", "prepare_data"):
                if hasattr(module, attr):
                    monkeypatch.setattr(module, attr, refuse)


# --------------------------------------------------------------------------- 1. recipe values of the wrong type


@pytest.mark.parametrize(
    "values,words",
    [
        ({"temperature": "hot"}, ["temperature", "'hot'", "number"]),
        ({"student_config": "wide"}, ["student_config", "'wide'", "mapping"]),
        ({"max_tokens": 1.5}, ["max_tokens", "1.5", "integer"]),
        ({"batch_size": True}, ["batch_size", "True", "integer"]),  # bools are not counts
        ({"alpha": True}, ["alpha", "True", "number"]),
        ({"temperature": float("inf")}, ["temperature", "inf", "finite"]),
        ({"teacher_cache": "yes"}, ["teacher_cache", "true or false"]),
        ({"data": 2024}, ["data", "2024", "string"]),
        ({"fsdp_config": [1, 2]}, ["fsdp_config", "mapping"]),
    ],
)
def test_distill_settings_types(values, words):
    with pytest.raises(SlimlmError) as err:
        DistillSettings.from_dict({"keep_layers": "0", **values}).validate()
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


def test_ints_pass_for_floats_and_layer_lists_are_normalised():
    settings = DistillSettings.from_dict(
        {"temperature": 2, "learning_rate": 1, "keep_layers": [0, 1, 5], "cache_layers": 3}
    ).validate()
    assert settings.temperature == 2 and settings.keep_layers == "0,1,5" and settings.cache_layers == "3"
    assert DistillSettings.from_dict({"student": Path("s"), "max_time": 90}).validate().student == "s"


@pytest.mark.parametrize(
    "values,words",
    [
        ({"rank": "8"}, ["rank", "'8'"]),
        ({"learning_rate": "fast"}, ["learning_rate", "'fast'"]),
        ({"learning_rate": float("nan")}, ["learning_rate", "nan"]),
        ({"dropout": [0.1]}, ["dropout"]),
    ],
)
def test_finetune_settings_types(values, words):
    with pytest.raises(SlimlmError) as err:
        FinetuneSettings.from_dict({"model": "m", **values}).validate()
    for word in words:
        assert word in str(err.value), str(err.value)


def test_settings_keys_must_be_names():
    with pytest.raises(SlimlmError, match="not a name"):
        DistillSettings.from_dict({1: 2})


@pytest.mark.parametrize(
    "text,words",
    [
        ("1: 2\n", ["key 1", "setting name"]),
        ("true: 2\n", ["key True"]),
        ("a: " + "[" * 2000 + "]" * 2000 + "\n", ["nested too deeply"]),
        ("a:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 2000)), ["nested too deeply"]),
        ("- temperature\n", ["mapping"]),
    ],
)
def test_load_recipe_refuses_shapes(text, words):
    with pytest.raises(SlimlmError) as err:
        load_recipe(_recipe(text))
    for word in words:
        assert word in str(err.value), str(err.value)


@pytest.mark.parametrize(
    "text,words",
    [
        ("temperature: hot\nkeep_layers: '0'\n", ["temperature", "'hot'"]),
        ("1: 2\n", ["key 1"]),
        ("student_config: wide\nkeep_layers: '0'\n", ["student_config", "'wide'"]),
        ("a: " + "[" * 2000 + "]" * 2000 + "\n", ["nested too deeply"]),
        ("feature_layers: 6:3\nkeep_layers: '0'\n", ["feature_layers", "363", "quote"]),  # YAML 1.1 reads 6:3 as 363
    ],
)
def test_distill_recipe_cli(capsys, tiny_teacher, text_dir, text, words):
    recipe = _recipe(text)
    code, err = run_cli(
        capsys,
        "distill",
        "--recipe",
        recipe,
        "--teacher",
        tiny_teacher,
        "--data",
        text_dir,
        "--out",
        "out",
        "--max-steps",
        "1",
    )
    assert_one_line_error(code, err, *words)


PIPELINE = "teacher: {teacher}\ndata: {data}\n"


@pytest.mark.parametrize(
    "body,words",
    [
        ("stages: {{distill: 5}}\n", ["stages", "list"]),
        ("stages:\n  - distill: 5\n", ["stage 1", "mapping", "5"]),
        ("stages:\n  - student: {{layers: 2}}\n  - prune: {{sparsity: lots}}\n", ["stage 2", "--sparsity", "lots"]),
        ("stages:\n  - student: {{layers: 2}}\n  - prune: {{method: nm, nm: '4:2'}}\n", ["--nm", "0 < N < M"]),
        ("stages:\n  - student: {{layers: 2}}\n  - prune: {{kv_groups_removed: -1}}\n", ["--kv-groups-removed"]),
        ("stages:\n  - student: {{layers: 2}}\n  - quantize: {{bits: '8'}}\n", ["stage 2", "--bits"]),
        (
            "stages:\n  - student: {{layers: 2}}\n  - quantize: {{granularity: group, group_size: '64'}}\n",
            ["--group-size"],
        ),
        ("stages:\n  - student: {{layers: two}}\n", ["stage 1", "layers", "'two'"]),
        ("stages:\n  - distill: {{keep_layers: '0', temperature: hot}}\n", ["stage 1", "temperature", "'hot'"]),
        ("stages:\n  - distill: {{1: 2}}\n", ["stage 1", "key 1"]),
        ("seeds: x\nstages: [{{student: {{layers: 2}}}}]\n", ["seeds", "'x'"]),
        ("seeds: [0, 1.5]\nstages: [{{student: {{layers: 2}}}}]\n", ["seeds"]),
        ("evaluate: 5\nstages: [{{student: {{layers: 2}}}}]\n", ["evaluate", "mapping"]),
    ],
)
def test_pipeline_recipe_types(capsys, tiny_teacher, text_dir, body, words):
    recipe = _recipe(PIPELINE.format(teacher=tiny_teacher, data=text_dir) + body.format())
    code, err = run_cli(capsys, "pipeline", recipe, "--out", "out")
    assert_one_line_error(code, err, *words)


def test_pipeline_teacher_must_be_a_string(capsys):
    code, err = run_cli(
        capsys, "pipeline", _recipe("teacher: [a, b]\nstages: [{student: {layers: 2}}]\n"), "--out", "out"
    )
    assert_one_line_error(code, err, "teacher", "string")


# --------------------------------------------------------------------------- 2. NaN and infinity


@pytest.mark.parametrize(
    "name,value",
    [
        ("temperature", math.inf),
        ("feature_weight", math.nan),
        ("attention_weight", math.nan),
        ("alpha", math.nan),
        ("learning_rate", math.nan),
        ("learning_rate", math.inf),
        ("max_grad_norm", math.inf),
    ],
)
def test_non_finite_values_are_refused(name, value):
    with pytest.raises(SlimlmError, match=name.replace("_", ".")):
        DistillSettings.from_dict({"keep_layers": "0", name: value}).validate()
    with pytest.raises(SlimlmError, match="finite"):  # a dataclass built in Python is checked the same way
        DistillSettings(keep_layers="0", **{name: value}).validate()


@pytest.mark.parametrize(
    "flag,value",
    [
        ("--temperature", "inf"),
        ("--feature-weight", "nan"),
        ("--attention-weight", "nan"),
        ("--alpha", "nan"),
        ("--learning-rate", "nan"),
        ("--learning-rate", "inf"),
    ],
)
def test_non_finite_flags_cli(capsys, tiny_teacher, text_dir, flag, value):
    code, err = run_cli(
        capsys,
        "distill",
        "--teacher",
        tiny_teacher,
        "--data",
        text_dir,
        "--keep-layers",
        "0",
        "--out",
        "out",
        "--max-steps",
        "1",
        flag,
        value,
    )
    assert_one_line_error(code, err, flag.lstrip("-").replace("-", "_"), value)


def test_finetune_lora_alpha_inf():
    with pytest.raises(SlimlmError, match="lora_alpha"):
        FinetuneSettings.from_dict({"model": "m", "lora_alpha": math.inf}).validate()


# --------------------------------------------------------------------------- 3. prune settings before any load


@pytest.mark.parametrize(
    "argv,words",
    [
        (["--method", "nm", "--nm", "4:2"], ["--nm", "0 < N < M"]),
        (["--method", "nm", "--nm", "0:4"], ["--nm"]),
        (["--method", "nm", "--nm", "1:5"], ["--nm", "multiple of M=5"]),  # tiny widths are 32 and 64
        (["--method", "structured", "--kv-groups-removed", "99"], ["--kv-groups-removed", "2 key/value", "0..1"]),
        (["--method", "structured", "--kv-groups-removed", "2"], ["--kv-groups-removed", "0..1"]),
        (["--method", "structured", "--kv-groups-removed", "-1"], ["--kv-groups-removed", ">= 0"]),
    ],
)
def test_prune_refuses_before_loading(capsys, monkeypatch, tiny_teacher, text_dir, argv, words):
    _no_model_load(monkeypatch)
    code, err = run_cli(capsys, "prune", tiny_teacher, "--calibration", text_dir, *argv, "--out", "out")
    assert_one_line_error(code, err, *words)


def test_prune_api_checks_types(monkeypatch, tiny_teacher):
    from slimlm.stages.prune import prune

    _no_model_load(monkeypatch)
    for kwargs, word in [
        ({"sparsity": "lots"}, "--sparsity"),
        ({"sparsity": math.nan}, "--sparsity"),
        ({"kv_groups_removed": 1.5, "method": "structured"}, "--kv-groups-removed"),
        ({"scope": "everywhere"}, "--scope"),
        ({"recover_tokens": True}, "--recover-tokens"),
    ]:
        with pytest.raises(SlimlmError, match=word):
            prune(str(tiny_teacher), out="out", **kwargs)
        assert not Path("out").exists() and not Path("out.partial").exists()


def test_quantize_args_types():
    from slimlm.settings import QuantizeSettings

    for kwargs, word in [
        ({"bits": 8.0}, "--bits"),
        ({"bits": "4"}, "--bits"),
        ({"bits": True}, "--bits"),
        ({"granularity": "group", "group_size": "64"}, "--group-size"),
        ({"symmetric": "no"}, "--symmetric"),
        ({"granularity": ["x"]}, "--granularity"),
    ]:
        with pytest.raises(SlimlmError, match=word):
            QuantizeSettings.from_dict({"model": "m", "out": "o", **kwargs}).validate()


# --------------------------------------------------------------------------- 4. --keep-layers ranges


def test_reversed_keep_layers_range():
    from slimlm.methods.layers import parse_keep_layers

    with pytest.raises(SlimlmError) as err:
        parse_keep_layers("0,5-2", 30)
    assert "reversed" in str(err.value) and "2-5" in str(err.value) and "(none)" not in str(err.value)
    with pytest.raises(SlimlmError, match="layer 99999999999 is out of range"):  # no list that long is built
        parse_keep_layers("0-99999999999", 30)
    assert parse_keep_layers("2-5", 30) == [2, 3, 4, 5]


def test_reversed_keep_layers_cli(capsys, tiny_teacher, text_dir):
    code, err = run_cli(
        capsys,
        "distill",
        "--teacher",
        tiny_teacher,
        "--data",
        text_dir,
        "--keep-layers",
        "3-1",
        "--out",
        "out",
        "--max-steps",
        "1",
        "--block-size",
        "32",
    )
    assert_one_line_error(code, err, "--keep-layers", "reversed", "1-3")


# --------------------------------------------------------------------------- 5. GGUF export


def _export(capsys, model, out="m.gguf"):
    code, err = run_cli(capsys, "export", model, "--out", out)
    assert not Path(out).exists() and not Path(out + ".partial").exists(), "half-written GGUF left behind"
    return code, err


def test_export_into_read_only_folder(capsys, tiny_teacher, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        try:  # root writes anyway (os.access and chmod do not bind it): nothing to test then
            (folder / "probe").write_bytes(b"")
            (folder / "probe").unlink()
            pytest.skip("this user can write into a read-only folder (root)")
        except OSError:
            pass
        code, err = run_cli(capsys, "export", tiny_teacher, "--out", folder / "m.gguf")
        assert_one_line_error(code, err, "--out", "writable")
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)


def test_export_disk_full(capsys, monkeypatch, tiny_teacher):
    import gguf

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", full)
    code, err = _export(capsys, tiny_teacher)
    assert_one_line_error(code, err, "disk", "full", "--out")
    assert list(Path(".").glob("*.gguf*")) == []


def test_export_other_write_error(capsys, monkeypatch, tiny_teacher):
    import gguf

    def broken(self, *args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(gguf.GGUFWriter, "write_kv_data_to_file", broken)
    code, err = _export(capsys, tiny_teacher)
    assert_one_line_error(code, err, "cannot write", "Input/output error")


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", ""])
def test_invalid_config_json(capsys, tiny_teacher, tmp_path, text):
    model = _model_copy(tiny_teacher, tmp_path)
    (model / "config.json").write_text(text)
    code, err = _export(capsys, model)
    assert_one_line_error(code, err, "config.json", "restore")
    code, err = run_cli(capsys, "quantize", model, "--data", "sotu", "--out", "out")
    assert_one_line_error(code, err, "config.json")
    assert "--trust-remote-code" not in err[-1]


@pytest.mark.parametrize(
    "key,value,words",
    [
        ("vocab_size", 1e11, ["vocab_size", "positive integer"]),
        ("vocab_size", 100_000_000_000, ["vocab_size 100000000000", "rows"]),
        ("num_hidden_layers", 10**12, ["num_hidden_layers", "layers"]),
        ("hidden_size", "32", ["hidden_size", "positive integer"]),
        ("num_attention_heads", 0, ["num_attention_heads"]),
    ],
)
def test_export_hostile_config_sizes(capsys, tiny_teacher, tmp_path, key, value, words):
    model = _model_copy(tiny_teacher, tmp_path)
    config = json.loads((model / "config.json").read_text())
    config[key] = value
    (model / "config.json").write_text(json.dumps(config))
    code, err = _export(capsys, model)
    assert_one_line_error(code, err, *words)


@pytest.mark.parametrize("token_id", [100_000_000_000, -5])
def test_export_hostile_tokenizer_id(capsys, tiny_teacher, tmp_path, token_id):
    model = _model_copy(tiny_teacher, tmp_path)
    spec = json.loads((model / "tokenizer.json").read_text())
    spec["model"]["vocab"]["hostile"] = token_id
    (model / "tokenizer.json").write_text(json.dumps(spec))
    code, err = _export(capsys, model)
    assert_one_line_error(code, err, "tokenizer.json", str(token_id), "rows")


def test_export_malformed_tokenizer(capsys, tiny_teacher, tmp_path):
    model = _model_copy(tiny_teacher, tmp_path)
    (model / "tokenizer.json").write_text("{broken")
    code, err = _export(capsys, model)
    assert_one_line_error(code, err, "tokenizer.json", "not valid JSON")


# --------------------------------------------------------------------------- 6. a damaged data cache entry


def test_truncated_token_cache_is_rebuilt(capsys, monkeypatch, tmp_path, tiny_tokenizer, text_dir):
    from slimlm.data.corpus import prepare_data

    monkeypatch.setenv("SLIMLM_CACHE", str(tmp_path / "cache"))
    first = prepare_data(str(text_dir), tiny_tokenizer, 32)
    (cached,) = (tmp_path / "cache").rglob("tokens.safetensors")
    cached.write_bytes(cached.read_bytes()[: cached.stat().st_size // 2])
    capsys.readouterr()
    again = prepare_data(str(text_dir), tiny_tokenizer, 32)
    err = capsys.readouterr().err
    assert "damaged" in err and cached.name in err and "Traceback" not in err
    assert again.train.equal(first.train) and again.test.equal(first.test)
    assert cached.exists()
    third = prepare_data(str(text_dir), tiny_tokenizer, 32)  # the rebuilt entry is read back as it is
    assert "damaged" not in capsys.readouterr().err and third.val.equal(first.val)


def test_unwritable_cache_root(monkeypatch, tmp_path):
    from slimlm.cache import cache_root

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("SLIMLM_CACHE", str(blocker / "cache"))
    with pytest.raises(SlimlmError, match="SLIMLM_CACHE"):
        cache_root()


# --------------------------------------------------------------------------- 7. sources.model_config


def test_model_config_reads_no_weights(monkeypatch, tiny_teacher):
    import transformers

    from slimlm.sources import model_config

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    config = model_config(str(tiny_teacher))
    assert config.num_hidden_layers == 4 and config.num_key_value_heads == 2


def test_model_config_errors(tmp_path, tiny_teacher):
    from slimlm.sources import model_config

    with pytest.raises(SlimlmError, match="does not exist"):
        model_config("./no/such/model")
    model = _model_copy(tiny_teacher, tmp_path)
    (model / "config.json").write_text('{"model_type": "llama",')
    with pytest.raises(SlimlmError, match="config.json is not valid JSON"):
        model_config(model)
    (model / "config.json").write_text('{"model_type": "no-such-architecture"}')
    with pytest.raises(SlimlmError) as err:
        model_config(model)
    assert "\n" not in str(err.value) and "--trust-remote-code" not in str(err.value)


def test_export_out_under_a_file(capsys, tiny_teacher, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, err = run_cli(capsys, "export", tiny_teacher, "--out", blocker / "sub" / "m.gguf")
    assert_one_line_error(code, err, "--out", "writable")


def test_full_cache_disk_costs_only_the_reuse(capsys, monkeypatch, tmp_path, tiny_tokenizer, text_dir):
    from safetensors import SafetensorError

    import slimlm.data.corpus
    from slimlm.data.corpus import prepare_data

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")

    monkeypatch.setenv("SLIMLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(slimlm.data.corpus, "save_file", full)
    splits = prepare_data(str(text_dir), tiny_tokenizer, 32)
    assert splits.train.shape[1] == 32 and "could not cache" in capsys.readouterr().err
    assert not list((tmp_path / "cache").rglob("tokens.safetensors"))


# --------------------------------------------------------------------------- shape checks from config.json only


@pytest.mark.parametrize(
    "extra,words",
    [
        (["--keep-layers", "0,3", "--feature-layers", "4:9"], ["--feature-layers", "student index 9", "0..2"]),
        (["--keep-layers", "0,3", "--feature-layers", "40:1"], ["--feature-layers", "teacher index 40", "0..4"]),
        (["--keep-layers", "0,3", "--attention-layers", "1:5", "--attention-weight", "1"], ["--attention-layers"]),
        (["--keep-layers", "0-9"], ["--keep-layers", "out of range"]),
        (["--layers", "9"], ["--layers 9", "1..4"]),
        (
            ["--keep-layers", "0,3", "--teacher-cache", "--cache-mode", "topk", "--top-k", "1000000000"],
            ["--top-k 1000000000", "vocabulary"],
        ),
    ],
)
def test_distill_shape_checks_need_no_weights(capsys, monkeypatch, tiny_teacher, text_dir, extra, words):
    _no_model_load(monkeypatch)
    code, err = run_cli(
        capsys, "distill", "--teacher", tiny_teacher, "--data", text_dir, "--out", "out", "--max-steps", "1", *extra
    )
    assert_one_line_error(code, err, *words)


def test_student_layers_checked_from_the_config(capsys, monkeypatch, tiny_teacher, text_dir):
    _no_model_load(monkeypatch)
    code, err = run_cli(
        capsys, "student", "--teacher", tiny_teacher, "--data", text_dir, "--layers", "9", "--out", "out"
    )
    assert_one_line_error(code, err, "--layers 9", "1..4")


@pytest.mark.parametrize("flag", ["--repeats", "--new-tokens"])
def test_eval_counts_checked_before_measuring(capsys, monkeypatch, tiny_teacher, text_dir, flag):
    _no_model_load(monkeypatch)
    code, err = run_cli(capsys, "eval", tiny_teacher, "--data", text_dir, flag, "0")
    assert_one_line_error(code, err, flag, "positive integer")


# --------------------------------------------------------------------------- precision in recipes and experiments


def test_pipeline_precision_must_be_known(capsys, tiny_teacher, text_dir):
    recipe = _recipe(
        f"teacher: {tiny_teacher}\ndata: {text_dir}\nprecision: fp16\nstages:\n  - student: {{keep_layers: '0,3'}}\n"
    )
    code, err = run_cli(capsys, "pipeline", recipe, "--out", "out")
    assert_one_line_error(code, err, "--precision must be one of auto, fp32, bf16", "fp16")


@pytest.mark.parametrize(
    "settings,flag,words",
    [
        ({"precision": "half"}, "auto", ["--precision must be one of"]),
        ({"bf16": "yes"}, "auto", ["bf16 must be true or false"]),
    ],
)
def test_experiment_recipe_precision(tiny_teacher, text_dir, settings, flag, words):
    import slimlm

    with pytest.raises(SlimlmError) as caught:
        slimlm.experiment(
            "temperature", out="out", teacher=str(tiny_teacher), data=str(text_dir), settings=settings, precision=flag
        )
    for word in words:
        assert word in str(caught.value)
    assert not Path("out").exists()


@pytest.mark.parametrize("settings,flag", [({"precision": "fp32"}, "bf16"), ({"bf16": True}, "fp32")])
def test_experiment_flag_beats_the_recipe_and_says_so(tiny_teacher, text_dir, capsys, settings, flag):
    """One rule in every stage: an explicit flag > the recipe > the default, each override said in one line."""
    import slimlm

    with pytest.raises(SlimlmError, match="--max-tokens"):  # stops at validation, after the precision is settled
        slimlm.experiment(
            "temperature",
            out="out",
            teacher=str(tiny_teacher),
            data=str(text_dir),
            settings=settings,
            precision=flag,
            max_tokens=0,
        )
    assert f"--precision {flag} overrides" in capsys.readouterr().err


def _bench_main(name: str):
    """The main() of bench/NAME.py (bench scripts are not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.parametrize(
    "argv,words",
    [
        (["teacher=MISSING"], ["decode_speed: teacher=", "missing-model"]),
        (["a=smollm2-135m", "a=smollm2-135m"], ["different NAME"]),
        (["smollm2-135m", "--rounds", "0"], ["--rounds >= 1"]),
        (["smollm2-135m", "--new-tokens", "0"], ["--new-tokens >= 1"]),
    ],
)
def test_decode_speed_bench_bad_input(tmp_path, capsys, argv, words):
    with pytest.raises(SystemExit) as stopped:
        argv = [a.replace("MISSING", str(tmp_path / "missing-model")) for a in argv]
        _bench_main("decode_speed")([*argv, "--out", str(tmp_path / "speed.json")])
    message = str(stopped.value.code) if stopped.value.code != 2 else capsys.readouterr().err.strip().splitlines()[-1]
    assert "Traceback" not in message
    for word in words:
        assert word in message, message
    assert not (tmp_path / "speed.json").exists()


def test_decode_speed_bench_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "speed.json"
    out.write_text("{}")
    with pytest.raises(SystemExit):
        _bench_main("decode_speed")(["smollm2-135m", "--out", str(out)])
    assert "exists" in capsys.readouterr().err and out.read_text() == "{}"
