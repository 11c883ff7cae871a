"""A model process started before any model is known: its interpreter and libraries load while the
worker still imports and verifies, so the champion answers sooner (``ModelProcess(pool=...)``).

Light on purpose: the service's worker calls ``warm_pool`` first thing, before it imports the
serving core (pandas, SQLAlchemy, MLflow's schema readers).
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import signal

from conveyor.registry.workspace import prepare_process

__all__ = ["warm_pool"]


def _child_warm() -> None:
    """A new child: telemetry off, one BLAS thread, and the libraries a model needs, imported now.

    It ignores Ctrl-C: a SIGINT to the terminal's process group reaches it too, and a model that
    died of it while loading would be recorded as refused; its worker stops it on the way out."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    prepare_process()
    import sklearn.pipeline  # noqa: F401 - imported now, while the parent verifies
    import skops.io  # noqa: F401 - as above

    # here: the spare process imports only what a model needs
    import conveyor.serving.models  # noqa: F401 - what the model's calls run


def warm_pool() -> concurrent.futures.ProcessPoolExecutor:
    """A model process with the libraries imported and no model yet."""
    pool = concurrent.futures.ProcessPoolExecutor(
        max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=_child_warm
    )
    pool.submit(os.getpid)  # start the child now, not at the first call
    return pool
