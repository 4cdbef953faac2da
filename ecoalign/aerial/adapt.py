"""``ecoalign adapt``: pair plots with imagery, cache frozen DOFA embeddings, align, and report.

Besides the configured model it trains, on the same cache and split, the two references the report needs:
frozen DOFA (adapter held at the identity) and the same model with the anchor switched (off if it was on).
"""
from __future__ import annotations

import logging

import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ecoalign.core.errors import EcoalignInputError
from ecoalign.core.io import save_torch, write_json, write_text

log = logging.getLogger(__name__)

RUNS_DIR = Path("runs") / "adapt"


def _resolve_run_dir(out: str | None, resume: str | bool | None) -> tuple[Path, bool]:
    if resume:
        if resume is True or resume == "latest":
            candidates = sorted(p for p in RUNS_DIR.glob("*") if (p / "config.yaml").exists())
            if not candidates:
                raise EcoalignInputError(f"--resume: no earlier run under {RUNS_DIR}", expected="--resume RUN_DIR")
            return candidates[-1], True
        run = Path(resume)
        if not (run / "config.yaml").exists():
            raise EcoalignInputError("--resume: not an ecoalign run directory (no config.yaml)", path=run)
        return run, True
    run = Path(out) if out else RUNS_DIR / datetime.now().strftime("%Y%m%d-%H%M%S")
    if (run / "config.yaml").exists():
        raise EcoalignInputError("a run already exists here", path=run,
                                 expected="--resume to continue it, or another --out directory")
    return run, False


def _log(msg: str) -> None:
    log.info("%s", msg)


def adapt(cfg, *, out: str | None = None, resume: str | bool | None = None) -> Path:
    """Run the whole adaptation described by a composed config; returns the run directory."""
    import torch
    from omegaconf import OmegaConf

    from ecoalign.data.manifest import load_manifest
    from ecoalign.data.patches import AUGMENTATIONS, PatchReader, band_stats, open_rasters
    from ecoalign.data.plots import plot_centres, read_manifest_plots
    from ecoalign.data.releves import read_manifest_releves
    from ecoalign.data.splits import spatial_block_split
    from ecoalign.encoders.dofa import DOFAFeatures, build_dofa
    from ecoalign.core.paths import cache_dir
    from ecoalign.aerial.align import AlignmentData, train_alignment
    from ecoalign.aerial.backbone_cache import build_backbone_cache

    run_dir, resuming = _resolve_run_dir(out, resume)
    if resuming:
        cfg = OmegaConf.load(run_dir / "config.yaml")
        _log(f"resuming {run_dir} with its saved config")
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg))
    c = OmegaConf.to_container(cfg, resolve=True)
    data_cfg, bb_cfg, tr_cfg = c["data"], c["backbone"], c["trainer"]
    seed = int(c.get("seed", 0))
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.perf_counter()

    manifest = load_manifest(data_cfg["manifest"])
    _log(f"data set '{manifest.name}' from {manifest.source}")
    plots = read_manifest_plots(manifest)
    releves = read_manifest_releves(manifest)
    report: dict = {"run_dir": str(run_dir), "created": datetime.now(timezone.utc).isoformat(),
                    "data": {"manifest": str(manifest.source), "name": manifest.name, "licence": manifest.licence,
                             "citation": manifest.citation, "plots_in_file": int(len(plots)),
                             "releves_in_file": int(len(releves.plot_ids)), "releve_table": releves.report}}
    no_coords = set(plots.attrs.get("without_coordinates", []))
    missing = [p for p in releves.plot_ids if p not in plots.index and p not in no_coords]
    matched = [p for p in releves.plot_ids if p in plots.index]
    if not matched:
        raise EcoalignInputError(
            f"none of the {len(releves.plot_ids)} relevé plot ids is in the plots file "
            f"(relevés: {list(releves.plot_ids[:3])}, plots: {list(plots.index[:3])}; {len(no_coords)} plot(s) lack coordinates)",
            path=manifest.releves.path, expected=f"plot ids matching column '{manifest.plots.get('id_column', 'plot_id')}' of {manifest.plots.path}")
    if missing:
        _log(f"skipping {len(missing)} relevé(s) whose plot id is not in the plots file, e.g. {missing[:3]}")
    report["data"]["releves_without_plot"] = {"count": len(missing), "examples": missing[:10]}
    report["data"]["plots_without_coordinates"] = sorted(no_coords)
    if no_coords:
        _log(f"skipping {len(no_coords)} plot(s) with no coordinates, e.g. {sorted(no_coords)[:3]}")

    sources = open_rasters([f.path for f in manifest.imagery], manifest.wavelengths_um, manifest.nodata)
    raster_crs = sources[0].crs
    centres = plot_centres(plots.loc[matched], raster_crs)
    mean, std = band_stats(sources)

    model, info = build_dofa(bb_cfg.get("size", "base"), bb_cfg.get("weights", "none"))
    if info.random_weights:
        _log("WARNING: DOFA runs on RANDOM weights (--weights none): embeddings carry no pretrained knowledge; "
             "results are only good for testing the pipeline")
    device = _device(bb_cfg.get("device", "auto"))
    model.to(device)
    features = DOFAFeatures(model, manifest.wavelengths_um)
    n_views = int(data_cfg.get("augmentations", 1))
    if not 1 <= n_views <= len(AUGMENTATIONS):
        raise EcoalignInputError(f"data.augmentations={n_views}", expected=f"1..{len(AUGMENTATIONS)} dihedral views")
    views = list(AUGMENTATIONS[:n_views])
    key_parts = {"data": manifest.identity(), "patch_size_m": data_cfg["patch_size_m"], "input_px": info.input_px,
                 "max_nodata_fraction": data_cfg["max_nodata_fraction"], "backbone": info.as_dict(),
                 "mean": mean.tolist(), "std": std.tolist()}
    with PatchReader(sources, size_m=data_cfg["patch_size_m"], out_px=info.input_px,
                     max_nodata_fraction=data_cfg["max_nodata_fraction"], mean=mean, std=std) as reader:
        on_device = (lambda x: features(x.to(device)).cpu()) if device != "cpu" else features
        t_embed = time.perf_counter()
        cache = build_backbone_cache(reader=reader, features=on_device, plot_ids=matched, centres=centres, views=views,
                                     key_parts=key_parts, cache_root=cache_dir() / "embeddings",
                                     batch_size=int(bb_cfg.get("batch_size", 16)), progress=tr_cfg.get("progress", True))
        embed_seconds = time.perf_counter() - t_embed
    skipped = {k: len(v) for k, v in cache.skipped.items()}
    _log(f"paired {len(cache.plot_ids)} plots with imagery; skipped {skipped or 'none'}")
    report["pairing"] = {"paired": int(len(cache.plot_ids)), "skipped": skipped,
                         "skipped_examples": {k: v[:10] for k, v in cache.skipped.items()},
                         "patch_size_m": data_cfg["patch_size_m"], "input_px": info.input_px, "views": views,
                         "raster_crs": str(raster_crs)}
    if len(cache.plot_ids) == 0:
        raise EcoalignInputError(f"no plot could be paired with the imagery (skipped: {skipped})",
                                 path=manifest.source,
                                 expected="plots inside the raster footprint, in a CRS that can be reprojected to it")
    report["embedding_pass"] = {"seconds": embed_seconds, "plots_per_second": cache.plots_per_second,
                                "cache": str(cache.path), "reused_cache": cache.reused}

    rel = releves.subset(list(cache.plot_ids))
    present = rel.cover.sum(axis=0) > 0
    species = [s for s, keep in zip(rel.species, present) if keep]
    cover = rel.cover[:, present]
    split = spatial_block_split(cache.centres, block_size_m=data_cfg["block_size_m"],
                                val_fraction=data_cfg["val_fraction"], test_fraction=data_cfg["test_fraction"], seed=seed)
    report["split"] = {"block_size_m": data_cfg["block_size_m"], **{s: int((split == s).sum()) for s in ("train", "val", "test")}}
    data = AlignmentData(torch.from_numpy(np.array(cache.embeddings, dtype=np.float32)),
                         torch.from_numpy(cover), split)

    adapter_cfg = c["adapter"]
    model_kwargs = {"proj_dim": adapter_cfg.get("proj_dim"), "adapter_mlp_hidden": int(adapter_cfg.get("mlp_hidden", 0)),
                    "releve_encoder": c["releve_encoder"], "loss": c["loss"]}
    train_model_kwargs = model_kwargs
    if c["releve_encoder"].get("organism_encoder"):  # species tokens from an organism CLIP model's text tower
        from ecoalign.encoders.species_text import releve_species_text

        releve_kwargs, report["releve_species_text"] = releve_species_text(c["releve_encoder"], manifest, species)
        train_model_kwargs = {**model_kwargs, "releve_encoder": releve_kwargs}
        _log(f"relevé species tokens from {c['releve_encoder']['organism_encoder']} text embeddings "
             f"({report['releve_species_text']['with_taxonomy']} of {len(species)} species with taxonomy)")
    lam = float(c["loss"].get("anchor_weight", 1.0))
    variants = [("adapted", lam, True, "contrastive")]
    if tr_cfg.get("baselines", True):
        variants += [("frozen_dofa", 0.0, False, "contrastive"),
                     ("anchor_off" if lam > 0 else "anchor_on", 0.0 if lam > 0 else 1.0, True, "contrastive"),
                     ("botasp", 0.0, True, "species")]
    train_kwargs = {k: tr_cfg[k] for k in ("epochs", "batch_size", "lr", "weight_decay", "patience")}
    results = []
    for name, weight, train_adapter, objective in variants:
        results.append(train_alignment(name, data, folder=run_dir / "variants" / name, model_kwargs=train_model_kwargs,
                                       anchor_weight=weight, train_adapter=train_adapter, seed=seed,
                                       objective=objective, progress=tr_cfg.get("progress", True), log=_log,
                                       **train_kwargs))
    for i, r in enumerate(results):  # the main model at the top; every variant loadable for `ecoalign compare`
        for folder in ([run_dir] if i == 0 else []) + [run_dir / "variants" / r["variant"]]:
            _save_encoder(folder, r["model"], info, bb_cfg, manifest, mean, std, data_cfg, species, model_kwargs)

    report["backbone"] = info.as_dict()
    report["variants"] = [{k: v for k, v in r.items() if k != "model"} for r in results]
    report["seconds_total"] = time.perf_counter() - t0
    report["environment"] = {"python": platform.python_version(), "torch": torch.__version__, "device": device,
                             "threads": torch.get_num_threads()}
    write_json(run_dir / "report.json", report)
    write_text(run_dir / "report.md", render_report(report))
    _log(f"done in {report['seconds_total']:.0f} s; report: {run_dir / 'report.md'}")
    log.info("%s", render_summary(report))
    return run_dir


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _save_encoder(run_dir: Path, model, info, bb_cfg, manifest, mean, std, data_cfg, species, model_kwargs) -> None:
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
        "nodata": manifest.nodata, "patch_size_m": data_cfg["patch_size_m"],
        "adapter": {"mlp_hidden": model_kwargs["adapter_mlp_hidden"], "proj_dim": model_kwargs["proj_dim"]},
        "releve_encoder": model_kwargs["releve_encoder"], "species": species, "trained_on": manifest.identity(),
    })


def _cell(test: dict, key: str, width: int) -> str:
    return f"{test[key]:>{width}.3f}" if key in test else f"{'-':>{width}}"


RETRIEVAL_KEYS = ("image_to_releve_R@1", "image_to_releve_R@10", "releve_to_image_R@1", "releve_to_image_R@10")


def render_summary(report: dict) -> str:
    lines = ["", "held-out plots (spatial blocks): retrieval and anchor fidelity",
             f"{'variant':<14}{'anchor':>8}{'img->rel R@1':>14}{'R@10':>8}{'rel->img R@1':>14}{'R@10':>8}{'fidelity':>10}"]
    for v in report["variants"]:
        t = v["test"]
        cells = "".join(_cell(t, k, w) for k, w in zip(RETRIEVAL_KEYS, (14, 8, 14, 8)))
        lines.append(f"{v['variant']:<14}{v['anchor_weight']:>8.2f}{cells}{t['fidelity']:>10.3f}")
    t = report["variants"][0]["test"]
    lines.append(f"(n={t['n']} test plots; chance R@1={t['chance_R@1']:.3f}, R@10={t['chance_R@10']:.3f}; "
                 "botasp = supervised species head, no retrieval)")
    if report["backbone"]["random_weights"]:
        lines.append("NOTE: backbone weights are RANDOM (--weights none); use DOFA_MAE or a checkpoint for real results.")
    return "\n".join(lines)


def render_report(report: dict) -> str:
    bb = report["backbone"]
    out = [f"# ecoalign adapt report: {report['data']['name']}", "",
           f"- run: `{report['run_dir']}` ({report['created']})",
           f"- backbone: DOFA-{bb['size']} ({bb['embed_dim']}-d), weights: **{bb['weights']}**"
           + (" (RANDOM weights: pipeline check only)" if bb["random_weights"] else f" sha256 {bb['weights_sha256']}"),
           f"- data: {report['data']['manifest']} (licence: {report['data']['licence']})",
           f"- plots paired: {report['pairing']['paired']}; skipped: {report['pairing']['skipped'] or 'none'}; "
           f"relevés without plot: {report['data']['releves_without_plot']['count']}; "
           f"duplicate species rows summed: {report['data']['releve_table'].get('duplicate_species_rows', 0)}; "
           f"empty relevés skipped: {report['data']['releve_table'].get('empty_releves_skipped', 0)}",
           f"- split (spatial blocks of {report['split']['block_size_m']} m): train {report['split']['train']}, "
           f"val {report['split']['val']}, test {report['split']['test']}",
           f"- embedding pass: {report['embedding_pass']['seconds']:.1f} s"
           + (" (reused from cache)" if report["embedding_pass"]["reused_cache"] else
              f", {report['embedding_pass']['plots_per_second'] or 0:.2f} plots/s"),
           "", "## Held-out retrieval and anchor fidelity", "",
           "| variant | objective | anchor λ | adapter trained | epochs (best) | img→rel R@1 | img→rel R@10 | rel→img R@1 | rel→img R@10 | fidelity r |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for v in report["variants"]:
        t = v["test"]
        cells = " | ".join(f"{t[k]:.3f}" if k in t else "-" for k in RETRIEVAL_KEYS)
        out.append(f"| {v['variant']} | {v.get('objective', 'contrastive')} | {v['anchor_weight']:g} | {v['train_adapter']} | "
                   f"{v['epochs_run']} ({v['best_epoch']}) | {cells} | {t['fidelity']:.3f} |")
    t = report["variants"][0]["test"]
    out += ["", f"n = {t['n']} test plots; chance recall@1 = {t['chance_R@1']:.3f}, recall@10 = {t['chance_R@10']:.3f}. "
            "Fidelity is the Pearson correlation between pairwise cosine similarities of adapted and frozen "
            "DOFA embeddings of the test plots (1 = geometry unchanged). botasp is the supervised baseline "
            "(adapter + multi-label species head on DOFA embeddings).", ""]
    return "\n".join(out)
