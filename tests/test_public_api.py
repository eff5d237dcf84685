"""The Python API a user reads about: the README's example runs as written, and the public names stay what
they are whatever submodules get imported (a submodule named like a function would replace it)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import save_tiny_model

REPO = Path(__file__).resolve().parents[1]


def test_public_names_survive_importing_every_submodule():
    code = """
import importlib, pkgutil, slimlm
before = {name: getattr(slimlm, name) for name in slimlm.__all__}
for info in pkgutil.walk_packages(slimlm.__path__, "slimlm."):
    if not info.name.endswith("__main__"):  # running it is what importing __main__ means
        importlib.import_module(info.name)
changed = [name for name in slimlm.__all__ if getattr(slimlm, name) is not before[name]]
assert not changed, f"importing submodules replaced slimlm.{changed}"
assert all(callable(before[name]) for name in slimlm.__all__)
print("ok", len(before))
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0 and run.stdout.startswith("ok"), run.stderr[-2000:]


def readme_python_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(encoding="utf-8"), re.S)
    example = next(b for b in blocks if b.startswith("import slimlm"))
    assert "slimlm.evaluate(" in example and "slimlm.distill(" in example
    return example


def test_readme_python_example_runs_as_written(tmp_path, tiny_tokenizer):
    """The README's Python block, unchanged, with a tiny 30-layer model in the built-in teacher's place in
    a private cache (the built-in corpus is the real one, linked from the cache `make test` filled)."""
    from slimlm.cache import cache_root

    cache = tmp_path / "cache"
    (cache / "models").mkdir(parents=True)
    os.symlink(cache_root() / "packages", cache / "packages")
    save_tiny_model(cache / "models" / "smollm2-135m", tiny_tokenizer, layers=30)
    work = tmp_path / "work"
    (work / "recipes").mkdir(parents=True)
    shutil.copy(REPO / "recipes" / "pipeline.yaml", work / "recipes")
    script = work / "example.py"
    script.write_text(readme_python_example() + "\nprint('EXAMPLE-OK', sorted(report['results']))\n")
    env = {**os.environ, "SLIMLM_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=work, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "EXAMPLE-OK ['runs/d15', 'runs/s15', 'smollm2-135m']" in run.stdout
    for produced in (
        "runs/s15/slimlm.json",
        "runs/d15/model.safetensors",
        "runs/exp/t/report.md",
        "runs/exp/pipeline/report.md",
    ):
        assert (work / produced).is_file(), produced


def test_a_model_passed_where_the_settings_go_is_a_one_line_error():
    import pytest

    import slimlm
    from slimlm.errors import SlimlmError

    for stage in (slimlm.finetune, slimlm.distill):
        with pytest.raises(SlimlmError, match="pass everything else by keyword") as info:
            stage("runs/some-model", out="x")
        assert "\n" not in str(info.value)
