"""Verb = module = API function: each organism verb's Python function, called with the verb's argument names,
gives what ``ecoalign <verb>`` gives, on a small generated organism world and the tiny CPU CLIP."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import torch

from ecoalign.cli import main
from ecoalign.demo.organism_world import organism_world
from ecoalign.organism.curate import curate
from ecoalign.organism.few_shot import few_shot
from ecoalign.organism.intrinsic import intrinsic
from ecoalign.organism.photos import embed_images
from ecoalign.organism.predict import predict
from ecoalign.organism.train import train_organism
from ecoalign.organism.zero_shot import zero_shot

WORLD = dict(seed=1, images_per_species=2, image_px=32)
CURATE = dict(val_fraction=0.0, test_fraction=0.2, shard_size=100, seed=2)
TRAIN = dict(arch="ecoalign-tiny-vit", epochs=1, batch_size=32, device="cpu")
TRAIN_OVERRIDES = ["val_split=null", "progress=false"]


def _flags(options: dict) -> list[str]:
    """The command's flags for keyword arguments (same names, '-' for '_')."""
    return [x for k, v in options.items() for x in (f"--{k.replace('_', '-')}", str(v))]


def _json(obj):
    return json.loads(json.dumps(obj, default=str))


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """World -> curated -> trained encoder through the Python functions, plus a photo folder with a broken file."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("organism_api")
        world = organism_world(root / "world", **WORLD)
        record = curate(world.metadata_csv, root / "curated", unseen_species=world.heldout_file, progress=False,
                        **CURATE)
        run = train_organism(curated=str(root / "curated"), out=str(root / "run"), overrides=TRAIN_OVERRIDES,
                             **TRAIN)
    finally:
        torch.set_num_threads(n)
    photos = root / "photos"
    photos.mkdir()
    for p in sorted((world.root / "images").iterdir())[:12]:
        (photos / p.name).write_bytes(p.read_bytes())
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a photo")
    return {"root": root, "world": world, "record": record, "curated": root / "curated", "run": run,
            "photos": photos}


def _tree_digest(folder) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_organism_world(made):
    out = made["root"] / "world_cli"
    assert main(["organism-world", "--out", str(out), *_flags(WORLD)]) == 0
    w = made["world"]
    assert _tree_digest(out) == _tree_digest(w.root)
    assert organism_world(out, **WORLD).n_images == w.n_images  # an existing world is described, not redone


def test_curate(made, capsys):
    w, out = made["world"], made["root"] / "curated_cli"
    assert main(["curate", str(w.metadata_csv), "--out", str(out), "--unseen-species", str(w.heldout_file),
                 "--no-progress", *_flags(CURATE)]) == 0
    assert f"curated {out}: train" in capsys.readouterr().out
    record = json.loads((out / "curation.json").read_text())
    assert record == _json(made["record"])
    pd.testing.assert_frame_equal(pd.read_parquet(out / "metadata.parquet"),
                                  pd.read_parquet(made["curated"] / "metadata.parquet"))
    # --eval-set NAME=TABLE strings go to the function unchanged
    eval_table = made["root"] / "eval.csv"
    two = pd.read_csv(w.metadata_csv).head(2)
    two.assign(path=[str(w.root / x) for x in two["path"]]).to_csv(eval_table, index=False)
    rec = curate(w.metadata_csv, made["root"] / "curated_eval", eval_sets=[f"few={eval_table}"], allow_leakage=True,
                 progress=False, **CURATE)
    assert rec["eval_sets"]["few"]["images_hashed"] == 2 and len(rec["eval_duplicates"]) == 2


def test_train_organism(made, capsys):
    out = made["root"] / "run_cli"
    assert main(["train-organism", "--curated", str(made["curated"]), "--out", str(out), *_flags(TRAIN),
                 *TRAIN_OVERRIDES]) == 0
    assert f"trained encoder: {out / 'encoder'}" in capsys.readouterr().out
    a = torch.load(made["run"] / "checkpoints" / "last.pt", weights_only=False)["model"]
    b = torch.load(out / "checkpoints" / "last.pt", weights_only=False)["model"]
    assert max((a[k] - b[k]).abs().max().item() for k in a) == 0.0
    ma, mb = (pd.read_csv(r / "metrics.csv").drop(columns="images_per_s") for r in (made["run"], out))
    pd.testing.assert_frame_equal(ma, mb)


def test_zero_shot(made):
    run, cur, out = made["run"], made["curated"], made["root"] / "zs.json"
    args = dict(curated=cur, split="test_unseen", rank=["genus", "species"])
    assert main(["zero-shot", "--encoder", str(run), "--curated", str(cur), "--split", "test_unseen",
                 "--rank", "genus", "species", "--out", str(out)]) == 0
    table = zero_shot(str(run), **args)
    assert json.loads(out.read_text()) == _json(table.attrs["ecoalign"])
    assert table["rank"].tolist() == ["genus", "species"] and (table["images"] == 128).all()
    # a notebook loads the encoder once and passes it; a CSV report is the returned table
    from ecoalign.encoders.organism import load_organism_encoder

    csv = made["root"] / "zs.csv"
    again = zero_shot(load_organism_encoder(run), out=csv, **args)
    pd.testing.assert_frame_equal(again, table)
    pd.testing.assert_frame_equal(pd.read_csv(csv), table, check_dtype=False)


def test_few_shot(made, capsys):
    run, cur, out = made["run"], made["curated"], made["root"] / "fs.json"
    assert main(["few-shot", "--encoder", str(run), "--curated", str(cur), "--split", "test_unseen",
                 "--rank", "genus", "--k", "1", "--folds", "3", "--out", str(out)]) == 0
    assert "1-shot genus (64 classes, 3 folds" in capsys.readouterr().out
    table = few_shot(run, curated=cur, split="test_unseen", rank="genus", k=[1], folds=3)
    assert json.loads(out.read_text()) == _json(table.attrs["ecoalign"])
    assert table[["k", "folds", "classes"]].values.tolist() == [[1, 3, 64]]


def test_predict_and_embed_images(made, capsys):
    run, photos, root = made["run"], made["photos"], made["root"]
    labels = made["world"].metadata_csv
    out = root / "pred.parquet"
    assert main(["predict", str(photos), "--encoder", str(run), "--labels", str(labels), "--rank", "genus",
                 "--method", "text", "--k", "3", "--out", str(out)]) == 0
    assert "skipped 1 unreadable image(s)" in capsys.readouterr().out
    table = predict(photos, run, labels=labels, rank="genus", method="text", k=3)
    pd.testing.assert_frame_equal(pd.read_parquet(out), table)
    skipped = table.attrs["ecoalign"]["skipped"]
    assert [s["file_name"] for s in skipped] == ["broken.jpg"]
    assert pd.read_csv(root / "pred.parquet.skipped.csv").to_dict("records") == skipped
    assert len(table) == 12 * 3 and list(table.columns) == ["file_name", "kingdom", "phylum", "class", "order",
                                                            "family", "genus", "score", "position"]

    custom = root / "custom.csv"
    assert main(["predict", str(photos), "--encoder", str(run), "--classes", "red thing,blue thing", "--k", "1",
                 "--out", str(custom)]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(custom), predict(photos, run, classes=["red thing", "blue thing"],
                                                               k=1))

    emb = root / "emb.parquet"
    assert main(["embed-images", str(photos), "--encoder", str(run), "--out", str(emb)]) == 0
    table = embed_images(photos, run)
    pd.testing.assert_frame_equal(pd.read_parquet(emb), table)
    assert table.shape == (12, 1 + 64) and np.allclose(np.linalg.norm(table.iloc[:, 1:], axis=1), 1, atol=1e-5)


def test_intrinsic(made):
    run, cur, out = made["run"], made["curated"], made["root"] / "intrinsic"
    assert main(["intrinsic", "--encoder", str(run), "--curated", str(cur), "--split", "test_unseen",
                 "--rank", "order", "--out", str(out)]) == 0
    report = intrinsic(run, curated=cur, split="test_unseen", rank="order")
    written = json.loads((out / "intrinsic.json").read_text())
    assert written.pop("plot") == str(out / "embedding_pca_order.png")
    assert written == _json(report)
    assert report["explained_variance_ratio"]["n_species"] == 64 and report["data"] == str(cur)
