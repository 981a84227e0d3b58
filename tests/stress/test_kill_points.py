"""The "kill points" harness: 21 SIGKILLs of a daemon that ingests a labelled stream (200
events/s throughout), fine-tunes and hot-swaps: 7 mid-ingest, 7 while a fine-tune child
runs, 7 at a hot swap (aimed in turn at the gate verdict, the registry's temp dir, the new
version dir and the CURRENT change, plus a random jitter). After each kill, warm + cold
hold no event twice; after each restart, every registry version verifies and CURRENT names
one, the daemon serves CURRENT, and after a fine-tune or swap kill a new fine-tune runs to
its verdict (the loop resumes). At the end, warm + cold hold exactly the acknowledged
events. It prints every kill and the number of events lost or duplicated, which must be 0.

    .venv/bin/python -m pytest -m stress tests/stress/test_kill_points.py -s

The fast variant in the default suite is
tests/integration/test_kill_learning.py (the rig lives there).
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_kill_learning import SWAP_TARGETS, KillRig

SEED = 20261125


@pytest.mark.timeout(1800)
def test_21_sigkills_over_ingest_fine_tunes_and_swaps(broker: Any, tmp_path: Path) -> None:
    started = time.monotonic()
    # A mid-ingest kill precedes each fine-tune kill: its restart runs the
    # long fine-tune the next kill lands in, while the restart after a
    # fine-tune or swap kill runs the short one that shows the loop resumed.
    units = [("swap", target) for target in (SWAP_TARGETS * 2)[:7]] + [
        ("ingest, fine-tune", "")
    ] * 7
    random.Random(SEED).shuffle(units)
    rig = KillRig(broker.bootstrap, tmp_path, rate=200, seed=SEED)
    try:
        rig.start()
        rig.new_phase()  # enough labels for a fine-tune to start
        for kind, target in units:
            if kind == "swap":
                rig.kill_at_swap(target)
            else:
                rig.kill_mid_ingest()
                rig.restart_and_check(long_fine_tune=True)
                rig.kill_in_fine_tune()
            rig.restart_and_check(resume=True)
        rig.finish()
    finally:
        rig.close()
    print(f"\nSIGKILL harness, seed {SEED} ({time.monotonic() - started:.0f} s)\n{rig.summary()}")
    assert sorted(k.phase for k in rig.kills) == ["fine-tune"] * 7 + ["ingest"] * 7 + ["swap"] * 7
    assert not rig.problems, "\n".join(rig.problems)
