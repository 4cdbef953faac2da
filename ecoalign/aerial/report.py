"""What an ``adapt`` run tells its user: the summary on the log, ``report.md``, and what to do next."""
from __future__ import annotations


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
           *_zero_shot_lines(report),
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


def _zero_shot_lines(report: dict) -> list[str]:
    """Held-out species and the zero-shot calibration, for runs that have them."""
    lines = []
    held = (report.get("holdout") or {}).get("species") or []
    if held:
        lines.append(f"- held out of every relevé ({len(held)}): {', '.join(held)}; plots left empty and excluded: "
                     f"{report['holdout']['plots_emptied']} (`ecoalign evaluate-zero-shot {report['run_dir']}`)")
    cal = (report.get("zero_shot") or {}).get("calibration")
    if cal:
        lines.append(f"- zero-shot calibration: suitability = expit({cal['slope']:.2f} x similarity "
                     f"{cal['intercept']:+.2f}), on {cal['pairs']} train plot x species pairs (pooled AUC "
                     f"{cal['pooled_auc']:.3f})")
    return lines


def next_steps(report: dict) -> str:
    """The commands that put the adapted encoder to work, and where real DOFA weights come from."""
    run, data = report["run_dir"], report["data"]
    manifest = data.get("manifest_arg", data["manifest"])
    raster = (data.get("imagery") or ["YOUR_ORTHO.tif"])[0]
    lines = ["", "next steps:",
             f"  ecoalign embed --encoder {run} --manifest {manifest} --out embeddings.parquet",
             f"  ecoalign fit plant_presence --embeddings embeddings.parquet --manifest {manifest} --out bundle",
             f"  ecoalign map --encoder {run} --model bundle --raster {raster} --out map.tif"]
    if report["backbone"]["random_weights"]:
        lines.append("  real weights: put torchgeo's DOFA checkpoint (dofa_base_patch16_224-a0275954.pth) in "
                     "$TORCH_HOME/hub/checkpoints/ and run with --weights DOFA_MAE, or pass --weights FILE.pth")
    return "\n".join(lines)
