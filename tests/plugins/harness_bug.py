"""Loaded through $SAMEDEVICE_PLUGINS: plants a bug in the harness's own feature check (as
Python's `re` rejecting a schema pattern would), so a case hits an exception that is the
harness's fault, not the engine's."""

import re

import harness.checks.features
import harness.execute.case


def _broken_check(spec, generation):
    raise re.error("bad character range b-a at position 1")


harness.checks.features.check_features = _broken_check
harness.execute.case.feature_checks.check_features = _broken_check
