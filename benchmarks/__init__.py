"""samedevice benchmarks (asv.conf.json: benchmark_dir).

- `bench_scenarios.py`: the asv benchmarks, generated from the scenarios marked
  `benchmark: true`; a few lines building the suite the package ships
  (`harness/frontends/asv_suite.py`), the same module `samedevice init asv` writes into other
  repositories. `nox -s bench` gives asv only the suite, not the scripts beside it.
- `refs.py`: asv on git refs and the base-vs-head gate (`nox -s bench`, `nox -s bench_compare`);
  `dashboard.py`: makes the published dashboard work offline and screenshots it.
- Other files are standalone scripts.

asv imports *every* module in this package to discover benchmarks: a module here must
import cleanly on its own (no `sys.path` edits, project imports that may be absent in an
older commit kept inside functions) and must not put functions named `time_*`, `track_*`,
`mem_*` or `peakmem_*` in its namespace.
"""
