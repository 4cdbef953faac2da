"""End to end from the CLI on a photo folder the project has not seen: the real labelled photos of
../shared/data/organisms, copied with a mirrored and a cropped view of each, a broken file and a new labels table
-> curate -> train-organism (tiny model, a few steps) -> zero-shot, few-shot, predict, embed-images, intrinsic."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import SHARED

from ecoalign.cli import main

PHOTOS = SHARED / "organisms"
RANKS = ["kingdom", "phylum", "class", "order", "family", "genus", "species"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A user's folder (3 views per real photo, own file names and labels table), curated and trained."""
    if not (PHOTOS / "labels.csv").exists():
        pytest.skip(f"organism photos not found at {PHOTOS}")
    from PIL import Image, ImageOps

    root = tmp_path_factory.mktemp("organism_cli")
    folder = root / "my_photos"
    folder.mkdir()
    labels = pd.read_csv(PHOTOS / "labels.csv")
    rows = []
    for r in labels.to_dict("records"):
        with Image.open(PHOTOS / r["path"]) as im:
            im = im.convert("RGB")
        im.thumbnail((160, 160))
        w, h = im.size
        stem = r["path"].split("/")[-1].rsplit(".", 1)[0]
        for i, view in enumerate([im, ImageOps.mirror(im), im.crop((w // 8, h // 8, w - w // 8, h - h // 8))]):
            name = f"{stem}_{i}.jpg"
            view.save(folder / name, quality=90)
            rows.append({"file": name, **{k: r[k] for k in RANKS}})
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    table = folder / "my_labels.csv"
    pd.DataFrame(rows).to_csv(table, index=False)

    cur, run = root / "curated", root / "run"
    assert main(["curate", str(table), "--out", str(cur), "--unseen-species", "Orchis purpurea,Ursus americanus",
                 "--val-fraction", "0", "--test-fraction", "0.34", "--no-progress"]) == 0
    assert main(["train-organism", "--data", str(cur), "--arch", "ecoalign-tiny-vit", "--epochs", "1",
                 "--batch-size", "16", "--device", "cpu", "--out", str(run), "val_split=null", "progress=false"]) == 0
    return {"root": root, "folder": folder, "table": table, "curated": cur, "run": run, "n_images": len(rows)}


def test_zero_shot_and_few_shot_reports(trained, capsys):
    d = trained
    out = d["root"] / "zs.json"
    assert main(["zero-shot", "--encoder", str(d["run"]), "--curated", str(d["curated"]), "--split", "test_unseen",
                 "--labels", str(d["table"]), "--rank", "genus", "species", "--out", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert [r["rank"] for r in rep["results"]] == ["genus", "species"]
    for r in rep["results"]:
        assert r["n_images"] == 6 and r["n_classes"] >= 14           # 2 unseen species x 3 views, all candidates
        assert r["top1"]["low"] <= r["top1"]["value"] <= r["top1"]["high"]
        assert 0 <= r["top1"]["value"] <= r["top5"]["value"] <= 1
    assert rep["encoder"]["kind"] == "organism_clip"
    csv_out = d["root"] / "zs.csv"
    assert main(["zero-shot", "--encoder", str(d["run"]), "--table", str(d["table"]), "--rank", "order",
                 "--method", "text", "--out", str(csv_out)]) == 0
    z = pd.read_csv(csv_out)
    assert z.loc[0, "images"] == d["n_images"] and z.loc[0, "method"] == "text"
    assert {"top1", "top1_low", "top1_high", "top5", "top5_low", "top5_high"} <= set(z.columns)

    fs = d["root"] / "fs.json"
    assert main(["few-shot", "--encoder", str(d["run"]), "--table", str(d["table"]), "--rank", "species",
                 "--k", "1", "2", "--folds", "4", "--out", str(fs)]) == 0
    res = json.loads(fs.read_text())["results"]
    assert [r["k"] for r in res] == [1, 2] and all(len(r["per_fold"]) == 4 for r in res)
    assert res[0]["n_classes"] == 16 and res[0]["queries_per_fold"] == 32  # 16 species x (3 - 1) queries
    assert "1-shot species" in capsys.readouterr().out
    # an existing report is not replaced without --overwrite
    assert main(["few-shot", "--encoder", str(d["run"]), "--table", str(d["table"]), "--out", str(fs)]) == 2


def test_predict_and_embed_images_flat_tables(trained, capsys):
    d = trained
    pred = d["root"] / "pred.parquet"
    assert main(["predict", str(d["folder"]), "--encoder", str(d["run"]), "--labels", str(d["table"]),
                 "--rank", "family", "--k", "3", "--out", str(pred)]) == 0
    p = pd.read_parquet(pred)
    assert list(p.columns) == ["file_name", *RANKS[:5], "score", "position"]
    assert p["file_name"].nunique() == d["n_images"] and (p.groupby("file_name").size() == 3).all()
    assert (p.groupby("file_name")["score"].apply(lambda s: s.is_monotonic_decreasing)).all()
    skipped = pd.read_csv(pred.with_name(pred.name + ".skipped.csv"))
    assert skipped["file_name"].tolist() == ["corrupt.jpg"]
    assert "skipped 1 unreadable" in capsys.readouterr().out

    custom = d["root"] / "custom.csv"
    assert main(["predict", str(d["folder"]), "--encoder", str(d["run"]), "--classes", "orchid,beetle,bear",
                 "--k", "1", "--out", str(custom)]) == 0
    c = pd.read_csv(custom)
    assert list(c.columns) == ["file_name", "classification", "score", "position"]
    assert set(c["classification"]) <= {"orchid", "beetle", "bear"}

    emb_csv = d["root"] / "emb.csv"
    assert main(["embed-images", str(d["folder"]), "--encoder", str(d["run"]), "--out", str(emb_csv)]) == 0
    e = pd.read_csv(emb_csv)
    cols = [x for x in e.columns if x.startswith("emb_")]
    assert e.columns[0] == "file_name" and len(e) == d["n_images"] and cols[0] == "emb_000"
    assert np.allclose(np.linalg.norm(e[cols].to_numpy(), axis=1), 1, atol=1e-5)
    assert main(["embed-images", str(d["folder"]), "--encoder", str(d["run"]), "--out", str(emb_csv)]) == 2
    assert main(["embed-images", str(d["folder"]), "--encoder", str(d["run"]), "--out",
                 str(d["root"] / "emb.parquet")]) == 0

    # the run directory is a first-class encoder: ecoalign.load_encoder gives the same embeddings (up to the
    # reduced-scale JPEG decoding the folder reader uses, which moves pixels slightly)
    import ecoalign

    enc = ecoalign.load_encoder(str(d["run"]))
    again = enc.embed([d["folder"] / f for f in e["file_name"][:8]])
    table = e[cols].to_numpy(dtype=np.float32)
    cosine = again @ table.T
    assert np.diag(cosine[:, :8]).min() > 0.995 and (cosine.argmax(axis=1) == np.arange(8)).all()


def test_intrinsic_outputs(trained):
    d = trained
    out = d["root"] / "intrinsic"
    assert main(["intrinsic", "--encoder", str(d["run"]), "--table", str(d["table"]), "--rank", "order",
                 "--out", str(out)]) == 0
    rep = json.loads((out / "intrinsic.json").read_text())
    ev = rep["explained_variance_ratio"]
    assert ev["n_species"] == 16 and 0 <= ev["rho"] <= 1 and ev["n_vectors"] == 48
    assert rep["fisher_species"]["pairs"] == 16 * 15 // 2 and rep["fisher_order"]["pairs"] > 0
    assert (out / "embedding_pca_order.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["intrinsic", "--encoder", str(d["run"]), "--table", str(d["table"]), "--out", str(out)]) == 2
