"""samedevice: regression tests and benchmarks for LLM inference across devices."""

__version__ = "0.1.0"
