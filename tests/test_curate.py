"""``ecoalign curate``: filters, duplicates, leakage, splits and shards, on small tables of real image files."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SHARED, need_shared

from ecoalign.cli import main
from ecoalign.core.errors import EcoalignInputError
from ecoalign.data.taxonomy import TEXT_TYPES, text
from ecoalign.organism.curate import curate, semi_global_shuffle
from ecoalign.organism.shards import iter_samples, shard_paths

LINEAGE = {"kingdom": "Animalia", "phylum": "Chordata", "class": "Aves", "order": "Passeriformes"}
SPECIES = [("Corvidae", "Corvus", "corax"), ("Corvidae", "Corvus", "corone"), ("Corvidae", "Pica", "pica"),
           ("Paridae", "Parus", "major"), ("Paridae", "Cyanistes", "caeruleus")]


def _photo(path: Path, seed: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(path, quality=90)
    return path


def _table(folder: Path, per_species: int = 6, start_seed: int = 0) -> tuple[Path, pd.DataFrame]:
    """A CSV of ``per_species`` distinct JPEGs for each of 5 bird species (paths relative to the table)."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows, seed = [], start_seed
    for family, genus, epithet in SPECIES:
        for k in range(per_species):
            name = f"img/{genus}_{epithet}_{k}.jpg"
            _photo(folder / name, seed)
            seed += 1
            rows.append({"Path": name, **LINEAGE, "family": family, "genus": genus,
                         "species": f"{genus} {epithet}", "Common Name": None})
    df = pd.DataFrame(rows)
    df.to_csv(folder / "table.csv", index=False)
    return folder / "table.csv", df


def _split_of(out: Path) -> dict[str, pd.DataFrame]:
    meta = pd.read_parquet(out / "metadata.parquet")
    return {s: meta[meta["split"] == s] for s in ("train", "val", "test", "test_unseen")}


def test_splits_disjoint_unseen_species_absent_from_train_and_shards_readable(tmp_path):
    table, _ = _table(tmp_path / "data")
    out = tmp_path / "cur"
    rec = curate(table, out, unseen_species="Parus major", unseen_fraction=0.25, val_fraction=0.2,
                 test_fraction=0.2, shard_size=7, seed=3, progress=False)
    parts = _split_of(out)
    keys = [set(p["sha256"]) for p in parts.values()]
    assert sum(len(k) for k in keys) == len(set().union(*keys)) == 30  # no image in two splits
    unseen = set(parts["test_unseen"]["species"])
    assert "Parus major" in unseen and len(unseen) == 2  # asked + round(0.25 * 5) - ... = 1 more at random
    assert not unseen & set(parts["train"]["species"])
    seen = set(parts["train"]["species"])
    assert seen | unseen == {f"{g} {e}" for _, g, e in SPECIES}
    assert set(parts["val"]["species"]) <= seen and set(parts["test"]["species"]) <= seen
    assert rec["splits"]["test_unseen"]["images"] == 12 and rec["unseen_species"] == sorted(unseen)

    # our reader and the webdataset package agree on the shards
    import webdataset as wds

    paths = shard_paths(out, "train")
    assert len(paths) == -(-len(parts["train"]) // 7)
    ours = list(iter_samples(paths))
    theirs = list(wds.WebDataset([str(p) for p in paths], shardshuffle=False)
                  .decode("pil").to_tuple("__key__", "jpg", "taxonomic.txt", "json"))
    assert [s["key"] for s in ours] == [k for k, *_ in theirs]
    assert len(ours) == len(parts["train"])
    for s, (key, img, tax_text, meta) in zip(ours, theirs):
        assert img.size == s["image"].size == (24, 24)
        assert tax_text == s["texts"]["taxonomic"] == text(s["taxon"], "taxonomic")
        assert set(s["texts"]) == set(TEXT_TYPES) and meta["split"] == "train" == s["json"]["split"]
        assert s["taxon"].depth == 7
    # shuffled across species: the first shard is not one species
    assert len({s["taxon"].scientific for s in ours[:7]}) > 1
    report = out / "report"
    assert {"stats.md", "images_per_rank.png", "long_tail.png"} <= {p.name for p in report.iterdir()}
    assert "| species | 5 | 30 |" in (report / "stats.md").read_text()


def test_bad_rows_missing_ranks_truncated_duplicates_across_splits(tmp_path, capsys):
    table, df = _table(tmp_path / "data", per_species=4)
    folder = table.parent
    full = (folder / df.at[0, "Path"]).read_bytes()
    (folder / "img/truncated.jpg").write_bytes(full[: len(full) // 2])
    (folder / "img/not_an_image.jpg").write_text("hello")
    extra = [
        {**df.iloc[0].to_dict(), "Path": "img/truncated.jpg"},
        {**df.iloc[0].to_dict(), "Path": "img/not_an_image.jpg"},
        {**df.iloc[0].to_dict(), "Path": "img/missing.jpg"},
        # missing ranks: a gap at class (lower ranks dropped) and a species left blank
        {**df.iloc[1].to_dict(), "Path": str(_photo(folder / "img/gap.jpg", 101)), "class": "unknown"},
        {**df.iloc[1].to_dict(), "Path": "img/blank_species.jpg", "species": ""},
        {**df.iloc[1].to_dict(), "Path": "img/no_taxon.jpg", **{r: "NA" for r in LINEAGE}},
    ]
    _photo(folder / "img/blank_species.jpg", 102)
    _photo(folder / "img/no_taxon.jpg", 103)
    df = pd.concat([df, pd.DataFrame(extra)], ignore_index=True)
    # the same photo twice, once given as test and once as train: the training copy must go
    df["split"] = "train"
    df.loc[len(df)] = {**df.iloc[5].to_dict(), "Path": "img/copy_of_5.jpg", "split": "test"}
    shutil.copy(folder / df.at[5, "Path"], folder / "img/copy_of_5.jpg")
    df.to_csv(table, index=False)

    assert main(["curate", str(table), "--out", str(tmp_path / "cur"), "--no-progress"]) == 0
    captured = capsys.readouterr()
    printed = captured.out + captured.err  # the library's log on stderr, the command's summary on stdout
    rec = json.loads((tmp_path / "cur" / "curation.json").read_text())
    unreadable = {Path(u["source"]).name: u["reason"] for u in rec["unreadable"]}
    assert set(unreadable) == {"truncated.jpg", "not_an_image.jpg", "missing.jpg"}
    assert "truncated.jpg" in printed and "skipped 3 unreadable" in printed
    kept = {Path(m["source"]).name: m["kept_at"] for m in rec["missing_ranks"]}
    assert kept == {"gap.jpg": "phylum", "blank_species.jpg": "genus"}
    assert "missing ranks kept at their deepest known rank" in printed
    assert any("class missing: lower ranks dropped" in n["note"] for n in rec["name_cleaning"])
    assert len(rec["no_taxonomy"]) == 1
    [dup] = rec["duplicates"]
    assert (dup["split"], dup["kept_split"], dup["row"]) == ("train", "test", 5)
    parts = _split_of(tmp_path / "cur")
    sha5 = parts["test"].loc[parts["test"]["source"].str.endswith("copy_of_5.jpg"), "sha256"].item()
    assert sha5 not in set(parts["train"]["sha256"])
    gap = parts["train"][parts["train"]["source"].str.endswith("gap.jpg")].iloc[0]
    assert (gap["depth"], gap["rank"]) == (2, "phylum") and pd.isna(gap["class"])


def test_eval_set_leakage_refused_unless_allowed_and_eval_images_removed(tmp_path):
    table, df = _table(tmp_path / "data", per_species=3)
    ev = tmp_path / "eval"
    ev.mkdir()
    shutil.copy(table.parent / df.at[0, "Path"], ev / "same_photo.jpg")  # an exact duplicate of a training image
    pd.DataFrame([{"file": "same_photo.jpg", **LINEAGE, "family": "Corvidae", "genus": "Corvus",
                   "species": "corax"}]).to_csv(ev / "eval.csv", index=False)
    kwargs = dict(eval_sets={"birds": ev / "eval.csv"}, progress=False)
    with pytest.raises(EcoalignInputError, match=r"birds: Corvus corax.*--allow-leakage"):
        curate(table, tmp_path / "cur", **kwargs)
    assert not (tmp_path / "cur").exists()
    # held out as unseen instead: no leakage, and still the duplicate image is gone
    rec = curate(table, tmp_path / "cur", unseen_species=["Corvus corax"], **kwargs)
    assert rec["eval_sets"] == {"birds": {"rows": 1, "species": 1, "images_hashed": 1}}
    assert rec["leakage"] == {"species": {}, "allowed": False}
    assert [Path(e["source"]).name for e in rec["eval_duplicates"]] == ["Corvus_corax_0.jpg"]
    rec = curate(table, tmp_path / "cur", allow_leakage=True, overwrite=True, **kwargs)
    assert rec["leakage"] == {"species": {"birds": ["Corvus corax"]}, "allowed": True}
    assert "Leakage allowed" in (tmp_path / "cur" / "report" / "stats.md").read_text()


def test_include_exclude_min_max_filters(tmp_path):
    table, df = _table(tmp_path / "data", per_species=5)
    df = df[~((df["genus"] == "Pica") & df["Path"].str.endswith(("_3.jpg", "_4.jpg")))]  # Pica: 3 images
    df.to_csv(table, index=False)
    quiet = dict(progress=False, val_fraction=0, test_fraction=0)
    curate(table, tmp_path / "a", include=["family=corvidae"], exclude=["species=Corvus corone"], **quiet)
    assert set(pd.read_parquet(tmp_path / "a" / "metadata.parquet")["species"]) == {"Corvus corax", "Pica pica"}
    rec = curate(table, tmp_path / "b", min_per_species=4, max_per_species=4, seed=1, **quiet)
    meta = pd.read_parquet(tmp_path / "b" / "metadata.parquet")
    assert rec["below_min_per_species"] == ["Animalia Chordata Aves Passeriformes Corvidae Pica pica"]
    assert meta.groupby("species").size().to_dict() == {"Corvus corax": 4, "Corvus corone": 4,
                                                        "Cyanistes caeruleus": 4, "Parus major": 4}
    curate(table, tmp_path / "c", min_per_species=4, max_per_species=4, seed=1, **quiet)
    curate(table, tmp_path / "d", min_per_species=4, max_per_species=4, seed=2, **quiet)
    rows = {k: set(pd.read_parquet(tmp_path / k / "metadata.parquet")["sha256"]) for k in "bcd"}
    assert rows["b"] == rows["c"] and rows["b"] != rows["d"]  # the cap is a seeded random subsample
    with pytest.raises(EcoalignInputError, match="RANK=NAME"):
        curate(table, tmp_path / "e", include=["tribe=Corvini"], **quiet)
    with pytest.raises(EcoalignInputError, match="output exists"):
        curate(table, tmp_path / "b", **quiet)


def test_offline_urls_give_a_clear_error(tmp_path):
    pd.DataFrame([{"url": "http://127.0.0.1:9/photo.jpg", **LINEAGE, "family": "Corvidae", "genus": "Corvus",
                   "species": "Corvus corax"}]).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(EcoalignInputError, match=r"URLs could be fetched \(offline\?\)"):
        curate(tmp_path / "t.csv", tmp_path / "cur", progress=False)
    assert main(["curate", str(tmp_path / "t.csv"), "--out", str(tmp_path / "cur"), "--no-progress"]) == 2


def test_semi_global_shuffle_is_a_permutation_that_mixes_chunks():
    rng = np.random.default_rng(0)
    order = semi_global_shuffle(1000, 80, rng)
    assert sorted(order) == list(range(1000))
    assert np.abs(np.diff(order[:10])).max() > 10  # not left in table order
    assert sorted(semi_global_shuffle(5, None, rng)) == list(range(5))


def test_real_labelled_photos_insects_kept_at_order(tmp_path):
    need_shared()
    labels = SHARED / "organisms" / "labels.csv"
    rec = curate(labels, tmp_path / "cur", progress=False)
    kept = [m for m in rec["missing_ranks"]]
    assert len(kept) == 18 and {m["kept_at"] for m in kept} == {"order"}
    assert rec["unreadable"] == [] and rec["steps"][-1]["after"] == 34
    meta = pd.read_parquet(tmp_path / "cur" / "metadata.parquet")
    assert (meta["rank"] == "species").sum() == 16
    assert "Salvia yangii" in set(meta["species"])  # "(syn. Perovskia atriplicifolia)" stripped
    assert any("parenthetical" in n["note"] for n in rec["name_cleaning"])
    samples = list(iter_samples(shard_paths(tmp_path / "cur", "train")))
    beetle = next(s for s in samples if s["taxon"].order == "Coleoptera")
    assert beetle["texts"]["taxonomic"] == "Animalia Arthropoda Insecta Coleoptera"
    assert beetle["texts"]["taxon_tag"] == "a kingdom Animalia phylum Arthropoda class Insecta order Coleoptera"
    assert beetle["image_ext"] == "jpg" and min(beetle["image"].size) > 32


def test_split_column_is_used_and_recorded_fractions_with_it_refused(tmp_path):
    table, df = _table(tmp_path / "data", per_species=4)
    df["split"] = ["test" if i % 4 == 0 else "train" for i in range(len(df))]
    df.to_csv(table, index=False)
    rec = curate(table, tmp_path / "col", progress=False)
    assert rec["options"]["split_source"] == "column 'split'" and rec["options"]["val_fraction"] is None
    assert rec["splits"]["test"]["images"] == 5 and rec["splits"]["val"]["images"] == 0
    with pytest.raises(EcoalignInputError, match="split column 'split', and --val-fraction would be ignored"):
        curate(table, tmp_path / "both", val_fraction=0.2, progress=False)
    rec = curate(table, tmp_path / "frac", val_fraction=0.25, test_fraction=0.25, ignore_split_column=True,
                 progress=False)
    assert rec["options"]["split_source"] == "fractions" and rec["options"]["val_fraction"] == 0.25
    assert rec["splits"]["val"]["images"] == rec["splits"]["test"]["images"] == 5


def test_open_clip_train_reads_curated_shards(tmp_path, monkeypatch):
    """open_clip_train's own --train-data loader (get_wds_dataset) reads what curate writes: image + <key>.txt,
    the epoch size from sizes.json.

    open_clip_train 3.3.0 asks for webdataset <= 0.2.86, whose tar expander ends a shard silently; webdataset 1.0
    (ours) ends it with an empty marker that open_clip_train's own key grouping does not expect. The one patch:
    the 1.0 expander without that marker, as 0.2.86 behaved; the rest is open_clip_train's loader unchanged."""
    import functools
    from types import SimpleNamespace

    import open_clip_train.data as ocd
    from open_clip_train.data import get_wds_dataset
    from webdataset.tariterators import tar_file_expander

    monkeypatch.setattr(ocd, "tar_file_expander", functools.partial(tar_file_expander, eof_value=None))

    from ecoalign.encoders.organism import load_organism_encoder

    table, _ = _table(tmp_path / "data", per_species=6)
    out = tmp_path / "cur"
    curate(table, out, val_fraction=0, test_fraction=0, shard_size=8, progress=False)
    paths = shard_paths(out, "train")
    assert len(paths) == 4 and json.loads((out / "train" / "sizes.json").read_text())["shard-000003.tar"] == 6
    enc = load_organism_encoder("open_clip:ecoalign-tiny-vit")
    args = SimpleNamespace(train_data=str(out / "train" / "shard-{000000..000003}.tar"), train_num_samples=None,
                           dataset_resampled=False, train_data_upsampling_factors=None, seed=0, batch_size=5,
                           world_size=1, workers=0)
    info = get_wds_dataset(args, enc.preprocess, is_train=True, epoch=0, tokenizer=enc.tokenizer)
    assert info.dataloader.num_samples == 30
    batches = list(info.dataloader)
    assert batches and all(img.shape[1:] == (3, 32, 32) and txt.shape[0] == img.shape[0] for img, txt in batches)
    captions = {s["txt"].decode() for s in __import__("webdataset").WebDataset([str(p) for p in paths],
                                                                              shardshuffle=False)}
    assert "Animalia Chordata Aves Passeriformes Corvidae Corvus corax" in captions
