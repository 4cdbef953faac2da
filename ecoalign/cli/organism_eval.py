"""Verbs that evaluate or apply an organism CLIP encoder: zero-shot, few-shot, predict, intrinsic, embed --images.

Heavy imports (torch, open_clip, pandas) stay inside the verbs so ``ecoalign --help`` stays fast.
"""
from __future__ import annotations

from pathlib import Path

from ecoalign.core.errors import EcoalignInputError

TABLE_SUFFIXES = (".csv", ".parquet")


# --------------------------------------------------------------------------------------------- arguments
def _encoder_args(p) -> None:
    p.add_argument("--encoder", required=True,
                   help="train-organism run dir, saved encoder dir, open_clip:ARCH (+ --weights), local-dir:..., "
                        "bioclip")
    p.add_argument("--weights", default="none", help="weights file for open_clip:ARCH (default: none = random)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=64)


def _data_args(p) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--curated", help="a folder written by `ecoalign curate`")
    src.add_argument("--table", help="labelled image table (CSV/Parquet): an image path column + rank columns")
    p.add_argument("--split", default="test", help="curated split (train | val | test | test_unseen; default test)")
    p.add_argument("--images-root", help="folder the table's relative paths start from (default: the table's)")


def _out_args(p, help_text: str, required: bool = True) -> None:
    p.add_argument("--out", required=required, help=help_text)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")


def register(sub) -> dict:
    from ecoalign.data.taxonomy import RANKS, TEXT_TYPES

    z = sub.add_parser("zero-shot", help="zero-shot accuracy of an organism encoder at any rank (top-1/top-5, "
                                         "Wilson 95%% intervals)")
    _encoder_args(z)
    _data_args(z)
    z.add_argument("--rank", nargs="+", default=["species"], choices=RANKS, help="rank(s) (default: species)")
    z.add_argument("--method", default="sum", choices=("sum", "text"),
                   help="above species: sum species probabilities (sum, default) or rank-level text (text)")
    z.add_argument("--text-type", default="taxonomic", choices=TEXT_TYPES, help="class text (default: taxonomic)")
    z.add_argument("--labels", help="table of candidate taxa (default: the taxa of the evaluated images)")
    _out_args(z, "report: .json or .csv", required=False)

    f = sub.add_parser("few-shot", help="SimpleShot k-shot accuracy over repeated random folds")
    _encoder_args(f)
    _data_args(f)
    f.add_argument("--k", nargs="+", type=int, default=[1, 5], help="shots per class (default: 1 5)")
    f.add_argument("--folds", type=int, default=10, help="random support/query folds (default: 10)")
    f.add_argument("--rank", default="species", choices=RANKS, help="rank that defines the classes")
    f.add_argument("--seed", type=int, default=0)
    _out_args(f, "report: .json or .csv", required=False)

    p = sub.add_parser("predict", help="top-k zero-shot predictions for a folder of photos -> CSV/Parquet")
    p.add_argument("images", help="folder of photos (searched recursively) or one image")
    _encoder_args(p)
    cls = p.add_mutually_exclusive_group(required=True)
    cls.add_argument("--labels", help="table of candidate taxa (rank columns kingdom..species)")
    cls.add_argument("--classes", help="free-text class names: 'a,b,c' or a text file with one per line")
    p.add_argument("--rank", default="species", choices=RANKS, help="rank of the predictions (with --labels)")
    p.add_argument("--method", default="sum", choices=("sum", "text"))
    p.add_argument("--text-type", default="taxonomic", choices=TEXT_TYPES)
    p.add_argument("--k", type=int, default=5, help="predictions per image (default: 5)")
    _out_args(p, "output table: .csv or .parquet")

    i = sub.add_parser("intrinsic", help="BioCLIP 2 intrinsic analysis: explained-variance ratio, Fisher ratio, "
                                         "2-D plot coloured by rank")
    _encoder_args(i)
    _data_args(i)
    i.add_argument("--rank", default="genus", choices=RANKS, help="rank for colours and between-taxa FDR")
    i.add_argument("--variant-column", help="table column with intra-species variants (life stage, sex ...)")
    i.add_argument("--projection", default="pca", choices=("pca", "tsne"))
    i.add_argument("--seed", type=int, default=0)
    _out_args(i, "output folder (intrinsic.json + PNG)")
    return {"zero-shot": zero_shot_verb, "few-shot": few_shot_verb, "predict": predict_verb,
            "intrinsic": intrinsic_verb}


# ------------------------------------------------------------------------------------------------ helpers
def _check_out(out, overwrite: bool, suffixes=None) -> Path | None:
    if out is None:
        return None
    out = Path(out)
    if suffixes and out.suffix.lower() not in suffixes:
        raise EcoalignInputError(f"output suffix '{out.suffix}'", path=out, expected=" or ".join(suffixes))
    if out.exists() and not overwrite:
        raise EcoalignInputError("output exists", path=out, expected="another --out, or --overwrite")
    return out


def _write_table(df, out: Path, meta: dict | None = None) -> None:
    """CSV or Parquet by suffix, atomically; Parquet carries ``meta`` (encoder identity ...) in its schema."""
    import json

    from ecoalign.core.io import atomic_path

    with atomic_path(out) as tmp:
        if out.suffix.lower() == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(df, preserve_index=False)
            if meta:
                table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                                       b"ecoalign": json.dumps(meta, default=str).encode()})
            pq.write_table(table, tmp)
        else:
            df.to_csv(tmp, index=False)


def _report_skipped(skipped, out: Path | None) -> None:
    """Unreadable images: listed on screen and, with an output, in ``<out>.skipped.csv``."""
    if not skipped:
        return
    print(f"[ecoalign] skipped {len(skipped)} unreadable image(s):")
    for name, why in skipped[:20]:
        print(f"  {name}: {why}")
    if out is not None:
        import pandas as pd

        from ecoalign.core.io import atomic_path

        side = out.with_name(out.name + ".skipped.csv")
        with atomic_path(side) as tmp:
            pd.DataFrame(skipped, columns=["file_name", "reason"]).to_csv(tmp, index=False)
        print(f"[ecoalign] list of skipped images: {side}")


def _load_encoder(args):
    from ecoalign.encoders.organism import load_organism_encoder

    enc = load_organism_encoder(args.encoder, weights=args.weights, device=args.device)
    if enc.random_weights:
        print("[ecoalign] note: encoder on RANDOM weights")
    return enc


def _embedded_data(args, encoder):
    """(names, taxa, embeddings, skipped, notes) for --curated/--split or --table."""
    from ecoalign.organism.evaluate import embed_items, iter_curated, read_labelled_table

    notes: list[str] = []
    if args.curated:
        items, total = iter_curated(args.curated, args.split)
    else:
        items, notes = read_labelled_table(args.table, args.images_root)
        total = len(items)
        if notes:
            print(f"[ecoalign] {len(notes)} label note(s), e.g. {notes[0]}")
    names, taxa, emb, skipped = embed_items(encoder, items, batch_size=args.batch_size, total=total)
    if not names:
        raise EcoalignInputError("no readable labelled image", path=args.curated or args.table)
    return names, taxa, emb, skipped, notes


def _candidate_taxa(labels_path):
    from ecoalign.organism.evaluate import read_table, taxa_from_table

    taxa, notes = taxa_from_table(read_table(labels_path), labels_path)
    taxa = [t for t in taxa if t is not None]
    if not taxa:
        raise EcoalignInputError("no taxon in the labels table", path=labels_path, expected="rank columns with names")
    return taxa, notes


def _write_report(out: Path | None, payload: dict, rows: list[dict]) -> None:
    import pandas as pd

    from ecoalign.core.io import write_json

    if out is None:
        return
    if out.suffix.lower() == ".json":
        write_json(out, payload)
    else:
        _write_table(pd.DataFrame(rows), out)
    print(f"[ecoalign] wrote {out}")


# ------------------------------------------------------------------------------------------------- verbs
def zero_shot_verb(args) -> int:
    from ecoalign.organism.evaluate import build_classes, zero_shot_accuracy

    out = _check_out(args.out, args.overwrite, (".json", ".csv"))
    encoder = _load_encoder(args)
    names, taxa, emb, skipped, notes = _embedded_data(args, encoder)
    candidates = _candidate_taxa(args.labels)[0] if args.labels else [t for t in taxa if t is not None]
    results, rows = [], []
    for rank in args.rank:
        classes = build_classes(encoder, candidates, rank, method=args.method, text_type=args.text_type)
        report, _ = zero_shot_accuracy(emb, taxa, classes)
        results.append(report.to_dict())
        t1, t5 = report.top1, report.top5
        print(f"[ecoalign] zero-shot {rank:<8} ({args.method}, {report.n_classes} classes, {report.n_images} images):"
              f" top-1 {t1.value:.3f} [{t1.low:.3f}, {t1.high:.3f}]  top-{report.top5_k} {t5.value:.3f} "
              f"[{t5.low:.3f}, {t5.high:.3f}]")
        rows.append({"rank": rank, "method": args.method, "text_type": args.text_type, "classes": report.n_classes,
                     "images": report.n_images, "top1": t1.value, "top1_low": t1.low, "top1_high": t1.high,
                     "top5_k": report.top5_k, "top5": t5.value, "top5_low": t5.low, "top5_high": t5.high})
    _report_skipped(skipped, out)
    payload = {"encoder": encoder.identity(), "data": args.curated or args.table,
               "split": args.split if args.curated else None, "results": results,
               "skipped": [{"file_name": n, "reason": r} for n, r in skipped], "label_notes": notes}
    _write_report(out, payload, rows)
    return 0


def few_shot_verb(args) -> int:
    from ecoalign.organism.evaluate import few_shot

    out = _check_out(args.out, args.overwrite, (".json", ".csv"))
    encoder = _load_encoder(args)
    names, taxa, emb, skipped, notes = _embedded_data(args, encoder)
    keep = [i for i, t in enumerate(taxa) if t is not None and t.label(args.rank) is not None]
    labels = [taxa[i].label(args.rank) for i in keep]
    results, rows = [], []
    for k in args.k:
        rep = few_shot(emb[keep], labels, k, folds=args.folds, seed=args.seed)
        results.append(rep.to_dict())
        print(f"[ecoalign] {k}-shot {args.rank} ({rep.n_classes} classes, {rep.folds} folds, {rep.queries_per_fold}"
              f" queries/fold): {rep.mean:.3f} [{rep.low:.3f}, {rep.high:.3f}]"
              + (f"; {len(rep.excluded_classes)} class(es) with <= {k} images left out" if rep.excluded_classes else ""))
        rows.append({"rank": args.rank, "k": k, "folds": rep.folds, "classes": rep.n_classes, "accuracy": rep.mean,
                     "low": rep.low, "high": rep.high})
    _report_skipped(skipped, out)
    payload = {"encoder": encoder.identity(), "data": args.curated or args.table, "rank": args.rank,
               "images_without_rank": len(taxa) - len(keep), "results": results,
               "skipped": [{"file_name": n, "reason": r} for n, r in skipped]}
    _write_report(out, payload, rows)
    return 0


def _class_names(spec: str) -> list[str]:
    path = Path(spec)
    if path.is_file():
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return [s.strip() for s in spec.split(",") if s.strip()]


def predict_verb(args) -> int:
    from ecoalign.organism.evaluate import build_classes, custom_classes, predict_folder

    out = _check_out(args.out, args.overwrite, TABLE_SUFFIXES)
    if args.k < 1:
        raise EcoalignInputError(f"--k {args.k}", expected="k >= 1")
    encoder = _load_encoder(args)
    if args.labels:
        classes = build_classes(encoder, _candidate_taxa(args.labels)[0], args.rank, method=args.method,
                                text_type=args.text_type)
    else:
        classes = custom_classes(encoder, _class_names(args.classes))
    table, skipped = predict_folder(encoder, args.images, classes, k=args.k, batch_size=args.batch_size)
    meta = {"encoder": encoder.identity(), "rank": classes.rank, "method": classes.method, "k": args.k,
            "classes": len(classes.labels)}
    _write_table(table, out, meta)
    n_img = table["file_name"].nunique() if len(table) else 0
    print(f"[ecoalign] wrote {len(table)} predictions for {n_img} image(s) ({len(classes.labels)} classes at "
          f"{classes.rank}) to {out}")
    _report_skipped(skipped, out)
    return 0


def intrinsic_verb(args) -> int:
    from ecoalign.organism.evaluate import path_column, read_table
    from ecoalign.organism.intrinsic import intrinsic_analysis

    out = Path(args.out)
    if (out / "intrinsic.json").exists() and not args.overwrite:
        raise EcoalignInputError("output exists", path=out / "intrinsic.json", expected="another --out, or --overwrite")
    if args.variant_column and not args.table:
        raise EcoalignInputError("--variant-column needs --table", expected="a labelled table with that column")
    encoder = _load_encoder(args)
    names, taxa, emb, skipped, _ = _embedded_data(args, encoder)
    variants = None
    if args.variant_column:
        df = read_table(args.table)
        if args.variant_column not in df.columns:
            raise EcoalignInputError(f"no column '{args.variant_column}'", path=args.table,
                                     expected=f"one of {list(df.columns)}")
        by_name = dict(zip(df[path_column(df, args.table)].astype(str), df[args.variant_column].astype(str)))
        variants = [by_name[n] for n in names]
    report = intrinsic_analysis(emb, taxa, rank=args.rank, variants=variants, method=args.projection, out_dir=out,
                                seed=args.seed)
    ev, fdr = report["explained_variance_ratio"], report["fisher_species"]
    print("[ecoalign] explained-variance ratio " + (
        f"rho = {ev['rho']:.3f} (chance {ev['chance']:.3f}, span {ev['span_dim']} of {ev['embed_dim']} dims)"
        if "rho" in ev else f"not measured: {ev['not_measured']}"))
    print("[ecoalign] Fisher ratio between species " + (f"{fdr['mean']:.3f} (mean of {fdr['pairs']} pairs)"
                                                        if "mean" in fdr else f"not measured: {fdr['not_measured']}"))
    print(f"[ecoalign] wrote {out / 'intrinsic.json'} and {report['plot']}")
    _report_skipped(skipped, out / "intrinsic.json")
    return 0


def embed_images_verb(args) -> int:
    """``ecoalign embed --images DIR --encoder E --out X.csv|.parquet``: one row per image, file_name + emb_000..."""
    from ecoalign.encoders.registry import is_organism_encoder
    from ecoalign.organism.evaluate import embed_folder

    out = _check_out(args.out, args.overwrite, TABLE_SUFFIXES)
    if not is_organism_encoder(args.encoder):
        raise EcoalignInputError(f"--images needs an organism encoder, not '{args.encoder}'",
                                 expected="a train-organism run dir, open_clip:ARCH, local-dir:... or bioclip")
    args.device = getattr(args, "device", "cpu")
    encoder = _load_encoder(args)
    table, skipped = embed_folder(encoder, args.images, batch_size=args.batch_size)
    _write_table(table, out, {"encoder": encoder.identity(), "images": str(args.images)})
    print(f"[ecoalign] wrote {len(table)} image embeddings (D={encoder.embed_dim}) to {out}")
    _report_skipped(skipped, out)
    return 0
