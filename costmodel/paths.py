"""Where the cost model's files live: figures shipped with the package, and the shared data.

The shared measured data is never copied into the project: it is read from
$SAMULLM_SHARED_DATA, else from ../shared/data next to the repository root.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DATA = Path(__file__).resolve().parent / "data"
REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    env = os.environ.get("SAMULLM_SHARED_DATA")
    return Path(env) if env else (REPO_ROOT.parent / "shared" / "data").resolve()


def shared_data(name: str) -> Path:
    """A file of the shared data folder (it may not exist on this machine)."""
    return shared_data_dir() / name


def package_data(name: str) -> Path:
    """A derived-figures file shipped in costmodel/data/."""
    return PACKAGE_DATA / name


def calibration_roots() -> list[Path]:
    """Folders holding figures calibrated on this installation, first match wins: each entry
    of $SAMULLM_LATENCY_DIR (os.pathsep-separated), then $SAMULLM_HOME/calibration, else
    ./.samullm/calibration (the default home of the runner and `samullm calibrate`). Inside a
    root: DEVICE/ holds latency fits, startup/DEVICE.json a start-up fit."""
    roots = [Path(p) for p in os.environ.get("SAMULLM_LATENCY_DIR", "").split(os.pathsep) if p]
    home = os.environ.get("SAMULLM_HOME")
    roots.append((Path(home) if home else Path(".samullm")).resolve() / "calibration")
    return roots
