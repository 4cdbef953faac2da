"""Scale-out for ``ecoalign map``: the plan's blocks computed by Dask workers, returned to the one process that writes.

Workers only compute (``ecoalign.mapping.blocks.compute_block``, which rebuilds encoder and model from the plan's
sources once per process); the caller writes, so the output is one consistent file whatever the backend.
At most ``max_in_flight`` blocks are submitted at a time, so memory stays flat however many blocks a raster has.
"""
from __future__ import annotations

import numbers
from contextlib import contextmanager
from itertools import islice
from typing import Iterable, Iterator

import numpy as np

from ecoalign.core.errors import EcoalignInputError
from ecoalign.mapping.blocks import compute_block
from ecoalign.mapping.plan import Block, MapPlan

CONNECT_TIMEOUT_S = 20.0  # to reach a scheduler, and for it to have at least one worker


def _connect(scheduler: str, timeout_s: float):
    """A Client of a running scheduler that has at least one worker, or a clear error within ``timeout_s``."""
    from dask.distributed import Client

    try:
        client = Client(str(scheduler), timeout=timeout_s, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise EcoalignInputError(f"cannot reach the Dask scheduler within {timeout_s:g} s ({exc})", path=scheduler,
                                 expected="the address of a running `dask scheduler`, e.g. tcp://host:8786") from None
    try:
        client.wait_for_workers(1, timeout=timeout_s)
    except (OSError, TimeoutError):
        client.close()
        raise EcoalignInputError(f"the Dask scheduler has no worker after {timeout_s:g} s", path=scheduler,
                                 expected="`dask worker ADDRESS` started on some machine") from None
    return client


@contextmanager
def _environ_kept():
    """A LocalCluster's nannies run in this process and set their workers' variables (OMP_NUM_THREADS=1, ...) in
    its ``os.environ``, where Dask leaves them: restored on exit, so later subprocesses are not single-threaded."""
    import os

    import dask

    keys = set(dask.config.get("distributed.nanny.pre-spawn-environ", None) or {}) \
        | set(dask.config.get("distributed.nanny.environ", None) or {})
    before = {k: os.environ.get(k) for k in keys}
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def dask_client(scheduler: str | None = None, workers: int | None = None, *,
                connect_timeout_s: float = CONNECT_TIMEOUT_S):
    """A dask.distributed Client: to a running scheduler (``scheduler``) or to a LocalCluster of ``workers``
    single-threaded processes that is shut down on exit."""
    from dask.distributed import Client, LocalCluster

    if scheduler and workers:
        raise EcoalignInputError(f"both a scheduler ({scheduler}) and workers={workers} are given",
                                 expected="--scheduler ADDRESS (a running cluster) or --workers N (a local one)")
    if scheduler:
        client = _connect(scheduler, connect_timeout_s)
        try:
            yield client
        finally:
            client.close()
        return
    if not isinstance(workers, numbers.Integral) or workers < 1:
        raise EcoalignInputError(f"workers={workers!r}",
                                 expected="a number of local worker processes >= 1, or a scheduler address")
    with _environ_kept(), LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True,
                                       host="127.0.0.1", dashboard_address=":0") as cluster, \
            Client(cluster, set_as_default=False) as client:
        yield client


def _compute_block(plan: MapPlan, block: Block, torch_threads: int | None, batch_size: int):
    if torch_threads:
        import torch

        torch.set_num_threads(int(torch_threads))
    return compute_block(plan, block, batch_size=batch_size)


def _missing(paths: list[str]) -> list[str]:
    import os

    return [p for p in paths if not os.path.exists(p)]


def _check_workers_see_inputs(client, plan: MapPlan) -> None:
    """Workers on other machines read the plan's files themselves: fail at once when one cannot see them."""
    paths = [p for p in [plan.raster, *plan.tiles, plan.bundle, *(r["path"] for r in plan.env_rasters)] if p]
    for worker, missing in client.run(_missing, paths).items():
        if missing:
            raise EcoalignInputError(f"Dask worker {worker} cannot see {missing}", path=missing[0],
                                     expected="the raster, model bundle and environmental rasters at the same "
                                              "paths on every worker (a shared file system)")


def compute_blocks(plan: MapPlan, blocks: Iterable[Block], *, scheduler: str | None = None, workers: int | None = None,
                   batch_size: int = 32, max_in_flight: int | None = None, torch_threads: int | None = None,
                   connect_timeout_s: float = CONNECT_TIMEOUT_S) -> Iterator[tuple[Block, np.ndarray]]:
    """(block, array) pairs in completion order, computed by Dask workers with
    ``ecoalign.mapping.blocks.compute_block(plan, block)``; a failing block stops the run with its error.

    Workers run torch single-threaded by default (Dask sets OMP_NUM_THREADS=1). Torch CPU kernels reduce in an
    order that depends on the thread count, so values equal the single-process ones bit for bit only when both
    use the same number of threads (``torch_threads``); otherwise they agree to float32 rounding (~1e-6)."""
    from dask.distributed import as_completed

    blocks = iter(blocks)
    with dask_client(scheduler, workers, connect_timeout_s=connect_timeout_s) as client:
        _check_workers_see_inputs(client, plan)
        threads = sum(client.nthreads().values()) or 1
        limit = int(max_in_flight or 2 * threads)
        plan_future = client.scatter(plan, broadcast=True)  # shipped once, not with every block
        pending: dict = {}  # future key -> (future, block)

        def submit(block):
            fut = client.submit(_compute_block, plan_future, block, torch_threads, batch_size, pure=False)
            pending[fut.key] = (fut, block)
            return fut

        running = as_completed([submit(b) for b in islice(blocks, limit)], loop=client.loop)
        try:
            for fut in running:
                _, block = pending.pop(fut.key)
                array = fut.result()  # re-raises the worker's exception
                fut.release()
                nxt = next(blocks, None)
                if nxt is not None:
                    running.add(submit(nxt))
                yield block, array
        finally:
            if pending:  # stopped early (error, or the caller closed the iterator)
                client.cancel([f for f, _ in pending.values()])
