"""``ecoalign adapt``: pair plots with imagery, cache frozen DOFA embeddings, align, and report.

Besides the configured model it trains, on the same cache and split, the references the report needs:
frozen DOFA (adapter held at the identity), the same model with the anchor switched (off if it was on), and
BotaSP (a supervised species head). ``adapt`` is the public function; each stage below is one function.
"""
from __future__ import annotations

import logging
import platform
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import numpy as np

from ecoalign.core.errors import EcoalignInputError
from ecoalign.core.io import save_torch, write_json, write_text

log = logging.getLogger(__name__)

RUNS_DIR = Path("runs") / "adapt"

# CLI flag / keyword -> Hydra config group it selects
GROUPS = ("backbone", "releve_encoder", "loss", "data", "trainer")
# keys a resumed run may change: they do not change what the run is
RESUMABLE_KEYS = ("trainer.epochs", "trainer.patience", "trainer.progress", "backbone.device", "backbone.batch_size")


def adapt(overrides: Sequence[str] = (), *, backbone: str | None = None, releve_encoder: str | None = None,
          loss: str | None = None, data: str | None = None, trainer: str | None = None, manifest: str | None = None,
          weights: str | None = None, size: str | None = None, out: str | None = None,
          resume: str | bool | None = None, precision: str | None = None,
          holdout_species: str | None = None) -> Path:
    """Python face of ``ecoalign adapt``; returns the run directory.

    ``ecoalign.adapt(["trainer.epochs=20"], size="small", out="runs/x")``; ``resume=True`` continues the latest
    run (under ``out`` if given), ``resume="runs/x"`` that run, with only ``RESUMABLE_KEYS`` overrides allowed.
    ``precision`` (``backbone.precision``: auto, fp32, bf16, int8) is that of the frozen-backbone embedding pass.
    ``holdout_species`` (``data.holdout_species``): a text file (one name a line) or a CSV (column ``species``,
    else the first) of species removed from every relevé before training, for leave-species-out validation.
    """
    from omegaconf import OmegaConf

    from ecoalign.core.config import compose
    from ecoalign.core.runs import (
        apply_resume_overrides,
        resolve_run,
        split_resume_argument,
        started_run,
    )

    resume, overrides = split_resume_argument(resume, overrides)
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise EcoalignInputError(f"unexpected arguments {bad}", expected="key=value Hydra overrides")
    chosen = {"backbone": backbone, "releve_encoder": releve_encoder, "loss": loss, "data": data, "trainer": trainer}
    keys = {"data.manifest": manifest, "backbone.weights": weights, "backbone.size": size,
            "backbone.precision": precision,
            "data.holdout_species": str(Path(holdout_species).resolve()) if holdout_species else None}
    run_dir, resuming = resolve_run(out, resume, RUNS_DIR)
    if resuming:
        given = [f"{g}={v}" for g, v in chosen.items() if v] + [f"{k}={v}" for k, v in keys.items() if v]
        cfg = apply_resume_overrides(OmegaConf.load(run_dir / "config.yaml"), given + list(overrides),
                                     RESUMABLE_KEYS)
        write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg))
        log.info("resuming %s with its saved config", run_dir)
    else:
        cfg = compose("adapt", [f"{g}={v}" for g, v in chosen.items() if v]
                      + [f"{k}={v}" for k, v in keys.items() if v] + list(overrides))
    with started_run(run_dir, OmegaConf.to_yaml(cfg), resuming):
        return run_adapt(cfg, run_dir)


@dataclass
class PairedData:
    """Plots with a relevé and a usable image window, their frozen-DOFA embeddings, and what the report says."""
    manifest: object
    info: object            # backbone identity (BackboneInfo)
    mean: np.ndarray        # band standardisation stored with the encoder
    std: np.ndarray
    cache: object           # BackboneCache: embeddings (plots, views, dim), centres, plot ids
    releves: object
    precision: str = "fp32"  # of the frozen-backbone embedding pass


def run_adapt(cfg, run_dir: Path) -> Path:
    """The whole adaptation described by a composed config, into ``run_dir``."""
    import torch
    from omegaconf import OmegaConf

    c = OmegaConf.to_container(cfg, resolve=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.perf_counter()
    report: dict = {"run_dir": str(run_dir), "created": datetime.now(timezone.utc).isoformat()}
    paired = _paired_data(c, report)
    data, species = _alignment_data(paired, c, report)
    results = _train_variants(data, c, run_dir, species, paired.manifest, report)
    for i, r in enumerate(results):  # the main model at the top; every variant loadable for `ecoalign compare`
        for folder in ([run_dir] if i == 0 else []) + [run_dir / "variants" / r["variant"]]:
            _save_encoder(folder, r["model"], paired.info, c["backbone"], paired.manifest, paired.mean, paired.std,
                          c["data"], species, _model_kwargs(c), precision=paired.precision,
                          holdout=report["holdout"]["species"])
    if "releve_species_text" in report:  # a text-based relevé encoder: species named in text can be mapped
        from ecoalign.aerial.zero_shot import write_zero_shot_files

        report["zero_shot"] = write_zero_shot_files(
            run_dir, results[0]["model"], data, species, paired.cache.plot_ids, paired.cache.centres,
            _checklist(paired.manifest, paired.releves.species), report["releve_species_text"]["organism_encoder"],
            report["holdout"]["species"])
    _write_reports(run_dir, report, results, paired.info, c, t0)
    return run_dir


def _paired_data(c: dict, report: dict) -> PairedData:
    """Read the manifest, pair plots with image windows, and embed every window once with frozen DOFA (cached)."""
    from ecoalign.aerial.backbone_cache import build_backbone_cache
    from ecoalign.core.paths import cache_dir
    from ecoalign.data.manifest import load_manifest
    from ecoalign.data.patches import (
        AUGMENTATIONS,
        PatchReader,
        band_stats,
        open_rasters,
    )
    from ecoalign.data.plots import plot_centres, read_manifest_plots
    from ecoalign.data.releves import read_manifest_releves
    from ecoalign.encoders.dofa import (
        DOFAFeatures,
        build_dofa,
        resolve_precision,
    )
    from ecoalign.encoders.int8 import int8_scheme

    data_cfg, bb_cfg, tr_cfg = c["data"], c["backbone"], c["trainer"]
    manifest = load_manifest(data_cfg["manifest"])
    log.info("data set '%s' from %s", manifest.name, manifest.source)
    plots = read_manifest_plots(manifest)
    releves = read_manifest_releves(manifest)
    report["data"] = {"manifest": str(manifest.source), "manifest_arg": str(data_cfg["manifest"]),
                      "imagery": [str(f.path) for f in manifest.imagery], "name": manifest.name, "licence": manifest.licence,
                      "citation": manifest.citation, "plots_in_file": int(len(plots)),
                      "releves_in_file": int(len(releves.plot_ids)), "releve_table": releves.report}
    matched = _plots_with_releves(plots, releves, manifest, report)

    sources = open_rasters([f.path for f in manifest.imagery], manifest.wavelengths_um, manifest.nodata)
    raster_crs = sources[0].crs
    centres = plot_centres(plots.loc[matched], raster_crs)
    mean, std = band_stats(sources)  # of all the manifest's imagery, stored with the encoder (encoder.json)
    device = _device(bb_cfg.get("device", "auto"))
    precision = resolve_precision(bb_cfg.get("precision", "auto"), device=device, where="backbone.precision")
    if precision == "int8" and device != "cpu":
        raise EcoalignInputError(f"backbone.precision=int8 runs on CPU only (oneDNN or torch dynamic quantisation), not {device}",
                                 where="backbone.precision", expected="bf16 or fp32 on a GPU, or backbone.device=cpu")
    model, info = build_dofa(bb_cfg.get("size", "base"), bb_cfg.get("weights", "none"))
    if info.random_weights:
        log.warning("DOFA runs on RANDOM weights (--weights none): embeddings carry no pretrained knowledge; "
                    "results are only good for testing the pipeline")
    model.to(device)
    features = DOFAFeatures(model, manifest.wavelengths_um, precision)
    n_views = int(data_cfg.get("augmentations", 1))
    if not 1 <= n_views <= len(AUGMENTATIONS):
        raise EcoalignInputError(f"data.augmentations={n_views}", expected=f"1..{len(AUGMENTATIONS)} dihedral views")
    views = list(AUGMENTATIONS[:n_views])
    key_parts = {"data": manifest.identity(), "patch_size_m": data_cfg["patch_size_m"], "input_px": info.input_px,
                 "max_nodata_fraction": data_cfg["max_nodata_fraction"], "backbone": info.as_dict(),
                 "mean": mean.tolist(), "std": std.tolist()}
    if precision != "fp32":  # fp32 keeps the key caches had before precisions existed; bf16/int8 get their own
        key_parts["precision"] = precision
    if precision == "int8":  # caches of another int8 scheme (an earlier one, another machine's) are not this one's
        key_parts["int8_scheme"] = int8_scheme()
    with PatchReader(sources, size_m=data_cfg["patch_size_m"], out_px=info.input_px,
                     max_nodata_fraction=data_cfg["max_nodata_fraction"], mean=mean, std=std) as reader:
        on_device = (lambda x: features(x.to(device)).cpu()) if device != "cpu" else features
        t_embed = time.perf_counter()
        cache = build_backbone_cache(reader=reader, features=on_device, plot_ids=matched, centres=centres, views=views,
                                     key_parts=key_parts, cache_root=cache_dir() / "embeddings",
                                     batch_size=int(bb_cfg.get("batch_size", 16)), progress=tr_cfg.get("progress", True))
        embed_seconds = time.perf_counter() - t_embed
    skipped = {k: len(v) for k, v in cache.skipped.items()}
    log.info("paired %d plots with imagery; skipped %s", len(cache.plot_ids), skipped or "none")
    report["pairing"] = {"paired": int(len(cache.plot_ids)), "skipped": skipped,
                         "skipped_examples": {k: v[:10] for k, v in cache.skipped.items()},
                         "patch_size_m": data_cfg["patch_size_m"], "input_px": info.input_px, "views": views,
                         "raster_crs": str(raster_crs)}
    if len(cache.plot_ids) == 0:
        raise EcoalignInputError(f"no plot could be paired with the imagery (skipped: {skipped})",
                                 path=manifest.source,
                                 expected="plots inside the raster footprint, in a CRS that can be reprojected to it")
    report["embedding_pass"] = {"seconds": embed_seconds, "plots_per_second": cache.plots_per_second,
                                "cache": str(cache.path), "reused_cache": cache.reused, "precision": precision}
    report["environment_device"] = device
    return PairedData(manifest, info, mean, std, cache, releves, precision)


def _plots_with_releves(plots, releves, manifest, report: dict) -> list:
    """Relevé plot ids that have coordinates in the plots file; the others are counted in the report."""
    no_coords = set(plots.attrs.get("without_coordinates", []))
    missing = [p for p in releves.plot_ids if p not in plots.index and p not in no_coords]
    matched = [p for p in releves.plot_ids if p in plots.index]
    if not matched:
        raise EcoalignInputError(
            f"none of the {len(releves.plot_ids)} relevé plot ids is in the plots file "
            f"(relevés: {list(releves.plot_ids[:3])}, plots: {list(plots.index[:3])}; {len(no_coords)} plot(s) lack coordinates)",
            path=manifest.releves.path, expected=f"plot ids matching column '{manifest.plots.get('id_column', 'plot_id')}' of {manifest.plots.path}")
    if missing:
        log.info("skipping %d relevé(s) whose plot id is not in the plots file, e.g. %s", len(missing), missing[:3])
    report["data"]["releves_without_plot"] = {"count": len(missing), "examples": missing[:10]}
    report["data"]["plots_without_coordinates"] = sorted(no_coords)
    if no_coords:
        log.info("skipping %d plot(s) with no coordinates, e.g. %s", len(no_coords), sorted(no_coords)[:3])
    return matched


def _alignment_data(paired: PairedData, c: dict, report: dict):
    """Cover matrix of the species present in the paired plots, and the spatial-block train/val/test split."""
    import numpy as np
    import torch

    from ecoalign.aerial.align import AlignmentData
    from ecoalign.data.splits import spatial_block_split

    data_cfg, cache = c["data"], paired.cache
    rel = paired.releves.subset(list(cache.plot_ids))
    from ecoalign.data.releves import read_species_list

    held = read_species_list(data_cfg.get("holdout_species"), rel.species)
    present = (rel.cover.sum(axis=0) > 0) & ~np.isin(np.asarray(rel.species, dtype=object), held)
    species = [s for s, keep in zip(rel.species, present) if keep]
    split = spatial_block_split(cache.centres, block_size_m=data_cfg["block_size_m"],
                                val_fraction=data_cfg["val_fraction"], test_fraction=data_cfg["test_fraction"],
                                seed=int(c.get("seed", 0)))
    emptied = rel.cover[:, present].sum(axis=1) <= 0  # plots that held only held-out species: not trained on
    split = np.where(emptied, "excluded", split)
    report["holdout"] = {"file": data_cfg.get("holdout_species"), "species": held, "plots_emptied": int(emptied.sum())}
    if held:
        log.info("held out %d species from every relevé (%d plot(s) left empty and excluded): %s", len(held),
                 int(emptied.sum()), held)
    report["split"] = {"block_size_m": data_cfg["block_size_m"],
                       **{s: int((split == s).sum()) for s in ("train", "val", "test")}}
    data = AlignmentData(torch.from_numpy(np.array(cache.embeddings, dtype=np.float32)),
                         torch.from_numpy(rel.cover[:, present]), split)
    return data, species


def _checklist(manifest, species: Sequence[str]):
    """The taxonomy names are placed with: the manifest's species table (all its rows), else genus from the name."""
    import pandas as pd

    from ecoalign.data.taxonomy import parse_name

    if manifest.species is not None:
        return pd.read_csv(manifest.species.path)
    return pd.DataFrame({"species": list(species), "genus": [parse_name(s)[0] for s in species]})


def _model_kwargs(c: dict) -> dict:
    adapter_cfg = c["adapter"]
    return {"proj_dim": adapter_cfg.get("proj_dim"), "adapter_mlp_hidden": int(adapter_cfg.get("mlp_hidden", 0)),
            "releve_encoder": c["releve_encoder"], "loss": c["loss"]}


def _train_variants(data, c: dict, run_dir: Path, species: list, manifest, report: dict) -> list[dict]:
    """The configured model and its references, each checkpointed every epoch in ``variants/<name>/``."""
    from ecoalign.aerial.align import train_alignment

    tr_cfg = c["trainer"]
    model_kwargs = _model_kwargs(c)
    if c["releve_encoder"].get("organism_encoder"):  # species tokens from an organism CLIP model's text tower
        from ecoalign.encoders.species_text import releve_species_text

        releve_kwargs, report["releve_species_text"] = releve_species_text(c["releve_encoder"], manifest, species)
        model_kwargs = {**model_kwargs, "releve_encoder": releve_kwargs}
        log.info("relevé species tokens from %s text embeddings (%d of %d species with taxonomy)",
                 c["releve_encoder"]["organism_encoder"], report["releve_species_text"]["with_taxonomy"], len(species))
    lam = float(c["loss"].get("anchor_weight", 1.0))
    variants = [("adapted", lam, True, "contrastive")]
    if tr_cfg.get("baselines", True):
        variants += [("frozen_dofa", 0.0, False, "contrastive"),
                     ("anchor_off" if lam > 0 else "anchor_on", 0.0 if lam > 0 else 1.0, True, "contrastive"),
                     ("botasp", 0.0, True, "species")]
    train_kwargs = {k: tr_cfg[k] for k in ("epochs", "batch_size", "lr", "weight_decay", "patience")}
    train_kwargs["releve_subsample"] = float(c["releve_encoder"].get("train_subsample", 0.0))
    return [train_alignment(name, data, folder=run_dir / "variants" / name, model_kwargs=model_kwargs,
                            anchor_weight=weight, train_adapter=train_adapter, seed=int(c.get("seed", 0)),
                            objective=objective, progress=tr_cfg.get("progress", True), log=log.info, **train_kwargs)
            for name, weight, train_adapter, objective in variants]


def _write_reports(run_dir: Path, report: dict, results: list[dict], info, c: dict, t0: float) -> None:
    import torch

    from ecoalign.aerial.report import next_steps, render_report, render_summary

    report["backbone"] = info.as_dict()
    report["variants"] = [{k: v for k, v in r.items() if k != "model"} for r in results]
    report["seconds_total"] = time.perf_counter() - t0
    report["environment"] = {"python": platform.python_version(), "torch": torch.__version__,
                             "device": report.pop("environment_device"), "threads": torch.get_num_threads()}
    write_json(run_dir / "report.json", report)
    write_text(run_dir / "report.md", render_report(report))
    log.info("done in %.0f s; report: %s", report["seconds_total"], run_dir / "report.md")
    log.info("%s", render_summary(report) + "\n" + next_steps(report))


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _save_encoder(run_dir: Path, model, info, bb_cfg, manifest, mean, std, data_cfg, species, model_kwargs, *,
                  precision: str = "fp32", holdout: Sequence[str] = ()) -> None:
    """The adapted encoder as files that ``ecoalign.load_encoder`` rebuilds without the training code."""
    enc = run_dir / "encoder"
    enc.mkdir(exist_ok=True)
    save_torch(model.adapter.state_dict(), enc / "adapter.pt")
    save_torch(model.image_proj.state_dict(), enc / "image_proj.pt")
    head = model.releve_encoder if model.objective == "contrastive" else model.species_head
    save_torch(head.state_dict(), enc / ("releve_encoder.pt" if model.objective == "contrastive" else "species_head.pt"))
    weights = bb_cfg.get("weights", "none")
    write_json(enc / "encoder.json", {
        "kind": "adapted_dofa", "format_version": 1, "backbone": info.as_dict(),
        "backbone_weights_source": str(Path(weights).resolve()) if Path(str(weights)).exists() else weights,
        "wavelengths_um": list(manifest.wavelengths_um), "band_mean": mean.tolist(), "band_std": std.tolist(),
        "embedding_precision": precision,  # of the cached frozen features the adapter was trained on
        "nodata": manifest.nodata, "patch_size_m": data_cfg["patch_size_m"],
        "adapter": {"mlp_hidden": model_kwargs["adapter_mlp_hidden"], "proj_dim": model_kwargs["proj_dim"]},
        "releve_encoder": model_kwargs["releve_encoder"], "species": species, "trained_on": manifest.identity(),
        "holdout_species": list(holdout),
    })
