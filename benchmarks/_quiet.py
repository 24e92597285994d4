"""Wait for a quiet machine before a timed step (shared by the benchmarks).

Numbers taken while other work runs are meaningless on 2 cores: each timed
step first waits, 60 s at a time and up to `max_wait` seconds, until the
1-minute load average is below `max_load`, then times anyway."""

from __future__ import annotations

import os
import time

LOADS: list[float] = []  # the load seen at the start of each timed step


def wait_quiet(max_load: float, max_wait: float) -> float:
    waited = 0.0
    while True:
        load = os.getloadavg()[0]
        if load < max_load or waited >= max_wait:
            if load >= max_load:
                print(
                    f"  ! load {load:.2f} still >= {max_load} after {waited:.0f}s: timing anyway",
                    flush=True,
                )
            LOADS.append(load)
            return load
        print(f"  (load {load:.2f} >= {max_load}: waiting 60s)", flush=True)
        time.sleep(60)
        waited += 60
