"""The command starts without torch (seconds on a cold machine): `samedevice --help`, `schema`,
`report` and `merge` import the CLI, results and reports, none of which may pull torch in,
for instance through a package's __init__ (harness.devices re-exports the simulator lazily)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["harness.frontends.cli", "harness.record.report", "harness.record.merge",
                                    "harness.record.compare", "harness.devices.ledger", "harness.format.loader"])
def test_importing_it_does_not_import_torch(module):
    probe = f"import sys, {module}; print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"{module} imports torch: {done.stdout[:200]}"


def test_the_devices_package_still_exports_the_simulator():
    from harness import devices
    from harness.devices.simulate import simulated_gpus

    assert devices.simulated_gpus is simulated_gpus
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        devices.nope  # noqa: B018
