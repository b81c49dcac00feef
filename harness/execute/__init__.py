"""Running cases: which cases, one case in its worker process, phases, output capture, shards and the CI matrix."""
