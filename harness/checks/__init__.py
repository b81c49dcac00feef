"""The checks a case goes through, as pure functions of their evidence, and the verdict."""
