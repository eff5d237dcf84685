"""Render a report again from its report.json alone, for a report whose run folder is gone (a committed one):
`python -m slimlm.experiments.rerender FOLDER`. The numbers stay as report.json has them; what the report derives
from them (the paired differences, the kept-of-the-teacher ratios, the verdict) is computed again, so an older
report.json gets the current layout, and the plots are drawn again from report.json's per-arm means and seeds.
With the run folder, `slimlm report RUN_DIR --force` is the one to use: it reads the results themselves.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from slimlm.errors import SlimlmError
from slimlm.experiments.paired import paired_differences
from slimlm.experiments.plots import draw_plots
from slimlm.experiments.report import install, teacher_ratios, write_files
from slimlm.experiments.round_robin import read_round_robin
from slimlm.experiments.verdict import verdict


def rerender(folder) -> dict:
    """Rewrite report.md, report.html, report.json and plots/ in `folder` from its report.json; return the report."""
    folder = Path(folder)
    path = folder / "report.json"
    if not path.is_file():
        raise SlimlmError(f"{path} not found: rerender needs a folder holding a report.json")
    report = json.loads(path.read_text(encoding="utf-8"))
    report["paired"] = paired_differences(report["arms"], report)
    report["teacher_ratios"] = teacher_ratios(report["arms"], report["references"])
    if speeds := read_round_robin(folder):
        report["round_robin"] = speeds
    report["verdict"] = verdict(report)
    tmp = Path(tempfile.mkdtemp(prefix=".report-", dir=folder))
    try:
        _redraw(report, folder, tmp)
        write_files(report, tmp)
        install(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def _redraw(report: dict, folder: Path, tmp: Path) -> None:
    """The plots drawn again into tmp/plots; a report.json too old to draw from keeps the plots it has."""
    spec = {key: report[key] for key in ("kind", "parameter", "protocol") if key in report}  # what plotters read
    try:
        report["plots"] = draw_plots(report, spec, tmp / "plots")
    except (KeyError, ValueError, TypeError) as exc:
        shutil.rmtree(tmp / "plots", ignore_errors=True)
        if (folder / "plots").is_dir():
            shutil.copytree(folder / "plots", tmp / "plots")
        print(
            f"{folder}: plots kept as they were (report.json lacks what they need: {exc!r}); "
            "`slimlm report RUN_DIR --force` draws them from the run folder",
            file=sys.stderr,
        )


def main(argv: list[str]) -> int:
    if len(argv) < 1:
        print("usage: python -m slimlm.experiments.rerender FOLDER [FOLDER ...]", file=sys.stderr)
        return 2
    for folder in argv:
        try:
            rerender(folder)
        except SlimlmError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except (ValueError, KeyError, TypeError, OSError) as exc:  # a damaged report.json, an unwritable folder
            print(f"error: {Path(folder) / 'report.json'}: cannot render it again ({exc!r})", file=sys.stderr)
            return 1
        print(f"rewrote {Path(folder) / 'report.md'}, report.html, report.json and plots/")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
