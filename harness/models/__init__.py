"""Models a scenario names: sources (generated, path, hub), tiny models and families, the tokenizer, GGUF."""
