"""samedevice benchmarks (asv.conf.json: benchmark_dir).

- `bench_*.py`: asv benchmark modules (`bench_scenarios.py`: generated from the scenarios
  marked `benchmark: true`); `nox -s bench` gives asv only these and `common.py`.
- `common.py`: shared fixtures (cases, measuring, machine metadata) and the runner behind
  `nox -s bench_compare`; `refs.py`: asv on git refs and the base-vs-head gate;
  `dashboard.py`: makes the published dashboard work offline and screenshots it.
- Other files are standalone scripts.

asv imports *every* module in this package to discover benchmarks, at every commit it
measures: a module here must import cleanly on its own (no `sys.path` edits, project
imports that may be absent in an older commit kept inside functions) and must not put
functions named `time_*`, `track_*`, `mem_*` or `peakmem_*` in its namespace.
"""
