"""asv benchmarks generated from the scenarios marked `benchmark: true`.

One class, parameterised over (scenario, engine, device) as found in the scenario files
(no list here to keep in sync). `setup_cache` runs every case once (`common.measure_all`:
each case `$SAMEDEVICE_BENCH_REPEATS` times, best run kept) and every `track_` reads
those figures, so asv never reruns generation per metric. A combination that cannot run
here (no GPU, engine lacks a feature, scenario does not list that device) raises
NotImplementedError in `setup`: asv shows it as skipped (n/a).

Direction: asv's regression detection takes a larger value as worse. That holds for every
figure here except `track_decode_tokens_per_s`, which is for reading; its reciprocal
`track_decode_ms_per_token` is the one asv's regression list judges correctly. The CI gate
(`samedevice compare`, nox -s bench_compare) knows the direction of each.

Transfer counts per token are deterministic: any increase is a real extra copy or sync
per generated token. They are counted on simulated GPUs (`sim:*` devices) and real ones;
a plain CPU case has nothing to count and tracks 0.
"""

from __future__ import annotations

try:
    from asv_runner.benchmarks.mark import SkipNotImplemented
except ImportError:  # imported outside asv (the project's tests)
    class SkipNotImplemented(NotImplementedError):  # type: ignore[no-redef]
        pass

from . import common


class Scenarios:
    params = common.benchmark_params()
    param_names = ["scenario", "engine", "device"]
    timeout = 3600  # setup_cache runs every case, `repeats` times each

    def setup_cache(self):
        return common.measure_all()

    def setup(self, figures, scenario, engine, device):
        self.figures = common.figures_for(figures, scenario, engine, device)

    # --- throughput and latency (best of the repeats) ---

    def track_decode_tokens_per_s(self, figures, *params):
        return self.figures["decode_tokens_per_s"]

    track_decode_tokens_per_s.unit = "tokens/s"

    def track_decode_ms_per_token(self, figures, *params):
        return self.figures["decode_ms_per_token"]

    track_decode_ms_per_token.unit = "ms/token"

    def track_prefill_s(self, figures, *params):
        return self.figures["prefill_s"]

    track_prefill_s.unit = "seconds"

    # --- transfers per generated token, per direction (deterministic) ---

    def track_h2d_per_token(self, figures, *params):
        return self.figures["per_token"]["h2d"]

    track_h2d_per_token.unit = "copies/token"

    def track_d2h_per_token(self, figures, *params):
        return self.figures["per_token"]["d2h"]

    track_d2h_per_token.unit = "copies/token"

    def track_d2d_per_token(self, figures, *params):
        return self.figures["per_token"]["d2d"]

    track_d2d_per_token.unit = "copies/token"

    def track_syncs_per_token(self, figures, *params):
        return self.figures["per_token"]["sync"]

    track_syncs_per_token.unit = "syncs/token"

    # --- bytes per generated token, per direction ---

    def track_h2d_bytes_per_token(self, figures, *params):
        return self.figures["bytes_per_token"]["h2d"]

    track_h2d_bytes_per_token.unit = "bytes/token"

    def track_d2h_bytes_per_token(self, figures, *params):
        return self.figures["bytes_per_token"]["d2h"]

    track_d2h_bytes_per_token.unit = "bytes/token"

    def track_d2d_bytes_per_token(self, figures, *params):
        return self.figures["bytes_per_token"]["d2d"]

    track_d2d_bytes_per_token.unit = "bytes/token"

    # --- memory ---

    def track_peak_memory_bytes(self, figures, *params):
        """torch.cuda.max_memory_allocated over the case: real GPUs only (n/a elsewhere)."""
        peak = self.figures["peak_memory_bytes"]
        if peak is None:
            raise SkipNotImplemented("peak memory is measured on real CUDA devices only")
        return peak

    track_peak_memory_bytes.unit = "bytes"
