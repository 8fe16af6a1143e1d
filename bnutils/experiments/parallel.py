"""Fill the results cache with several independent runs at once, one per CPU core.

Chapters 6 and 7 train dozens of small CNNs. A convolution this small keeps a second
thread of PyTorch's busy only part of the time, so two single-threaded processes, one
run each, get through a list of runs faster than one process with two threads.
``prefill`` runs the cached experiment calls it is given in such worker processes;
each call stores its result in the cache (``bnutils.cache.train_or_load``), under the
same key as when the notebook makes it, so the notebook's own calls afterwards only
load. The workers stay up for the next ``prefill`` until the process ends (or
``shutdown()``). Nothing about a result depends on how the cache was filled, except
the float32 rounding of one thread against two.
"""

import atexit
import multiprocessing
import os
import signal
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from ..config import PROGRESS_ENV


def _start_worker():
    import torch

    torch.set_num_threads(1)
    # Ctrl-C (in a terminal, or Jupyter's interrupt and shutdown) reaches the whole
    # process group; the interrupt is the caller's, which stops its workers itself
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _call(fn, args, kwargs, environ):
    # a worker outlives the call that started it: take the caller's environment now
    # (where results are cached, the run mode, the data's location)
    os.environ.clear()
    os.environ.update(environ)
    os.environ[PROGRESS_ENV] = "off"  # bars from parallel workers would garble the cell
    fn(*args, **kwargs)


MAX_WORKERS = 8  # each holds its data sets and a stack of networks: ~0.5-1 GB of memory


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
    Returns the number of calls. An exception in a call is raised here; an interrupt
    (Ctrl-C, or Jupyter's stop button) kills the workers, so the cell stops at once.
    """
    calls = list(calls)
    workers = workers_default() if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if workers == 1 or len(calls) <= 1:
        for fn, args, kwargs in calls:
            fn(*args, **kwargs)
        return len(calls)
    environ = dict(os.environ)
    pool = _pool(workers)
    futures = [pool.submit(_call, fn, args, kwargs, environ) for fn, args, kwargs in calls]
    try:
        for future in futures:
            future.result()
    except BaseException as error:  # a failed call, or an interrupted cell
        for future in futures:
            future.cancel()  # the calls not started yet; running ones finish
        if isinstance(error, KeyboardInterrupt):  # the running ones too
            _terminate(workers)
        elif isinstance(error, BrokenProcessPool):  # a worker died (e.g. out of memory)
            shutdown()
        raise
    return len(calls)


# One pool per worker count, kept for the next call: starting a worker (a new Python
# process that imports torch and loads its data set) takes seconds, and a chapter
# calls prefill a dozen times.
_POOLS = {}


def _pool(workers):
    if workers not in _POOLS:
        context = multiprocessing.get_context("spawn")  # fork is unsafe once torch runs
        _POOLS[workers] = ProcessPoolExecutor(workers, mp_context=context,
                                              initializer=_start_worker)
    return _POOLS[workers]


def _terminate(workers):
    """Kill the pool of ``workers`` mid-call and forget it (an interrupted cell must not
    wait minutes for the runs in flight)."""
    pool = _POOLS.pop(workers)
    processes = list((pool._processes or {}).values())
    for process in processes:
        process.terminate()
    for process in processes:
        process.join()
    pool.shutdown(wait=False, cancel_futures=True)


@atexit.register
def shutdown():
    """Stop the worker processes that ``prefill`` keeps between calls."""
    while _POOLS:
        _POOLS.popitem()[1].shutdown(cancel_futures=True)
