"""Front ends: the CLI, the pytest plugin, the testing API, asv, doctor, check-engine, architectures."""
