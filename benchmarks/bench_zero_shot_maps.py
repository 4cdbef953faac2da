"""Zero-shot habitat maps of species held out of training, on the demo world: AUC / Boyce beside the ceiling (a
species model with the species' own data), the nearest seen congener's model and random scores.

Two disjoint holdout sets: ``dev`` is the one any setting may be chosen on; ``report`` is the one whose figures
are reported, run once with the settings chosen on ``dev`` (never tuned on its own scores). Each set holds species
with seen congeners (including the documented niche exceptions of the generator, ``NICHE_EXCEPTIONS``) and
species whose genus has no other member.

    python benchmarks/bench_zero_shot_maps.py --holdout dev [--manifest demo] [--organism tiny] [--out DIR]
    python benchmarks/bench_zero_shot_maps.py --holdout report

Steps: a random-weight organism CLIP model (open_clip, saved locally), ``adapt --releve-encoder organism_text
--holdout-species FILE`` with DOFA-small (random weights unless --weights), then ``evaluate-zero-shot`` on the
run's test split (spatial blocks unseen in training) and on all plots. Prints both tables.

Measured (2 shared CPU cores, demo world v2, DOFA-small and tiny organism CLIP both with RANDOM weights, seed 0;
mean AUC over species on the test split, 86 plots, 95% bootstrap intervals over species). Chosen on ``dev``
(genus seen, 5 species; congener 0.89 [0.81, 0.95], ceiling 0.92-0.93 in every run):

    setting (adapt overrides)                                   zero-shot, genus seen   genus unseen (2)
    old defaults (text_ranks=[species], species_query_weight=0)  0.79 [0.72, 0.85]       0.46
    species_query_weight=0.03 / 0.1 / 1.0                        0.83 / 0.85 / 0.82      0.23 / 0.23 / 0.26
    text_ranks=[species,genus]                                   0.80 [0.75, 0.85]       0.33
    both (text_ranks=[species,genus], species_query_weight=0.1)  0.86 [0.78, 0.92]       0.28

(earlier, with ``text_ranks=[species]``: ``standardise_text`` 0.79 with it, 0.62 without, 0.73 with
``train_subsample=0.5`` too.) Rejected on ``dev`` without retraining: a one-species query in the context of
training relevés (mean embedding difference with/without the species, 0.81 at best on the old run, 0.20-0.29 for
genus unseen) and soft nearest seen species in text space (ConSE-like, temperature chosen leave-one-species-out
on the training species: 0.62-0.72), because the random text encoder's nearest neighbour of a name is often not
a congener. The last line became the default; the old defaults' one-species query ranks the test plots of the
*seen* species at mean AUC 0.68 (59 species), the new one at 0.88.

``--holdout report``, run once with the new defaults (``python benchmarks/bench_zero_shot_maps.py --holdout
report``): genus seen (9 species) zero-shot 0.69 [0.54, 0.83] (was 0.57 [0.42, 0.71]) vs congener 0.80 [0.65,
0.90] and ceiling 0.88 [0.82, 0.92]; zero-shot - congener -0.11 [-0.25, 0.00]. Failures: Erica cinerea 0.34,
Quercus pubescens 0.48, Prunus avium 0.33 (a niche exception; its congener's model scores 0.34). Genus unseen
(Pistacia, Alnus): zero-shot 0.50 [0.25, 0.76], ceiling 0.91. The targets (>= 0.70, above the congener) are still
not met, and species of unseen genera are no better than random (on dev below it: 0.28 vs 0.46 before).

Relatives (``aerial.zero_shot.RELATIVES_WEIGHT``, a query-time setting: the same runs re-scored, no retraining).
An unseen name's text pulled toward its closest seen relatives' mean (genus, else family, else order), weight w,
on ``dev`` (test split; two adapt seeds; congener 0.89 / 0.89):

    w                       0      0.25   0.5    0.75   1.0
    genus seen, seed 0      0.86   0.88   0.89   0.90   0.90
    genus seen, seed 1      0.78   0.83   0.86   0.88   0.89
    genus unseen, seed 0    0.28   0.32   0.37   0.42   0.47   (genus only: 0.28 at every w)
    genus unseen, seed 1    0.44   0.45   0.47   0.51   0.57

With relatives, ``species_query_weight`` 0.3 gave 0.90 / 0.88 (seeds 0 / 1) and 1.0 gave 0.89 (seed 0): no
better than 0.1, which stays. 0.75 became the default (1.0 scores a little higher on dev but drops the name's own text entirely, which a
pretrained text encoder would make informative). ``--holdout report``, run once with it (seed 0): genus seen
(9 species) zero-shot 0.77 [0.63, 0.88] vs congener 0.80 [0.65, 0.90] and ceiling 0.88 [0.82, 0.92]; zero-shot -
congener -0.02 [-0.07, 0.03]; per species it beats its congener's model for Pinus pinaster (0.78 vs 0.65, two
seen congeners averaged), Trifolium, Ranunculus; fails for Quercus pubescens (0.57 vs 0.70) and Prunus avium (0.28,
a niche exception). Genus unseen: Pistacia lentiscus 0.76 (no seen relative up to its order: its own text),
Alnus glutinosa 0.39 (pulled toward Betula pendula, a dry-ground birch: family is a poor prior there). On all
plots: 0.80 vs congener 0.82. The >= 0.70 target is met in the mean; "above the congener" is not (level within
the intervals).

Re-run with the final code (the set encoder gathers present species only: the same function, but attention
dropout draws differ, so training differs by seed-level noise): dev seed 0 0.87 [0.75, 0.95] (congener 0.89);
report genus seen 0.77 [0.61, 0.89] vs congener 0.80 [0.65, 0.90], paired -0.03 [-0.08, 0.02]; genus unseen
0.53 (Pistacia 0.73, Alnus 0.32); on all plots 0.80 vs 0.82.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

HOLDOUTS = {
    "dev": ["Festuca ovina", "Rumex obtusifolius", "Lavandula stoechas", "Thymus serpyllum", "Carex acutiformis",
            "Typha latifolia", "Hedera helix"],
    "report": ["Quercus pubescens", "Pinus pinaster", "Salix cinerea", "Trifolium repens", "Juncus inflexus",
               "Ranunculus repens", "Erica cinerea", "Cistus albidus", "Prunus avium", "Pistacia lentiscus",
               "Alnus glutinosa"],
}
ORGANISMS = {"tiny": "open_clip:ecoalign-tiny-vit", "small": "open_clip:ecoalign-small-vit"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--holdout", choices=sorted(HOLDOUTS), default="dev")
    ap.add_argument("--manifest", default="demo", help="data-set manifest (default: the shipped demo world)")
    ap.add_argument("--organism", default="tiny",
                    help=f"{' or '.join(sorted(ORGANISMS))} (random weights), or any organism encoder "
                         "load_organism_encoder takes, e.g. bioclip or local-dir:/path (pretrained weights)")
    ap.add_argument("--size", default="small", help="DOFA size")
    ap.add_argument("--weights", default="none", help="DOFA weights (none = random)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-boot", type=int, default=500)
    ap.add_argument("--out", default="bench-zero-shot-maps")
    ap.add_argument("overrides", nargs="*", help="extra adapt Hydra overrides (choose them on --holdout dev)")
    args = ap.parse_args()

    import pandas as pd
    import torch

    import ecoalign
    from ecoalign.encoders.organism import load_organism_encoder
    from ecoalign.sdm.zero_shot_eval import means

    label = args.organism if args.organism in ORGANISMS else "".join(c if c.isalnum() else "_" for c in args.organism)
    out = Path(args.out).absolute() / f"{args.holdout}-{label}-seed{args.seed}"
    out.mkdir(parents=True, exist_ok=True)
    organism = out / "organism"
    if not (organism / "organism_encoder.json").exists():
        torch.manual_seed(args.seed)
        load_organism_encoder(ORGANISMS.get(args.organism, args.organism)).save(organism)
    holdout = out / "holdout.txt"
    holdout.write_text("\n".join(HOLDOUTS[args.holdout]) + "\n")
    t0 = time.perf_counter()
    run = out / "run"
    if not (run / "encoder" / "zero_shot.json").exists():
        ecoalign.adapt([f"data.manifest={args.manifest}", f"backbone.size={args.size}", f"backbone.weights={args.weights}",
                        "trainer.baselines=false", "trainer.progress=false", f"seed={args.seed}",
                        "releve_encoder=organism_text", f"releve_encoder.organism_encoder={organism}",
                        *args.overrides], out=str(run), holdout_species=str(holdout))
    t1 = time.perf_counter()
    pd.set_option("display.width", 200)
    for plots in ("test", "all"):
        result = ecoalign.evaluate_zero_shot(run, plots=plots, n_boot=args.n_boot, seed=args.seed,
                                             out=out / f"eval-{plots}")
        wide = result.pivot(index="species", columns="method", values="auc")[["zero_shot", "ceiling", "congener",
                                                                               "random"]]
        info = result.drop_duplicates("species").set_index("species")[["congener", "presences", "plots"]]
        info = info.rename(columns={"congener": "nearest_seen_congener"})
        print(f"\n== holdout '{args.holdout}', organism {args.organism}, scored on {plots} plots: AUC ==")
        print(info.join(wide).to_string(float_format=lambda v: f"{v:.3f}"))
        m = means(result, n_boot=args.n_boot, seed=args.seed)
        print(m[m["metric"] == "auc"].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"\nadapt {t1 - t0:.0f} s, evaluation {time.perf_counter() - t1:.0f} s; reports in {out}")


if __name__ == "__main__":
    main()
