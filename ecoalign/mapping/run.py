"""``ecoalign map``: a fitted species model over a whole raster, streamed block by block into a Cloud-Optimized
GeoTIFF: plan (``plan``), compute blocks here or on Dask workers (``blocks``, ``distributed``), write and resume
(``writer``). The options that shape the output (species, spread bands, presence thresholds) travel in
``plan.extra``, so they reach Dask workers and the resume fingerprint with the plan."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Iterator, Sequence

from ecoalign.core.errors import EcoalignInputError
from ecoalign.mapping.blocks import BlockInput, predict_block, read_block
from ecoalign.mapping.distributed import compute_blocks
from ecoalign.mapping.loading import resolve_encoder
from ecoalign.mapping.plan import Block, MapPlan, plan_map
from ecoalign.mapping.writer import (
    PRESENCE_NODATA,
    PartialMap,
    presence_path,
    write_quicklook,
)

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


def _presence(meta: dict, targets: list[str], rule, presence: bool, bundle, out: Path) -> dict:
    """``plan.extra["presence"]``: the thresholds of the presence map, or why none is written. Asked for
    explicitly (``threshold_rule``), a rule the bundle cannot serve is an error; by default (the bundle's
    max-TSS thresholds) the map is written without presence and its metadata says why."""
    from ecoalign.sdm.outputs import presence_thresholds

    if not presence:
        if rule is not None:
            raise EcoalignInputError(f"a threshold rule ({rule!r}) but no presence map asked for",
                                     where="--threshold-rule", expected="--threshold-rule or --no-presence, not both")
        return {"written": False, "reason": "not asked for (--no-presence)"}
    try:
        spec = presence_thresholds(meta, targets, rule, bundle)
    except EcoalignInputError as exc:
        if rule is not None:
            raise
        (log.info if meta.get("task") == "abundance" else log.warning)("no presence map: %s", exc)
        return {"written": False, "reason": str(exc)}
    return {"written": True, "file": presence_path(out).name, "nodata": PRESENCE_NODATA, **spec}


def _outputs(plan: MapPlan, fitted, targets: list[str], uncertainty: bool, presence: dict) -> MapPlan:
    """The plan restricted to ``targets``, with the spread bands and presence thresholds in ``extra`` (and so in
    the resume fingerprint and in what Dask workers get)."""
    from ecoalign.sdm.outputs import spread_info

    absent = [t for t in targets if t not in plan.targets]
    if absent:
        raise EcoalignInputError(f"bundle.json names species {absent[:5]} that its model does not predict",
                                 path=plan.bundle, expected="a bundle written by `ecoalign fit` (fit it again)")
    if uncertainty:
        spread = spread_info(fitted)
        if not spread["available"]:
            log.info("no uncertainty bands: %s", spread["reason"])
    else:
        spread = {"available": False, "reason": "not asked for (--no-uncertainty)"}
    return dataclasses.replace(plan, targets=list(targets), extra={
        **plan.extra, "outputs": True, "spread": bool(spread["available"]), "uncertainty": spread,
        "presence": presence})


def map_raster(encoder, model, raster, out, *, env_rasters: Sequence = (), stride_m: float | None = None,
               batch_size: int = 32, overwrite: bool = False, scheduler: str | None = None, workers: int | None = None,
               quicklook: bool = True, progress: bool = True, max_nodata_fraction: float = 0.5,
               block_px: int | None = None, wavelengths_um: Sequence[float] | None = None, weights: str | None = None,
               device=None, species: Sequence[str] | None = None, threshold_rule: str | float | None = None,
               presence: bool = True, uncertainty: bool = True, precision: str | None = None, band_mean=None,
               band_std=None, trusted: Sequence[str] = (), releve: Sequence[str] | str | None = None,
               raw_similarity: bool = False, organism_encoder: str | None = None,
               relatives_weight: float | None = None) -> Path:
    """Map a species-model bundle over a raster into a COG; resumes a killed run. Returns the COG's path.

    Outputs (see ``ecoalign.mapping.writer``): ``out`` (float32: one band per species, then for ensembles one
    ``"<species>: sd"`` band each with the spread between the members), ``<stem>_presence.tif`` (uint8, 1/0,
    nodata 255) and ``<stem>_quicklook.png``.

    ``raster``: a GeoTIFF, a GDAL VRT, a glob (``"tiles/*.tif"``) or a list of tiles (one CRS, the same bands and
    resolution; checked before any work and read as one mosaic, seamless across tile edges).
    ``encoder``: an encoder object, an adapt run directory, or ``dofa``/``dofa-small``/``dofa-base`` (size, weights
    and wavelengths default to the bundle's encoder; ``weights`` is a torchgeo enum name or a checkpoint path).
    ``scheduler`` (a dask address) or ``workers=N`` computes blocks with ``ecoalign.mapping.distributed``; this process
    always writes, so the output is the same file as the single-process one.
    ``species``: names of the bundle's species to map (default all), in that order.
    ``threshold_rule``: the presence threshold: a rule stored in the bundle (``max_tss``, ``equal_sens_spec``,
    ``p10_presence``) or a number in [0, 1]; default the bundle's ``max_tss``, and without stored thresholds
    no presence map (the metadata says why); a rule asked for that the bundle lacks is an error before any work.
    ``presence=False`` writes no presence map; ``uncertainty=False`` no spread bands.
    ``precision`` (fp32 | bf16 | int8 | auto), ``band_mean``/``band_std``: the encoder's numeric precision and fixed
    band statistics (default: the encoder's, else those recorded in the bundle; never the mapped raster's).
    ``trusted``: type names the bundle's estimator file may build beyond ecoalign's trusted types.

    Zero-shot maps (``model=None``; ``encoder`` an ``adapt --releve-encoder organism_text`` run): one band per
    ``releve`` string (``"Quercus ilex=60,Pistacia lentiscus=20"``) and per ``species`` name (a one-species
    relevé), each the calibrated suitability of every window for that composition (``raw_similarity``: the cosine
    similarity instead), see ``ecoalign.aerial.zero_shot``; ``organism_encoder`` replaces the run's organism text
    encoder path (it must be the same model); ``relatives_weight`` how far an unseen name's text is pulled toward its
    seen relatives' (default ``aerial.zero_shot.RELATIVES_WEIGHT``). Presence maps only with a numeric
    ``threshold_rule``.
    """
    from ecoalign.sdm.fitting import load_bundle, read_bundle_meta
    from ecoalign.sdm.outputs import select_species

    out = Path(out)
    if out.exists() and not overwrite:
        raise EcoalignInputError("the output exists", path=out, expected="another --out, or --overwrite to replace it")
    if out.suffix.lower() not in (".tif", ".tiff"):
        raise EcoalignInputError("the output must be a GeoTIFF", path=out, expected="a path ending in .tif")
    if model is None:
        plan, fitted, encoder = zero_shot_plan(
            encoder, raster, out, releve=releve, species=species, raw=raw_similarity, organism=organism_encoder,
            relatives_weight=relatives_weight, threshold_rule=threshold_rule if presence else None, stride_m=stride_m,
            block_px=block_px, max_nodata_fraction=max_nodata_fraction, precision=precision)
        return _write_map(plan, fitted, encoder, out, overwrite=overwrite, scheduler=scheduler, workers=workers,
                          batch_size=batch_size, device=device, quicklook=quicklook, progress=progress)
    if releve or raw_similarity or organism_encoder or relatives_weight is not None:
        raise EcoalignInputError("--releve, --raw-similarity, --organism-encoder and --relatives-weight make zero-shot "
                                 "maps, which take no species model", where="--model", expected="either --model BUNDLE or --releve/--species "
                                 "with an organism-text adapt run as --encoder")
    meta = read_bundle_meta(model)
    targets = select_species(meta, species, model)
    presence_spec = _presence(meta, targets, threshold_rule, presence, model, out)
    presence_out = presence_path(out)
    if presence_spec["written"] and presence_out.exists() and not overwrite \
            and not out.with_name(out.name + ".partial").exists():  # a resumed run finalises it again
        raise EcoalignInputError("the presence map exists", path=presence_out,
                                 expected="another --out, or --overwrite to replace it")
    spec = encoder
    encoder = resolve_encoder(encoder, wavelengths_um, model, weights, precision=precision, band_mean=band_mean,
                              band_std=band_std)
    loaded = load_bundle(model, trusted=trusted)  # once: the plan's targets and the predictions
    plan = plan_map(encoder, model, raster, env_rasters=env_rasters, stride_m=stride_m, block_px=block_px,
                    max_nodata_fraction=max_nodata_fraction, encoder_spec=spec, trusted=trusted, loaded=loaded)
    fitted = loaded[0]
    plan = _outputs(plan, fitted, targets, uncertainty, presence_spec)
    return _write_map(plan, fitted, encoder, out, overwrite=overwrite, scheduler=scheduler, workers=workers,
                      batch_size=batch_size, device=device, quicklook=quicklook, progress=progress)


def zero_shot_plan(encoder, raster, out: Path | None = None, *, releve=None, species=None, raw: bool = False,
                   organism=None, relatives_weight=None, threshold_rule=None, stride_m=None, block_px=None,
                   max_nodata_fraction: float = 0.5, precision=None):
    """The plan of a zero-shot map: the run's window grid, its adapted encoder, and a ``ZeroShotModel`` (carried in
    ``plan.extra["zero_shot"]``, so workers and the resume fingerprint see it) in place of a bundle."""
    from ecoalign.aerial.embed import EMBED_PREFIX
    from ecoalign.aerial.zero_shot import NEEDED, ZeroShotRun, compositions
    from ecoalign.mapping.plan import plan_windows

    run_dir = encoder if isinstance(encoder, (str, Path)) else (getattr(encoder, "metadata", None) or {}).get("run_dir")
    if run_dir is None or getattr(encoder, "adapter", True) is None:
        raise EcoalignInputError(f"a zero-shot map needs the aligned encoders of an adapt run, not {encoder!r}",
                                 where="--encoder", expected=NEEDED)
    run = ZeroShotRun(run_dir, organism_encoder=organism, relatives_weight=relatives_weight)
    comps = compositions([releve] if isinstance(releve, str) else list(releve or ()),
                         [species] if isinstance(species, str) else list(species or ()))
    model = run.model(comps, raw=raw)
    encoder = resolve_encoder(encoder, precision=precision)
    plan = plan_windows(encoder, raster, stride_m=stride_m, block_px=block_px,
                        max_nodata_fraction=max_nodata_fraction, encoder_spec=run_dir)
    presence_spec = {"written": False, "reason": "zero-shot suitability has no fitted threshold (give a number "
                                                 "as the threshold rule for a presence map)"}
    if threshold_rule is not None:
        try:
            value = float(threshold_rule)
        except (TypeError, ValueError):
            raise EcoalignInputError(f"threshold rule {threshold_rule!r}: a zero-shot map has no stored thresholds",
                                     where="--threshold-rule", expected="a number, e.g. 0.5") from None
        presence_spec = {"written": True, "file": presence_path(out or "map.tif").name, "nodata": PRESENCE_NODATA,
                         "rule": "fixed", "thresholds": {t: value for t in model.species_}}
    info = {"run": str(Path(run_dir).resolve()), "compositions": [{"band": label, "releve": items}
                                                                 for label, items in comps],
            "calibration": None if raw else run.info["calibration"], "raw_similarity": bool(raw),
            "holdout_species": run.info.get("holdout_species", []), "relatives_weight": run.relatives_weight,
            "relatives": {n: rel for _, items in comps for n, _ in items
                          if run.relatives_weight > 0 and (rel := run.relatives(n))[1]}}
    plan = dataclasses.replace(
        plan, targets=list(model.species_), task="similarity" if raw else "suitability",
        features=[f"{EMBED_PREFIX}{j:03d}" for j in range(encoder.embed_dim)],
        extra={"uses_embeddings": True, "outputs": True, "spread": False, "uncertainty": None,  # no sd panels
               "presence": presence_spec, "zero_shot": model.spec(), "zero_shot_info": info})
    return plan, model, encoder


def _write_map(plan: MapPlan, fitted, encoder, out: Path, *, overwrite: bool, scheduler, workers, batch_size: int,
               device, quicklook: bool, progress: bool) -> Path:
    """Blocks of the plan computed (here or on Dask workers) and written, resumably, then finalised to COGs."""
    from tqdm.auto import tqdm

    presence_spec = plan.extra["presence"]
    presence_out = presence_path(out)
    partial = PartialMap(out, plan)
    done = partial.open()
    todo = [b for b in plan.blocks if b.key not in done]
    log.info("map %dx%d px (%d target(s)%s, window %g m = %d px, stride %d px) in %d block(s); %d already done%s",
             plan.width, plan.height, len(plan.targets), " with spread bands" if plan.extra["spread"] else "",
             plan.window_m, plan.window_px, plan.stride_px, len(plan.blocks), len(done),
             f", resuming from {partial.dir}" if done else "")
    bar = tqdm(total=len(plan.blocks), initial=len(plan.blocks) - len(todo), unit="block", disable=not progress,
               desc="ecoalign map")
    if scheduler is not None or workers:
        results = compute_blocks(plan, todo, scheduler=scheduler, workers=workers, batch_size=batch_size)
    else:
        dev, autocast = _device_setup(encoder, device)
        results = ((d.block, predict_block(plan, d, encoder=encoder, model=fitted, batch_size=batch_size,
                                           device=dev, autocast=autocast)) for d in _prefetched(plan, todo))
    for block, values in results:
        partial.write(block, values)
        bar.update(1)
    bar.close()
    partial.finalise(out)
    if presence_spec["written"]:
        log.info("presence map (%s thresholds): %s", presence_spec["rule"], presence_out)
    elif presence_out.exists():
        if overwrite:  # it belongs to the map just replaced
            presence_out.unlink()
            log.info("removed %s, the presence map of the replaced map", presence_out)
        else:
            log.warning("%s is not from this run (no presence map written: %s)", presence_out,
                        presence_spec["reason"])
    if quicklook:
        png = write_quicklook(out)
        log.info("quicklook: %s", png)
    partial.remove()
    log.info("wrote %s", out)
    return out
