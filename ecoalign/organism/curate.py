"""``ecoalign curate``: a metadata table of organism photos -> filtered, de-duplicated, split webdataset shards.

Why: the BioCLIP/BioTrove recipe depends as much on the data as on the model: clean 7-rank names, caps and
floors per species, no evaluation image or species leaking into training, an unseen-species split, and
shards whose samples are mixed across species (semi-global shuffling). Every decision is recorded in
``curation.json`` so a data set can be rebuilt and audited. Steps, in order:

read table -> clean taxa (rows with no rank dropped; gaps kept at the deepest rank) -> include/exclude
-> read and hash images (unreadable/truncated skipped) -> drop images also in an evaluation set -> drop
exact duplicates (keep one; a copy in a val/test split wins over a training copy) -> min/max per species
-> splits (unseen species, then val/test per seen species) -> leakage check against evaluation sets
-> semi-global shuffle -> shards + metadata.parquet + report/.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from ecoalign.core.errors import EcoalignInputError
from ecoalign.core.io import atomic_dir, write_json
from ecoalign.data.taxonomy import RANKS, TEXT_TYPES, Taxon, text
from ecoalign.organism.tables import (
    Table,
    fetch_bytes,
    is_url,
    read_table,
    resolve_source,
    table_taxa,
)

log = logging.getLogger(__name__)
SPLIT_PRIORITY = {"test_unseen": 0, "test": 1, "val": 2, "train": 3}  # which copy of a duplicate survives
_FORMAT_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
# written by webdataset's ShardWriter: <key>.<image ext>, <key>.txt (taxonomic + common caption, what open_clip_train
# reads), <key>.json, <key>.<text type>.txt; <split>/sizes.json with the samples per shard
SHARD_FORMAT = 2


def check_image(data: bytes) -> tuple[str, tuple[int, int]]:
    """Fully decode the image (catches truncated files); return its extension and size."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        fmt = im.format
        im.load()
        size = im.size
    return _FORMAT_EXT.get(fmt, "png"), size


def image_payload(data: bytes) -> tuple[str, bytes]:
    """(extension, bytes) to store: original bytes for JPEG/PNG/WebP, PNG re-encoding otherwise."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        ext = _FORMAT_EXT.get(im.format)
        if ext:
            return ext, data
        buf = io.BytesIO()
        im.convert("RGB").save(buf, format="PNG")
        return "png", buf.getvalue()


def _parse_filters(specs: Iterable[str], flag: str) -> list[tuple[str, str]]:
    out = []
    for spec in specs or ():
        rank, sep, name = str(spec).partition("=")
        rank = rank.strip().lower()
        rank = "class" if rank == "cls" else rank
        if not sep or rank not in RANKS or not name.strip():
            raise EcoalignInputError(f"bad filter {spec!r}", where=flag,
                                     expected=f"RANK=NAME with RANK one of {RANKS}, e.g. family=Corvidae")
        out.append((rank, " ".join(name.split()).lower()))
    return out


def _parse_eval_sets(eval_sets) -> dict[str, str]:
    """Evaluation sets as {name: table}: a mapping, or 'NAME=TABLE' strings (the command's --eval-set)."""
    if isinstance(eval_sets, Mapping):
        return {str(k): str(v) for k, v in eval_sets.items()}
    out = {}
    for spec in eval_sets or ():
        name, sep, path = str(spec).partition("=")
        if not sep or not name.strip() or not path.strip():
            raise EcoalignInputError(f"bad evaluation set {spec!r}", where="--eval-set",
                                     expected="NAME=TABLE, e.g. rare=rare_species.csv")
        out[name.strip()] = path.strip()
    return out


def _matches(taxon: Taxon, rank: str, name: str) -> bool:
    value = taxon.name_at(rank)
    return value is not None and value.lower() == name


def _read_unseen(spec) -> list[str]:
    """--unseen-species: a list, a comma-separated string, or a text file with one name per line."""
    if spec is None:
        return []
    if isinstance(spec, (str, os.PathLike)):
        p = Path(spec)
        if p.suffix in (".txt", ".csv") or p.exists():
            if not p.exists():
                raise EcoalignInputError("unseen-species file not found", path=p, expected="one name per line")
            items = p.read_text().splitlines()
        else:
            items = str(spec).split(",")
    else:
        items = list(spec)
    return [" ".join(s.split()) for s in items if s.strip()]


def semi_global_shuffle(n: int, buffer: int | None, rng: np.random.Generator) -> np.ndarray:
    """Order for n items: cut into chunks of buffer/8, shuffle the chunk order, merge 8 chunks into a group
    and shuffle inside each group (BioTrove's semi-global shuffle; a full shuffle when n <= buffer)."""
    if buffer is None or buffer >= n:
        return rng.permutation(n)
    if buffer < 1:
        raise EcoalignInputError(f"shuffle buffer {buffer} must be at least 1", where="--shuffle-buffer")
    chunk = max(1, buffer // 8)
    chunks = [np.arange(i, min(i + chunk, n)) for i in range(0, n, chunk)]
    order = rng.permutation(len(chunks))
    out = []
    for g in range(0, len(order), 8):
        group = np.concatenate([chunks[i] for i in order[g:g + 8]])
        out.append(rng.permutation(group))
    return np.concatenate(out)


def _assign_splits(groups: Mapping[str, list[int]], species_level: set[str], unseen: set[str],
                   val_fraction: float, test_fraction: float, rng) -> dict[int, str]:
    split = {}
    for label in sorted(groups):
        rows = groups[label]
        if label in unseen:
            split.update({i: "test_unseen" for i in rows})
            continue
        order = [rows[j] for j in rng.permutation(len(rows))]
        n = len(order)
        n_val = int(round(val_fraction * n))
        n_test = int(round(test_fraction * n))
        while n_val + n_test >= n and (n_val or n_test):  # keep at least one training image
            if n_val >= n_test:
                n_val -= 1
            else:
                n_test -= 1
        for k, i in enumerate(order):
            split[i] = "val" if k < n_val else ("test" if k < n_val + n_test else "train")
    return split


def curate(table: str | os.PathLike, out: str | os.PathLike, *, min_per_species: int = 1,
           max_per_species: int | None = None, include: Sequence[str] = (), exclude: Sequence[str] = (),
           eval_sets: Mapping[str, str | os.PathLike] | Sequence[str] | None = None, allow_leakage: bool = False,
           unseen_fraction: float | None = None, unseen_species=None, val_fraction: float | None = None,
           test_fraction: float | None = None, ignore_split_column: bool = False, shard_size: int = 1000,
           shuffle_buffer: int | None = 50_000, seed: int = 0, overwrite: bool = False,
           progress: bool = True) -> dict:
    """Curate ``table`` into ``out`` (see the module docstring); returns the curation record (curation.json).

    Python face of ``ecoalign curate``, same arguments: ``include``/``exclude`` are 'RANK=NAME' strings,
    ``eval_sets`` {name: table} or 'NAME=TABLE' strings, ``unseen_species`` names, 'A b,C d' or a file.
    Splits come either from the table's split column or from the fractions (default val 0.1, test 0.1,
    unseen 0): giving fractions with a split column is refused unless ``ignore_split_column``."""
    from tqdm.auto import tqdm

    out = Path(out)
    eval_sets = _parse_eval_sets(eval_sets)
    if out.exists() and not overwrite:
        raise EcoalignInputError("output exists", path=out, expected="a new directory, or --overwrite")
    tab = read_table(table)
    if ignore_split_column:
        tab.split_col = None
    asked_fractions = [name for name, v in (("--val-fraction", val_fraction), ("--test-fraction", test_fraction),
                                            ("--unseen-fraction", unseen_fraction),
                                            ("--unseen-species", unseen_species)) if v is not None]
    if tab.split_col is not None and asked_fractions:
        raise EcoalignInputError(f"the table has a split column {tab.split_col!r}, and {', '.join(asked_fractions)} "
                                 f"would be ignored", path=tab.path,
                                 expected="either the column's splits (no fractions) or the fractions with "
                                          "--ignore-split-column")
    split_source = f"column {tab.split_col!r}" if tab.split_col is not None else "fractions"
    val_fraction = 0.1 if val_fraction is None else val_fraction
    test_fraction = 0.1 if test_fraction is None else test_fraction
    unseen_fraction = 0.0 if unseen_fraction is None else unseen_fraction
    if tab.split_col is not None:
        log.info("splits taken from the table's column %r (val/test/unseen fractions not used)", tab.split_col)
    for name, value in (("--val-fraction", val_fraction), ("--test-fraction", test_fraction),
                        ("--unseen-fraction", unseen_fraction)):
        if not 0 <= value < 1:
            raise EcoalignInputError(f"{value} out of range", where=name, expected="a fraction in [0, 1)")
    if val_fraction + test_fraction >= 1:
        raise EcoalignInputError("val + test fractions leave no training images", where="--val/--test-fraction")
    if min_per_species < 1 or (max_per_species is not None and max_per_species < min_per_species):
        raise EcoalignInputError("bad per-species limits", where="--min/--max-per-species",
                                 expected="1 <= min <= max")
    includes, excludes = _parse_filters(include, "--include"), _parse_filters(exclude, "--exclude")
    rng = np.random.default_rng(seed)
    n_rows = len(tab.frame)
    record: dict = {"table": str(tab.path), "seed": seed, "columns": {"image": tab.image_col, **tab.rank_cols,
                    "common": tab.common_col, "split": tab.split_col},
                    "options": {"min_per_species": min_per_species, "max_per_species": max_per_species,
                                "include": list(include), "exclude": list(exclude),
                                "eval_sets": eval_sets,
                                "allow_leakage": allow_leakage, "split_source": split_source,
                                "ignore_split_column": ignore_split_column,
                                **({"unseen_fraction": unseen_fraction, "val_fraction": val_fraction,
                                    "test_fraction": test_fraction} if tab.split_col is None else
                                   {"unseen_fraction": None, "val_fraction": None, "test_fraction": None}),
                                "shard_size": shard_size, "shuffle_buffer": shuffle_buffer},
                    "shard_format": SHARD_FORMAT, "steps": []}

    def step(name, before, after, **extra):
        record["steps"].append({"step": name, "before": before, "after": after, **extra})

    # 1. taxa
    taxa, notes = table_taxa(tab)
    no_taxon = [i for i, t in enumerate(taxa) if t.depth == 0]
    keep = [i for i, t in enumerate(taxa) if t.depth > 0]
    record["no_taxonomy"] = [{"row": i, "source": str(tab.frame.at[i, tab.image_col])} for i in no_taxon]
    record["missing_ranks"] = [{"row": i, "source": str(tab.frame.at[i, tab.image_col]), "kept_at": taxa[i].rank,
                                "name": taxa[i].scientific} for i in keep if taxa[i].depth < len(RANKS)]
    note_counts: dict[str, int] = {}
    for n in notes:
        for note in n:
            note_counts[note] = note_counts.get(note, 0) + 1
    record["name_cleaning"] = [{"note": k, "rows": v} for k, v in sorted(note_counts.items())]
    step("taxonomy", n_rows, len(keep))
    # 2. include / exclude
    before = len(keep)
    if includes:
        keep = [i for i in keep if any(_matches(taxa[i], r, n) for r, n in includes)]
    if excludes:
        keep = [i for i in keep if not any(_matches(taxa[i], r, n) for r, n in excludes)]
    step("include/exclude", before, len(keep))
    if not keep:
        raise EcoalignInputError("no rows left after the taxonomy and include/exclude filters", path=tab.path)
    # 3. images
    sources = {i: resolve_source(tab.frame.at[i, tab.image_col], tab.path) for i in keep}
    sha, unreadable, url_errors = {}, [], 0
    for i in tqdm(keep, desc="[ecoalign] checking images", disable=not progress, unit="img"):
        src = sources[i]
        try:
            if not src:
                raise OSError("empty image path")
            data = fetch_bytes(src)
        except OSError as exc:
            url_errors += is_url(src)
            unreadable.append({"row": i, "source": src, "reason": f"cannot read: {exc}"})
            continue
        try:
            check_image(data)
        except Exception as exc:  # PIL raises OSError/SyntaxError/ValueError on bad or truncated files
            unreadable.append({"row": i, "source": src, "reason": f"not a readable image: {exc}"})
            continue
        sha[i] = hashlib.sha256(data).hexdigest()
    n_urls = sum(is_url(sources[i]) for i in keep)
    if n_urls and url_errors == n_urls and not sha:
        raise EcoalignInputError(f"none of the {n_urls} image URLs could be fetched (offline?); first: "
                                 f"{unreadable[0]['reason']}", path=tab.path, where=f"column {tab.image_col!r}",
                                 expected="reachable URLs, or local copies of the images with relative paths")
    if not sha:
        raise EcoalignInputError(f"no readable image among {len(keep)} rows; first: {unreadable[0]['source']} "
                                 f"({unreadable[0]['reason']})", path=tab.path, where=f"column {tab.image_col!r}",
                                 expected="image paths relative to the table, absolute paths, or URLs")
    record["unreadable"] = unreadable
    step("readable images", len(keep), len(sha))
    keep = [i for i in keep if i in sha]
    # 4. evaluation sets: their images and species
    eval_species: dict[str, set[str]] = {}
    eval_sha: dict[str, str] = {}
    for name, path in eval_sets.items():
        etab = read_table(path, need_images=False)
        etaxa, _ = table_taxa(etab)
        eval_species[name] = {t.scientific for t in etaxa if t.depth == len(RANKS)}
        hashed = 0
        if etab.image_col is not None:
            for j in range(len(etab.frame)):
                try:
                    eval_sha.setdefault(hashlib.sha256(fetch_bytes(
                        resolve_source(etab.frame.at[j, etab.image_col], etab.path))).hexdigest(), name)
                    hashed += 1
                except OSError:
                    pass
        record.setdefault("eval_sets", {})[name] = {"rows": len(etab.frame), "species": len(eval_species[name]),
                                                    "images_hashed": hashed}
    before = len(keep)
    record["eval_duplicates"] = [{"row": i, "source": sources[i], "eval_set": eval_sha[sha[i]]}
                                 for i in keep if sha[i] in eval_sha]
    keep = [i for i in keep if sha[i] not in eval_sha]
    step("not in evaluation sets", before, len(keep))
    # 5. exact duplicates within the table: one copy kept (a val/test copy beats a training copy)
    given_split = {}
    if tab.split_col is not None:
        for i in keep:
            s = str(tab.frame.at[i, tab.split_col]).strip().lower()
            s = {"validation": "val", "valid": "val", "unseen": "test_unseen"}.get(s, s)
            if s not in SPLIT_PRIORITY:
                raise EcoalignInputError(f"unknown split {s!r}", path=tab.path,
                                         where=f"row {i}, column {tab.split_col!r}",
                                         expected=f"one of {list(SPLIT_PRIORITY)}")
            given_split[i] = s
    first: dict[str, int] = {}
    for i in sorted(keep, key=lambda i: (SPLIT_PRIORITY.get(given_split.get(i, "train")), i)):
        first.setdefault(sha[i], i)
    record["duplicates"] = [{"row": i, "source": sources[i], "duplicate_of_row": first[sha[i]],
                             "split": given_split.get(i), "kept_split": given_split.get(first[sha[i]]),
                             "same_taxon": taxa[i] == taxa[first[sha[i]]]}
                            for i in keep if first[sha[i]] != i]
    before = len(keep)
    keep = [i for i in keep if first[sha[i]] == i]
    step("exact duplicates", before, len(keep))
    # 6. per-species floor and cap (a row not at species rank counts in the group of its deepest label)
    groups: dict[str, list[int]] = {}
    for i in keep:
        groups.setdefault(taxa[i].label(taxa[i].rank), []).append(i)
    before = len(keep)
    small = sorted(g for g, rows in groups.items() if len(rows) < min_per_species)
    for g in small:
        del groups[g]
    record["below_min_per_species"] = small
    capped = {}
    if max_per_species is not None:
        for g, rows in groups.items():
            if len(rows) > max_per_species:
                capped[g] = len(rows)
                groups[g] = sorted(rows[j] for j in rng.choice(len(rows), max_per_species, replace=False))
    record["capped_species"] = capped
    keep = sorted(i for rows in groups.values() for i in rows)
    step("min/max per species", before, len(keep))
    if not keep:
        raise EcoalignInputError(f"no species has at least {min_per_species} images", path=tab.path,
                                 where="--min-per-species")
    # 7. splits
    species_level = {g for g in groups if taxa[groups[g][0]].depth == len(RANKS)}
    label_of_name = {taxa[groups[g][0]].scientific.lower(): g for g in species_level}
    asked = _read_unseen(unseen_species)
    unknown = [s for s in asked if s.lower() not in label_of_name]
    unseen = {label_of_name[s.lower()] for s in asked if s.lower() in label_of_name}
    if given_split:
        split = {i: given_split[i] for i in keep}
    else:
        rest = sorted(species_level - unseen)
        n_more = int(round(unseen_fraction * len(species_level)))
        if n_more:
            unseen |= {rest[j] for j in rng.choice(len(rest), min(n_more, len(rest)), replace=False)}
        split = _assign_splits(groups, species_level, unseen, val_fraction, test_fraction, rng)
    record["unseen_species_not_found"] = unknown
    train_species = {taxa[i].scientific for i in keep if split[i] == "train" and taxa[i].depth == len(RANKS)}
    unseen_names = {taxa[i].scientific for i in keep if split[i] == "test_unseen"}
    overlap = sorted(train_species & unseen_names)
    if overlap:
        raise EcoalignInputError(f"species both in train and test_unseen: {overlap[:10]}", path=tab.path,
                                 where=f"column {tab.split_col!r}", expected="unseen species absent from train")
    # 8. leakage: evaluation-set species that would be trained on
    leaks = {name: sorted(train_species & names) for name, names in eval_species.items()}
    leaks = {k: v for k, v in leaks.items() if v}
    record["leakage"] = {"species": leaks, "allowed": bool(allow_leakage and leaks)}
    if leaks and not allow_leakage:
        listing = "; ".join(f"{k}: {', '.join(v[:10])}{' ...' if len(v) > 10 else ''}" for k, v in leaks.items())
        raise EcoalignInputError(
            f"species of evaluation sets would be in training ({listing})", path=tab.path,
            expected="--exclude species=NAME, --unseen-species NAME (to evaluate them as unseen), "
                     "or --allow-leakage to train on them anyway (reported in curation.json)")
    # 9. write
    splits = {s: [i for i in keep if split[i] == s] for s in SPLIT_PRIORITY}
    record["splits"] = {s: {"images": len(rows), "taxa": len({taxa[i].label(taxa[i].rank) for i in rows})}
                        for s, rows in splits.items()}
    record["unseen_species"] = sorted(unseen_names)
    _write_outputs(out, tab, taxa, sources, sha, splits, record, shard_size=shard_size,
                   shuffle_buffer=shuffle_buffer, rng=rng, overwrite=overwrite, progress=progress)
    _log_summary(record, out)
    return record


def _write_outputs(out: Path, tab: Table, taxa, sources, sha, splits, record, *, shard_size, shuffle_buffer, rng,
                   overwrite, progress):
    """Build everything in a temporary directory beside ``out``; swap it into place at the end."""
    import pandas as pd
    from tqdm.auto import tqdm

    from ecoalign.organism.shards import sample_record, write_shards
    from ecoalign.organism.stats import write_report

    with atomic_dir(out) as tmp:
        rows = []
        total = sum(len(v) for v in splits.values())
        bar = tqdm(total=total, desc="[ecoalign] writing shards", disable=not progress, unit="img")
        for split, members in splits.items():
            order = [members[j] for j in semi_global_shuffle(len(members), shuffle_buffer, rng)]

            def records():
                for k, i in enumerate(order):
                    t = taxa[i]
                    raw = fetch_bytes(sources[i])
                    if hashlib.sha256(raw).hexdigest() != sha[i]:
                        raise EcoalignInputError("image changed while curating; run again", path=sources[i])
                    ext, data = image_payload(raw)
                    key = sha[i][:24]
                    meta = {"key": key, "taxon": {r: v for r, v in t.as_dict().items() if r != "common"},
                            "common": t.common, "split": split, "source": sources[i], "sha256": sha[i]}
                    rows.append({"key": key, "source": sources[i], "sha256": sha[i], "split": split,
                                 **{r: t.as_dict()[r] for r in RANKS}, "common": t.common, "depth": t.depth,
                                 "rank": t.rank, "shard": f"{split}/shard-{k // shard_size:06d}.tar",
                                 "row": int(i)})
                    bar.update()
                    yield sample_record(key, data, ext, meta, {kind: text(t, kind) for kind in TEXT_TYPES},
                                        caption=text(t, "taxonomic_common"))

            (tmp / split).mkdir()
            write_shards(records(), tmp / split, shard_size=shard_size)
        bar.close()
        meta = pd.DataFrame(rows, columns=["key", "source", "sha256", "split", *RANKS, "common", "depth", "rank",
                                           "shard", "row"])
        meta.to_parquet(tmp / "metadata.parquet", index=False)
        write_report(meta, tmp / "report", record)
        write_json(tmp / "curation.json", record)


def _log_summary(record: dict, out: Path) -> None:
    log.info("curate: %s", ", ".join(f"{s['step']} {s['before']}->{s['after']}" for s in record["steps"]))
    if record["unreadable"]:
        log.warning("skipped %d unreadable image(s):\n%s%s", len(record["unreadable"]),
                    "\n".join(f"  row {u['row']}: {u['source']} ({u['reason']})" for u in record["unreadable"][:20]),
                    f"\n  ... {len(record['unreadable']) - 20} more in curation.json"
                    if len(record["unreadable"]) > 20 else "")
    if record["missing_ranks"]:
        by_rank: dict[str, int] = {}
        for m in record["missing_ranks"]:
            by_rank[m["kept_at"]] = by_rank.get(m["kept_at"], 0) + 1
        log.info("%d row(s) with missing ranks kept at their deepest known rank: %s", len(record["missing_ranks"]),
                 ", ".join(f"{k} {v}" for k, v in by_rank.items()))
    if record["no_taxonomy"]:
        log.warning("dropped %d row(s) with no taxonomy at all", len(record["no_taxonomy"]))
    if record["duplicates"] or record["eval_duplicates"]:
        log.info("removed %d duplicate image(s) within the table and %d also present in evaluation sets",
                 len(record["duplicates"]), len(record["eval_duplicates"]))
    if record["leakage"]["allowed"]:
        log.warning("leakage allowed: evaluation-set species in training: %s", record["leakage"]["species"])
    if record["unseen_species_not_found"]:
        log.warning("unseen species not in the table: %s", record["unseen_species_not_found"][:10])
    log.info("wrote %s (curation.json, metadata.parquet, report/stats.md)", out)
