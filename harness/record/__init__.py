"""What a run leaves: results, the run's lifecycle and run.json, reports, JUnit, merge, compare, figures."""
