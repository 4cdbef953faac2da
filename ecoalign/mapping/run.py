"""``ecoalign map``: a fitted species model over a whole raster, streamed block by block into a Cloud-Optimized
GeoTIFF: plan (``plan``), compute blocks here or on Dask workers (``blocks``, ``distributed``), write and resume
(``writer``)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator, Sequence

from ecoalign.core.errors import EcoalignInputError
from ecoalign.mapping.blocks import BlockInput, predict_block, read_block
from ecoalign.mapping.distributed import compute_blocks
from ecoalign.mapping.loading import resolve_encoder
from ecoalign.mapping.plan import Block, MapPlan, plan_map
from ecoalign.mapping.writer import PartialMap, write_quicklook

log = logging.getLogger(__name__)


def _prefetched(plan: MapPlan, blocks: Sequence[Block], depth: int = 2) -> Iterator[BlockInput]:
    """Read the next blocks in a background thread while the current one is embedded (rasterio releases the GIL)."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ecoalign-read") as pool:
        pending = deque()
        it = iter(blocks)
        for b in it:
            pending.append(pool.submit(read_block, plan, b))
            if len(pending) > depth:
                break
        while pending:
            data = pending.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(read_block, plan, nxt))
            yield data


def _device_setup(encoder, device):
    """CUDA when available (bf16 autocast there; untested in CI, which has no GPU); CPU float32 otherwise."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type != "cpu":
        encoder.model.to(device)
    return (None if device.type == "cpu" else device), device.type == "cuda"


def map_raster(encoder, model, raster, out, *, env_rasters: Sequence = (), stride_m: float | None = None,
               batch_size: int = 32, overwrite: bool = False, scheduler: str | None = None, workers: int | None = None,
               quicklook: bool = True, progress: bool = True, max_nodata_fraction: float = 0.5,
               block_px: int | None = None, wavelengths_um: Sequence[float] | None = None, weights: str | None = None,
               device=None) -> Path:
    """Map a species-model bundle over a raster into a COG (one band per target); resumes a killed run.

    ``encoder``: an encoder object, an adapt run directory, or ``dofa``/``dofa-small``/``dofa-base`` (size, weights
    and wavelengths default to the bundle's encoder; ``weights`` is a torchgeo enum name or a checkpoint path).
    ``scheduler`` (a dask address) or ``workers=N`` computes blocks with ``ecoalign.mapping.distributed``; this process
    always writes, so the output is the same file as the single-process one.
    """
    from tqdm.auto import tqdm

    out = Path(out)
    if out.exists() and not overwrite:
        raise EcoalignInputError("the output exists", path=out, expected="another --out, or --overwrite to replace it")
    if out.suffix.lower() not in (".tif", ".tiff"):
        raise EcoalignInputError("the output must be a GeoTIFF", path=out, expected="a path ending in .tif")
    spec = encoder
    encoder = resolve_encoder(encoder, wavelengths_um, model, weights)
    plan = plan_map(encoder, model, raster, env_rasters=env_rasters, stride_m=stride_m, block_px=block_px,
                    max_nodata_fraction=max_nodata_fraction, encoder_spec=spec)
    partial = PartialMap(out, plan)
    done = partial.open()
    todo = [b for b in plan.blocks if b.key not in done]
    log.info("map %dx%d px (%d target(s), window %g m = %d px, stride %d px) in %d block(s); %d already done%s",
             plan.width, plan.height, len(plan.targets), plan.window_m, plan.window_px, plan.stride_px,
             len(plan.blocks), len(done), f", resuming from {partial.dir}" if done else "")
    bar = tqdm(total=len(plan.blocks), initial=len(plan.blocks) - len(todo), unit="block", disable=not progress,
               desc="ecoalign map")
    if scheduler is not None or workers:
        results = compute_blocks(plan, todo, scheduler=scheduler, workers=workers, batch_size=batch_size)
    else:
        from ecoalign.sdm.fitting import load_bundle

        fitted = load_bundle(plan.bundle)[0]
        dev, autocast = _device_setup(encoder, device)
        results = ((d.block, predict_block(plan, d, encoder=encoder, model=fitted, batch_size=batch_size,
                                           device=dev, autocast=autocast)) for d in _prefetched(plan, todo))
    for block, values in results:
        partial.write(block, values)
        bar.update(1)
    bar.close()
    partial.finalise(out)
    if quicklook:
        png = write_quicklook(out)
        log.info("quicklook: %s", png)
    partial.remove()
    log.info("wrote %s", out)
    return out
