"""Describe the machine a benchmark ran on, and write its results (Markdown + JSON)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def describe_machine() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = None
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory_gib = round(pages / 2**30, 1)
    except (ValueError, OSError):
        pass
    info = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "memory_gib": memory_gib,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    except ImportError:
        pass
    info["commit"] = current_commit()
    return info


def current_commit() -> str:
    """The short commit of this checkout; ``VFNET_COMMIT`` names it for a copied tree (a GPU machine's),
    whose .git, if any, is not its commit."""
    if os.environ.get("VFNET_COMMIT"):
        return os.environ["VFNET_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False,
                              cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        return "unknown"


def machine_markdown(info: dict) -> str:
    return "\n".join(f"- {key}: {value}" for key, value in info.items())


def write_results(name: str, title: str, body_markdown: str, data: dict) -> Path:
    """Write ``results/<name>.md`` and ``results/<name>.json`` with the machine description."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    machine = describe_machine()
    (RESULTS / f"{name}.json").write_text(json.dumps({"machine": machine, **data}, indent=2) + "\n")
    text = f"# {title}\n\n{body_markdown.strip()}\n\n## Machine\n{machine_markdown(machine)}\n"
    (RESULTS / f"{name}.md").write_text(text)
    return RESULTS / f"{name}.md"
