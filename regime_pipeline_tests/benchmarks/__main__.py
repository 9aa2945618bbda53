"""Run the benchmarks: ``python -m regime_pipeline_tests.benchmarks [--list] [name ...] [bench args]``.

Without a name every ``bench_*.py`` module in this package runs, one after the other, in this
process. A name may be given with or without the ``bench_`` prefix (``daily_aggregation`` or
``bench_daily_aggregation``). Everything from the first option on (an optional ``--``
separator is dropped) goes to each benchmark's ``main``, e.g.
``python -m regime_pipeline_tests.benchmarks daily_aggregation --runs 3`` or ``... daily_aggregation --help``.
The exit status is 0 only when every benchmark that ran met its goal.
"""

from __future__ import annotations

import importlib
import sys

from regime_pipeline_tests.benchmarks import PREFIX, available


def main(argv: list[str]) -> int:
    known = available()
    if argv[:1] in (["--list"], ["-l"]):
        print("\n".join(known))
        return 0
    if not argv[:1] or argv[0].startswith("-"):
        if argv[:1] in (["--help"], ["-h"]):
            print(__doc__)
            print("benchmarks:", ", ".join(known))
            return 0
    cut = next((i for i, a in enumerate(argv) if a.startswith("-")), len(argv))
    names, bench_args = argv[:cut], argv[cut:]
    if bench_args[:1] == ["--"]:
        bench_args = bench_args[1:]
    chosen = [n.removeprefix(PREFIX).removesuffix(".py") for n in names] or known
    unknown = [n for n in chosen if n not in known]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(known)}", file=sys.stderr)
        return 2
    failed = []
    for name in chosen:
        print(f"=== {name} ===", flush=True)
        module = importlib.import_module(f"{__package__}.{PREFIX}{name}")
        if module.main(bench_args) != 0:
            failed.append(name)
    if len(chosen) > 1:
        summary = f"=== {len(chosen) - len(failed)}/{len(chosen)} benchmarks met their goal"
        print(summary + (f"; FAIL: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
