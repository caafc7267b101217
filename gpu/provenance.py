"""Provenance of a GPU run: which card, driver and software produced a record."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess


def _cmd(args) -> str:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception as e:  # noqa: BLE001 - provenance must never abort a probe run
        return f"unavailable: {e}"


def provenance(**extra) -> dict:
    """A JSON-able dict: GPU, driver, CUDA, torch, triton, numba, python, git commit, time."""
    import numpy

    info = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "git_commit": os.environ.get("FLASHBITS_COMMIT") or _cmd(["git", "rev-parse", "HEAD"]) or "unknown",
        "git_dirty": os.environ.get("FLASHBITS_DIRTY", "unknown"),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            cap = torch.cuda.get_device_capability(0)
            info["compute_capability"] = f"{cap[0]}.{cap[1]}"
    except ImportError:
        info["torch"] = None
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    try:
        import numba

        info["numba"] = numba.__version__
    except ImportError:
        pass
    try:
        import ml_dtypes

        info["ml_dtypes"] = ml_dtypes.__version__
    except ImportError:
        pass
    smi = _cmd(["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit",
                "--format=csv,noheader"])
    info["nvidia_smi"] = smi
    info.update(extra)
    return info


def provenance_json(**extra) -> str:
    return json.dumps(provenance(**extra), sort_keys=True)
