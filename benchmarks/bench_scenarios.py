"""asv benchmarks of samedevice scenarios (the module `samedevice init asv` writes).

Every scenario marked `benchmark: true` becomes asv benchmarks over (scenario, engine,
device): decode tokens/s and ms/token, prefill time, copies, bytes and syncs per generated
token, peak CUDA memory. The suite is samedevice's (`harness.frontends.asv_suite`); what to measure is
the arguments below. $SAMEDEVICE_BENCH_SCENARIOS, $SAMEDEVICE_PLUGINS and
$SAMEDEVICE_BENCH_REPEATS / _ROUNDS / _THREADS override them for one run.
"""

from harness.frontends.asv_suite import scenario_benchmarks

Scenarios = scenario_benchmarks()  # the scenarios/ beside the imported harness package
