"""Print a results file as a Markdown table: ``python -m bench.report [bench/results/X.json ...]``.

Without arguments, the newest full-run file in ``bench/results/``. With two files, a
before/after table (value and ratio of each figure in both runs). Used to refresh the
tables in ``bench/README.md``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "**no**"
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 10 else f"{v:,.1f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def table(doc: dict[str, Any]) -> str:
    rows = ["| figure | value | unit | limit | limit is | ratio | target | met |",
            "| --- | ---: | --- | ---: | --- | ---: | --- | --- |"]
    for f in doc.get("figures", []):
        limit = _fmt(f.get("limit"))
        if f.get("limit") is not None and f.get("limit_unit") and f["limit_unit"] != f["unit"]:
            limit += f" {f['limit_unit']}"
        rows.append(f"| {f['name']} | {_fmt(f['value'])} | {f['unit']} | {limit} | {f.get('limit_name') or ''} "
                    f"| {_fmt(f.get('ratio'))} | {f.get('target') or ''} | {_fmt(f.get('met'))} |")
    return "\n".join(rows)


def compare(before: dict[str, Any], after: dict[str, Any]) -> str:
    old = {f["name"]: f for f in before.get("figures", [])}
    rows = [f"| figure | before ({before.get('git')}) | ratio | after ({after.get('git')}) | ratio | target |",
            "| --- | ---: | ---: | ---: | ---: | --- |"]
    for f in after.get("figures", []):
        b = old.get(f["name"], {})
        rows.append(f"| {f['name']} | {_fmt(b.get('value'))} | {_fmt(b.get('ratio'))} | {_fmt(f['value'])} "
                    f"| {_fmt(f.get('ratio'))} | {f.get('target') or ''} |")
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    paths = [Path(a) for a in argv] or sorted(p for p in RESULTS_DIR.glob("*.json") if "quick" not in p.name)[-1:]
    if not paths:
        print("no results file", file=sys.stderr)
        return 1
    docs = [json.loads(p.read_text()) for p in paths]
    if len(docs) == 2:
        print(compare(docs[0], docs[1]))
    else:
        d = docs[0]
        m = d.get("machine", {})
        print(f"Run {d.get('started_at')} ({d.get('mode')}), git {d.get('git')}, {m.get('nproc')} cores "
              f"({m.get('cpu_model')}), load average at start {m.get('loadavg_at_start')}, "
              f"{d.get('elapsed_s')} s.\n")
        print(table(d))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
