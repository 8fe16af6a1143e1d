"""Wall-clock timing of competing kernels, measured in the same run on the same inputs.

Used by the scripts in ``benchmarks/`` and by notebook 03. Speed-ups are reported as
ratios of times taken in one run, interleaved so that every candidate sees the same
machine load; absolute times vary from machine to machine, ratios much less.
"""

import time

import numpy as np


def interleaved_times(fns, repeats=20, inner=1, warmup=1):
    """Seconds per call of each function in ``fns`` (a dict name -> zero-argument callable).

    Each of ``repeats`` rounds calls every function ``inner`` times in turn; returns a
    dict name -> array ``(repeats,)`` of the mean time per call in each round.
    """
    for f in fns.values():
        for _ in range(warmup):
            f()
    times = {name: np.empty(repeats) for name in fns}
    for r in range(repeats):
        for name, f in fns.items():
            start = time.perf_counter()
            for _ in range(inner):
                f()
            times[name][r] = (time.perf_counter() - start) / inner
    return times


def ratio(slow, fast):
    """``slow / fast`` time ratios as a dict with the ``min`` and the ``median`` over repeats."""
    return {"min": float(np.min(slow) / np.min(fast)),
            "median": float(np.median(slow) / np.median(fast))}


def compared(times):
    """One report line for two candidates, ``times`` = ``{first: seconds, second:
    seconds}`` (arrays over repeats): each one's min and median in ms, and the ratio
    first / second (``ratio``). The benchmarks print it, so their lines read alike."""
    if len(times) != 2:
        raise ValueError(f"compared takes two candidates, got {list(times)}")
    (a, ta), (b, tb) = times.items()
    r = ratio(ta, tb)
    cells = [f"{name} {1e3 * np.min(t):8.3f} ms (med {1e3 * np.median(t):8.3f})"
             for name, t in ((a, ta), (b, tb))]
    return " | ".join(cells + [f"ratio min {r['min']:5.2f}x median {r['median']:5.2f}x"])
