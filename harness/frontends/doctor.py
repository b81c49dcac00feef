"""`samedevice doctor`: what this machine can run, and why not where it can't."""

from __future__ import annotations

import platform
import sys


def report_lines() -> list[str]:
    import torch

    from harness import __version__
    from harness.engines import all_engines, broken_plugins
    from harness.engines.versions import describe_requirements, library_versions
    from harness.execute.cases import simulation_unavailable_reason

    lines = [
        f"samedevice {__version__}",
        f"python     {platform.python_version()} ({sys.executable})",
        f"torch      {torch.__version__} (CUDA build: {torch.version.cuda or 'no'})",
    ]
    installed = {name: version for name, version in library_versions().items() if name != "torch"}
    lines.append("libraries  " + ", ".join(f"{name} {version}" for name, version in installed.items() if version))
    missing = [name for name, version in installed.items() if not version]
    if missing:
        lines.append("           not installed: " + ", ".join(missing))
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            lines.append(f"device     cuda:{index} {torch.cuda.get_device_name(index)}")
    else:
        lines.append("device     no CUDA device visible: cuda:N and auto cases skip (fail with --strict-devices)")
    reason = simulation_unavailable_reason()
    lines.append(f"simulation {'available: sim:cuda:N and sim:auto cases run' if reason is None else 'unavailable: ' + reason}")
    for name, engine in sorted(all_engines().items()):
        why = engine.unavailable_reason()
        caps = engine.capabilities
        state = "ok" if why is None else f"unavailable: {why}"
        needs = describe_requirements(name)
        families = "any transformers architecture" if caps.families is None else ", ".join(sorted(caps.families))
        lines.append(f"engine     {name}: {state}; features {', '.join(sorted(caps.features)) or '-'}; "
                     f"devices {', '.join(sorted(caps.devices))}{', sim' if caps.runs_on_torch else ''}; families {families}"
                     f"{'; needs ' + needs if needs else ''}")
    for name, why in sorted(broken_plugins().items()):
        lines.append(f"engine     {name}: plugin failed to load: {why}")
    return lines
