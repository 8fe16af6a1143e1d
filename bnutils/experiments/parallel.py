"""Fill the results cache with several independent runs at once, one per CPU core.

Chapters 6 and 7 train dozens of small CNNs. A convolution this small keeps a second
thread of PyTorch's busy only part of the time, so two single-threaded processes, one
run each, get through a list of runs faster than one process with two threads.
``prefill`` runs the cached experiment calls it is given in such worker processes;
each call stores its result in the cache (``bnutils.cache.train_or_load``), under the
same key as when the notebook makes it, so the notebook's own calls afterwards only
load. Nothing about a result depends on how the cache was filled, except the float32
rounding of one thread against two.
"""

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor


def _single_thread():
    import torch

    torch.set_num_threads(1)


def _call(fn, args, kwargs):
    fn(*args, **kwargs)


MAX_WORKERS = 8  # each holds its data set and a stack of networks: ~0.5-1 GB of memory


def workers_default():
    """One worker per CPU core this process may use, at most ``MAX_WORKERS``. A run's
    result does not depend on it: each run trains in one process on one thread."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, cores))


def prefill(calls, workers=None):
    """Run ``calls``, a list of ``(fn, args, kwargs)``, in ``workers`` processes.

    Each ``fn`` must be a module-level (picklable) function that caches its result;
    what it returns is dropped. ``workers=1`` runs the calls here, one after another.
    Returns the number of calls. An exception in a call is raised here.
    """
    calls = list(calls)
    workers = workers_default() if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if workers == 1 or len(calls) <= 1:
        for fn, args, kwargs in calls:
            fn(*args, **kwargs)
        return len(calls)
    context = multiprocessing.get_context("spawn")  # fork is unsafe once torch runs
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_single_thread) as pool:
        for future in [pool.submit(_call, fn, args, kwargs) for fn, args, kwargs in calls]:
            future.result()
    return len(calls)
