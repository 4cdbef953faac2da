"""Dask scale-out of `ecoalign map`: local worker processes or a scheduler address give the single-process map."""
from __future__ import annotations

import dataclasses
from contextlib import contextmanager

import pytest
import small_map_world

from ecoalign.core.errors import EcoalignInputError


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return small_map_world.build(tmp_path_factory.getbasetemp() / "small-map-world")


@contextmanager
def one_torch_thread():
    """Dask worker processes run torch and BLAS single-threaded (the nanny sets OMP_NUM_THREADS=1), and CPU
    results depend (in the last bits) on the thread count: the single-process reference runs with one thread too."""
    import torch
    from threadpoolctl import threadpool_limits

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="module")
def single_map(world, tmp_path_factory):
    """The single-process map, made in a fresh process that is single-threaded from its start, as Dask workers
    are: switching this (already multi-threaded) process to one thread later does not give the same last bits."""

    import rasterio

    path = tmp_path_factory.mktemp("single") / "single.tif"
    small_map_world.map_in_single_threaded_process(world['bundle'].parent, world['bundle'], path)
    with rasterio.open(path) as src:
        values = src.read()
    assert (values == src.nodata).any() and (values != src.nodata).any()  # the nodata strip and mapped land
    return path


def _map(world, out, **kw):
    from ecoalign.mapping import map_raster

    # 3x3 windows in blocks of 2x2 windows: 4 blocks of different shapes
    return map_raster(world["encoder"], world["bundle"], world["raster"], out, block_px=2, quicklook=False,
                      progress=False, **kw)


def test_local_workers_write_the_single_process_map(world, single_map, tmp_path):
    parallel = _map(world, tmp_path / "dask.tif", workers=2)
    small_map_world.assert_same_map(single_map, parallel)


def test_scheduler_address_and_bounded_submission(world, single_map, tmp_path):
    from dask.distributed import LocalCluster

    from ecoalign.mapping.distributed import compute_blocks
    from ecoalign.mapping.plan import plan_map

    plan = plan_map(world["encoder"], world["bundle"], world["raster"], block_px=1)  # 9 one-window blocks
    pulled = []

    def blocks():
        for b in plan.blocks:
            pulled.append(b)
            yield b

    # a worker thread in this process (no second torch start-up); the client still talks to it over TCP
    with one_torch_thread(), LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                          dashboard_address=":0") as cluster:
        results = compute_blocks(plan, blocks(), scheduler=cluster.scheduler_address, max_in_flight=2)
        block, values = next(results)
        assert block in plan.blocks and values.shape == (len(plan.targets), 1, 1)
        assert len(pulled) == 3  # 2 in flight, plus the one submitted when the first came back
        results.close()  # the rest is cancelled
        elsewhere = dataclasses.replace(plan, raster=str(tmp_path / "only-on-my-laptop.tif"))
        with pytest.raises(EcoalignInputError, match="cannot see"):
            next(compute_blocks(elsewhere, plan.blocks, scheduler=cluster.scheduler_address))
        via_address = _map(world, tmp_path / "scheduler.tif", scheduler=cluster.scheduler_address)
    small_map_world.assert_same_map(single_map, via_address)


def test_unreachable_scheduler_and_conflicting_options(world):
    from dask.distributed import LocalCluster

    from ecoalign.mapping.distributed import compute_blocks
    from ecoalign.mapping.plan import plan_map

    plan = plan_map(world["encoder"], world["bundle"], world["raster"])
    with pytest.raises(EcoalignInputError, match="cannot reach the Dask scheduler within 1 s"):
        next(compute_blocks(plan, plan.blocks, scheduler="tcp://127.0.0.1:9", connect_timeout_s=1))
    with pytest.raises(EcoalignInputError, match="both a scheduler"):
        next(compute_blocks(plan, plan.blocks, scheduler="tcp://127.0.0.1:9", workers=2))
    with pytest.raises(EcoalignInputError, match="workers=0"):
        next(compute_blocks(plan, plan.blocks, workers=0))
    with LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as empty:
        with pytest.raises(EcoalignInputError, match="has no worker after 1 s"):
            next(compute_blocks(plan, plan.blocks, scheduler=empty.scheduler_address, connect_timeout_s=1))
