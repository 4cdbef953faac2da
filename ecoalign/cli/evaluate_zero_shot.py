"""``ecoalign evaluate-zero-shot``: zero-shot maps of held-out species scored at the plots, beside a species model
with their own data (ceiling), the nearest seen congener's model and random scores."""
from __future__ import annotations


def register(sub) -> dict:
    p = sub.add_parser("evaluate-zero-shot", help="score zero-shot maps of held-out species (AUC, Boyce) against "
                                                  "ceiling, congener and random references",
                       description="RUN is an `ecoalign adapt --releve-encoder organism_text --holdout-species FILE` "
                                   "run. Writes zero_shot_eval.csv, means.csv, report.md and auc.png into --out.")
    p.add_argument("run", help="adapt run directory (organism-text relevé encoder)")
    p.add_argument("--species", default=None, metavar="FILE",
                   help="species to score: a text file, one name a line, or a CSV (column 'species'); default: the "
                        "run's held-out species")
    p.add_argument("--out", default=None, help="report folder (default: <RUN>/zero_shot_eval)")
    p.add_argument("--manifest", default=None, help="manifest whose relevés give the truth (default: the run's)")
    p.add_argument("--plots", choices=("test", "all"), default="test",
                   help="score on the run's test split (spatial blocks unseen in training; default) or all plots")
    p.add_argument("--estimator", default="logistic",
                   help="species model of the ceiling and congener references (default logistic)")
    p.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples for the intervals (default 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--relatives-weight", type=float, default=None, metavar="W",
                   help="pull each held-out name toward its closest seen relatives' text with this weight in [0, 1] "
                        "(default: the chosen default, as maps use)")
    p.add_argument("--organism-encoder", default=None,
                   help="where the run's organism text encoder now lies (checked to be the same model)")
    return {"evaluate-zero-shot": run}


def run(args) -> int:
    from pathlib import Path

    from ecoalign.sdm.zero_shot_eval import evaluate_zero_shot

    out = Path(args.out) if args.out else Path(args.run) / "zero_shot_eval"
    result = evaluate_zero_shot(args.run, species=args.species, out=out, manifest=args.manifest, plots=args.plots,
                                estimator=args.estimator, n_boot=args.n_boot, seed=args.seed,
                                organism_encoder=args.organism_encoder, relatives_weight=args.relatives_weight)
    cols = [c for c in ("species", "method", "presences", "auc", "boyce") if c in result]
    print(result[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"report: {out / 'report.md'}")
    return 0
