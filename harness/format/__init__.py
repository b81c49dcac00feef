"""The scenario format: its pydantic models, the YAML loader and its checks."""
