"""The e2e flows' pytest side: one Stage per module, one rig per broker, steps printed live.

The flows themselves live in ``testbed/e2e.py``, shared with the demo (``python -m
testbed.demo``), so what the tests prove is exactly what the demo shows.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from testbed.e2e import RIGS, BrokerRig, Results, Stage, run_all

_T0 = time.monotonic()


def say(message: str) -> None:
    """Steps go to the terminal (visible with ``pytest -s``) with the module's elapsed time."""
    print(f"[{time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


def run_broker(stage: Stage, broker: str, workdir: Path) -> tuple[BrokerRig, Results]:
    """Start the broker's rig and run every flow on it; the rig keeps running for inspection."""
    rig = RIGS[broker](stage, workdir).start()
    try:
        return rig, run_all(stage, rig, say)
    except BaseException:
        rig.stop()
        raise
