"""A plugin module that cannot be imported (its engine's library is missing)."""

raise ImportError("No module named 'fancy_engine_lib'")
