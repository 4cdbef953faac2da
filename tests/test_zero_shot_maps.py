"""Zero-shot maps: species named in text, never in the training relevés, mapped through an organism-text adapt run."""
from __future__ import annotations

import json
import shutil

import conftest
import numpy as np
import pandas as pd
import pytest
import rasterio
import torch
import yaml
from scipy.special import expit

from ecoalign.aerial.zero_shot import (
    SPECIES_COVER,
    ZeroShotRun,
    compositions,
    parse_releve,
)
from ecoalign.core.errors import EcoalignInputError
from ecoalign.encoders.organism import load_organism_encoder

HELD_OUT = ["Quercus pubescens", "Pistacia lentiscus"]  # a species with seen congeners, and a genus of one


@pytest.fixture(scope="module")
def zs(tmp_path_factory):
    """A small demo world, a tiny random organism CLIP model, an organism-text adapt run holding two species out,
    and a 300 m crop of the orthophoto to map."""
    import ecoalign

    folder = tmp_path_factory.mktemp("zero-shot")
    torch.manual_seed(0)
    tiny = load_organism_encoder("open_clip:ecoalign-tiny-vit").save(folder / "tiny")
    manifest = conftest.generated_world_manifest(folder, "zs-world", n_plots=48, size_m=1000.0, resolution_m=4.0,
                                                 seed=4)
    body = yaml.safe_load(manifest.read_text())
    body["species"] = {"path": "species.csv"}
    manifest.write_text(yaml.safe_dump(body))
    (folder / "holdout.txt").write_text("\n".join(HELD_OUT) + "\n# a comment\n")
    run = ecoalign.adapt([f"data.manifest={manifest}", "backbone.size=small", "trainer=quick", "trainer.epochs=2",
                          "trainer.baselines=false", "data.augmentations=1", "data.block_size_m=250",
                          "releve_encoder=organism_text", f"releve_encoder.organism_encoder={tiny}"],
                         out=str(folder / "run"), holdout_species=str(folder / "holdout.txt"))
    crop = folder / "crop.tif"
    with rasterio.open(folder / "world" / "ortho.tif") as src:
        window = rasterio.windows.Window(20, 20, 75, 75)
        profile = {**src.profile, "width": 75, "height": 75, "transform": src.window_transform(window),
                   "blockxsize": 16, "blockysize": 16}
        with rasterio.open(crop, "w", **profile) as dst:
            dst.write(src.read(window=window))
            for b in range(1, src.count + 1):
                dst.update_tags(b, **src.tags(b))
    return {"folder": folder, "run": run, "tiny": tiny, "crop": crop, "manifest": manifest}


def test_holdout_species_are_removed_and_the_run_keeps_what_zero_shot_needs(zs):
    run = zs["run"]
    meta = json.loads((run / "encoder" / "encoder.json").read_text())
    assert meta["holdout_species"] == HELD_OUT and not set(HELD_OUT) & set(meta["species"])
    report = json.loads((run / "report.json").read_text())
    assert report["holdout"]["species"] == HELD_OUT
    info = json.loads((run / "encoder" / "zero_shot.json").read_text())
    assert info["holdout_species"] == HELD_OUT and info["calibration"]["pairs"] > 0
    assert info["organism_encoder"]["weights_sha256"] and len(info["organism_encoder_sha256"]) == 64
    r = ZeroShotRun(run)
    plots = r.plots()
    assert plots["adapted"].shape == (len(plots["plot_id"]), meta["backbone"]["embed_dim"])
    assert set(plots["split"]) <= {"train", "val", "test", "excluded"}
    # the default text: a species block and a genus block, the latter shared by a held-out species and its congener
    assert meta["releve_encoder"]["text_ranks"] == ["species", "genus"]
    text = r.text_embeddings(["Quercus pubescens", "Quercus ilex", "Pinus halepensis"])
    half = text.shape[1] // 2
    np.testing.assert_allclose(text[0, half:], text[1, half:], atol=1e-6)
    assert np.abs(text[0, :half] - text[1, :half]).max() > 1e-3 and np.abs(text[0, half:] - text[2, half:]).max() > 1e-3
    # a held-out species is placed through the checklist; a name new to it through its genus
    assert r.taxon("Quercus pubescens").family == "Fagaceae"
    new = r.taxon("quercus coccifera L.")
    assert (new.genus, new.epithet, new.family) == ("Quercus", "coccifera", "Fagaceae")


def test_zero_shot_map_command_function_and_accessor_agree(zs, tmp_path):
    import ecoalign

    out = tmp_path / "m.tif"
    from ecoalign.cli import main

    assert main(["-q", "map", "--encoder", str(zs["run"]), "--raster", str(zs["crop"]), "--out", str(out),
                 "--stride-m", "50", "--releve", "Quercus ilex=60,Pistacia lentiscus=20", "--species", *HELD_OUT,
                 "--no-progress"]) == 0
    with rasterio.open(out) as src:
        cal = src.read(masked=True)
        assert list(src.descriptions) == ["Quercus ilex=60,Pistacia lentiscus=20", *HELD_OUT]
        meta = json.loads(src.tags()["ecoalign"])
        assert src.profile["driver"] == "GTiff" and src.overviews(1) is not None
    assert meta["zero_shot"]["compositions"][1]["releve"] == [["Quercus pubescens", SPECIES_COVER]]
    assert meta["presence"]["written"] is False and "threshold" in meta["presence"]["reason"]
    assert [b["kind"] for b in meta["bands"]] == ["suitability"] * 3 and meta["task"] == "suitability"
    assert cal.count() > 0 and 0 < cal.min() and cal.max() < 1
    assert (tmp_path / "m_quicklook.png").exists()

    raw_out = ecoalign.map(str(zs["run"]), None, zs["crop"], tmp_path / "raw.tif", stride_m=50,
                           releve="Quercus ilex=60,Pistacia lentiscus=20", species=HELD_OUT, raw_similarity=True,
                           progress=False, quicklook=False)
    with rasterio.open(raw_out) as src:
        raw = src.read(masked=True)
    c = meta["zero_shot"]["calibration"]
    assert -1 <= raw.min() and raw.max() <= 1 and raw.std() > 0
    np.testing.assert_allclose(cal.filled(np.nan), expit(c["slope"] * raw.filled(np.nan) + c["intercept"]),
                               rtol=1e-5, equal_nan=True)

    import rioxarray

    import ecoalign.accessor

    da = rioxarray.open_rasterio(zs["crop"])
    grid = da.ecoalign.zero_shot(str(zs["run"]), species=HELD_OUT, stride_m=50, progress=False)
    assert list(grid["target"].values) == HELD_OUT
    np.testing.assert_allclose(grid.values, cal.filled(np.nan)[1:], rtol=1e-5, atol=1e-6, equal_nan=True)


def test_zero_shot_map_through_dask_workers_is_the_same_map(zs, tmp_path):
    import ecoalign

    kw = {"stride_m": 50, "species": ["Quercus pubescens"], "progress": False, "quicklook": False, "block_px": 3}
    one = ecoalign.map(str(zs["run"]), None, zs["crop"], tmp_path / "one.tif", **kw)
    two = ecoalign.map(str(zs["run"]), None, zs["crop"], tmp_path / "two.tif", workers=2, **kw)
    with rasterio.open(one) as a, rasterio.open(two) as b:
        np.testing.assert_allclose(a.read(), b.read(), rtol=1e-5, atol=1e-6)


def test_bad_zero_shot_input_is_refused_clearly(zs, tmp_path):
    import ecoalign

    with pytest.raises(EcoalignInputError, match="empty relevé"):
        parse_releve("  ")
    with pytest.raises(EcoalignInputError, match="'lots' of 'Quercus ilex' is not a number"):
        parse_releve("Quercus ilex=lots")
    with pytest.raises(EcoalignInputError, match="not NAME=COVER"):
        parse_releve("Quercus ilex")
    with pytest.raises(EcoalignInputError, match="out of range"):
        parse_releve("Quercus ilex=0")
    with pytest.raises(EcoalignInputError, match="nothing to map"):
        compositions([], [])
    run = ZeroShotRun(zs["run"])
    with pytest.raises(EcoalignInputError, match="genus 'Mystery' is not in the run's checklist"):
        run.taxon("Mystery plant")
    with pytest.raises(EcoalignInputError, match="no Latin genus"):
        run.taxon("42")
    with pytest.raises(EcoalignInputError, match="empty relevé"):
        ecoalign.map(str(zs["run"]), None, zs["crop"], tmp_path / "e.tif", releve="", progress=False)

    # a run whose relevé encoder learned one token per species (the mlp encoder) cannot map named species
    mlp = ecoalign.adapt([f"data.manifest={zs['manifest']}", "backbone.size=small", "trainer=quick",
                          "trainer.epochs=1", "trainer.baselines=false", "data.augmentations=1",
                          "data.block_size_m=250"], out=str(tmp_path / "mlp-run"))
    with pytest.raises(EcoalignInputError, match="adapt --releve-encoder organism_text"):
        ecoalign.map(str(mlp), None, zs["crop"], tmp_path / "x.tif", species=["Quercus ilex"], progress=False)
    with pytest.raises(EcoalignInputError, match="adapt --releve-encoder organism_text"):
        ecoalign.map("dofa-small", None, zs["crop"], tmp_path / "x.tif", species=["Quercus ilex"], progress=False)

    # an organism encoder other than the one the run was trained with
    torch.manual_seed(1)
    other = load_organism_encoder("open_clip:ecoalign-tiny-vit").save(tmp_path / "other")
    with pytest.raises(EcoalignInputError, match="differs from the one this run was trained with"):
        ecoalign.map(str(zs["run"]), None, zs["crop"], tmp_path / "o.tif", species=["Quercus ilex"],
                     organism_encoder=str(other), progress=False)
    moved = shutil.copytree(zs["tiny"], tmp_path / "moved")  # the same weights elsewhere are accepted
    assert ZeroShotRun(zs["run"], organism_encoder=str(moved)).releve_embeddings(
        [("x", [("Quercus ilex", 50.0)])]).shape[0] == 1
    with pytest.raises(EcoalignInputError, match="in no relevé"):
        (tmp_path / "bad.txt").write_text("Quercus imaginaria\n")
        ecoalign.adapt([f"data.manifest={zs['manifest']}", "backbone.size=small", "trainer=quick",
                        "data.augmentations=1"],
                       out=str(tmp_path / "r"), holdout_species=str(tmp_path / "bad.txt"))


def test_evaluate_zero_shot_report(zs, tmp_path):
    """The held-out species scored at all plots beside ceiling, congener and random; the species whose genus has
    no seen member apart, with no congener row."""
    from ecoalign.cli import main

    (tmp_path / "sp.csv").write_text("species\n" + "\n".join(HELD_OUT) + "\n")
    assert main(["-q", "evaluate-zero-shot", str(zs["run"]), "--species", str(tmp_path / "sp.csv"), "--plots", "all",
                 "--n-boot", "20", "--out", str(tmp_path / "eval")]) == 0
    table = pd.read_csv(tmp_path / "eval" / "zero_shot_eval.csv")
    assert set(table["method"]) == {"zero_shot", "ceiling", "congener", "random"}
    oak = table[(table["species"] == "Quercus pubescens")].set_index("method")
    assert oak.loc["zero_shot", "congener"] in ("Quercus ilex", "Quercus robur") and oak["genus_seen"].all()
    assert oak["auc"].between(0, 1).all() and (oak["auc_low"] <= oak["auc"]).all()
    mastic = table[table["species"] == "Pistacia lentiscus"].set_index("method")
    assert not mastic["genus_seen"].any() and np.isnan(mastic.loc["congener", "auc"])
    assert oak.loc["zero_shot", "relatives"].startswith("genus: Quercus ") and mastic["relatives"].eq("-").all()
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "## Species whose genus has no seen member" in report and "zero_shot - congener" in report
    assert (tmp_path / "eval" / "auc.png").stat().st_size > 1000
    import ecoalign

    with pytest.raises(EcoalignInputError, match="plots="):
        ecoalign.evaluate_zero_shot(zs["run"], plots="some")


def test_subsampled_releves_keep_at_least_one_of_their_species():
    from ecoalign.aerial.align import subsample_releves

    torch.manual_seed(0)
    cover = torch.rand(200, 12) * (torch.rand(200, 12) < 0.5) * 50
    cover[:, 0] += 1.0  # every relevé holds a species
    assert subsample_releves(cover, 0.0) is cover
    cut = subsample_releves(cover, 0.5)
    assert ((cut > 0) <= (cover > 0)).all() and (cut[cut > 0] == cover[cut > 0]).all()
    assert ((cut > 0).sum(1) >= 1).all()
    changed = (cut != cover).any(1).float().mean()
    assert 0.2 < changed < 0.6 and ((cut > 0).sum(1) == 1).sum() >= 5  # one-species relevés among them


def test_zero_shot_plans_resume_only_for_the_same_compositions(zs):
    """The resume fingerprint holds the zero-shot model: another composition or raw similarity is another map."""
    from ecoalign.mapping.run import zero_shot_plan

    one = zero_shot_plan(str(zs["run"]), zs["crop"], species=["Quercus pubescens"], stride_m=50)[0]
    again = zero_shot_plan(str(zs["run"]), zs["crop"], species=["Quercus pubescens"], stride_m=50)[0]
    other = zero_shot_plan(str(zs["run"]), zs["crop"], species=["Quercus ilex"], stride_m=50)[0]
    raw = zero_shot_plan(str(zs["run"]), zs["crop"], species=["Quercus pubescens"], raw=True, stride_m=50)[0]
    assert one.fingerprint() == again.fingerprint() and one.fingerprint()["bundle_sha256"] is None
    assert one.fingerprint() != other.fingerprint() and one.fingerprint() != raw.fingerprint()


def _query_auc(model, data) -> float:
    """Mean AUC over species of one-species relevé queries ranking the test plots (what a zero-shot map does)."""
    from sklearn.metrics import roc_auc_score

    rows = data.rows("test")
    with torch.no_grad():
        _, img = model.encode_image(data.frozen[rows, 0])
        q = model.releve_encoder(torch.eye(data.cover.shape[1]) * SPECIES_COVER)
    s = (torch.nn.functional.normalize(img, dim=1) @ torch.nn.functional.normalize(q, dim=1).T).numpy()
    y = (data.cover[rows] > 0).numpy()
    return float(np.mean([roc_auc_score(y[:, j], s[:, j]) for j in range(y.shape[1]) if 0 < y[:, j].sum() < len(y)]))


def test_species_query_loss_is_a_presence_loss_that_trains_one_species_queries(tmp_path):
    from ecoalign.aerial.align import AlignmentData, AlignmentModel, train_alignment

    g = torch.Generator().manual_seed(0)
    latent = torch.randn(240, 4, generator=g)
    frozen = torch.cat([latent, torch.randn(240, 12, generator=g) * 0.5], dim=1)[:, None, :]
    cover = (torch.relu(latent @ torch.randn(4, 8, generator=g) - 0.5) * 20).clamp(max=100)
    data = AlignmentData(frozen, cover, np.array(["train"] * 160 + ["val"] * 40 + ["test"] * 40))
    model_kwargs = {"proj_dim": None, "adapter_mlp_hidden": 0, "loss": {"name": "siglip"},
                    "releve_encoder": {"kind": "attention", "hidden": 32, "heads": 2, "dropout": 0.0}}

    weighted = {**model_kwargs, "releve_encoder": {**model_kwargs["releve_encoder"], "species_query_weight": 0.5}}
    torch.manual_seed(0)
    model = AlignmentModel(16, 8, **weighted)
    parts = model.losses(frozen[:32, 0], cover[:32], anchor_weight=1.0)
    q = model.releve_encoder(torch.eye(8) * SPECIES_COVER)
    _, img = model.encode_image(frozen[:32, 0])
    logits = (torch.nn.functional.normalize(img, dim=1) @ torch.nn.functional.normalize(q, dim=1).T
              * model.species_query.log_t.exp() + model.species_query.bias)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, (cover[:32] > 0).float(),
                                                                      reduction="sum") / 32
    torch.testing.assert_close(parts["species_query"], expected)
    torch.testing.assert_close(parts["loss"], parts["contrastive"] + parts["anchor"] + 0.5 * expected)
    assert "species_query" not in AlignmentModel(16, 8, **model_kwargs).losses(frozen[:32, 0], cover[:32], 1.0)

    kw = {"anchor_weight": 1.0, "train_adapter": True, "epochs": 25, "batch_size": 32, "lr": 1e-2,
          "weight_decay": 0.0, "patience": 100, "seed": 0, "progress": False, "log": lambda m: None}
    plain = train_alignment("plain", data, folder=tmp_path / "plain", model_kwargs=model_kwargs, **kw)["model"]
    query = train_alignment("query", data, folder=tmp_path / "query", model_kwargs=weighted, **kw)["model"]
    assert _query_auc(query, data) > _query_auc(plain, data) + 0.05 and _query_auc(query, data) > 0.95


def test_species_query_loss_scores_a_random_subset_of_a_long_checklist():
    """Above ``max_species`` a training step scores a random subset (scaled to the full sum, drawn from torch's
    global generator, which adapt checkpoints); evaluation scores every species, in chunks, exactly."""
    from ecoalign.aerial.losses import SpeciesQueryLoss
    from ecoalign.encoders.releve import SetReleveEncoder

    torch.manual_seed(0)
    encoder = SetReleveEncoder(10, 16, hidden=16, heads=2, dropout=0.0)
    img = torch.randn(12, 16)
    cover = (torch.rand(12, 10) < 0.4) * 30.0
    full, capped = SpeciesQueryLoss(SPECIES_COVER), SpeciesQueryLoss(SPECIES_COVER, max_species=3)
    with torch.no_grad():
        torch.testing.assert_close(capped(img, encoder, cover), full(img, encoder, cover))
    torch.manual_seed(7)
    drawn = capped(img, encoder, cover)
    torch.manual_seed(7)
    chosen = torch.randperm(10)[:3]
    torch.testing.assert_close(drawn, capped._loss(img, encoder, cover, chosen) * 10 / 3)
    assert drawn.requires_grad and not torch.allclose(drawn, full(img, encoder, cover))
    with pytest.raises(EcoalignInputError, match="species_query_max_species"):
        SpeciesQueryLoss(SPECIES_COVER, max_species=0)


def test_unseen_names_are_pulled_toward_their_closest_seen_relatives(zs):
    """Relatives: the seen species of the name's genus, else family, else order; the text of an unseen name moves
    toward their mean (as trained) by the relatives weight; seen species and names without relatives do not."""
    run0, run1 = ZeroShotRun(zs["run"], relatives_weight=0.0), ZeroShotRun(zs["run"], relatives_weight=1.0)
    rank, oaks = run1.relatives("Quercus pubescens")
    assert rank == "genus" and set(oaks) == {s for s in run1.species if s.startswith("Quercus ")} and oaks
    assert run1.relatives("Quercus ilex") == (None, []) == run1.relatives("quercus ILEX L.")  # a training species
    assert run1.relatives("Pistacia lentiscus") == (None, [])  # Anacardiaceae, Sapindales: nothing seen
    rank, fagaceae = ZeroShotRun(zs["run"], relative_ranks=("family",)).relatives("Quercus pubescens")
    assert rank == "family" and set(oaks) < set(fagaceae) and "Fagus sylvatica" in fagaceae
    trained = run1.releve_encoder.species_text.numpy()
    pulled, own = run1.text_embeddings(["Quercus pubescens", "Quercus ilex"]), run0.text_embeddings(
        ["Quercus pubescens", "Quercus ilex"])
    np.testing.assert_allclose(pulled[0], trained[[run1.species.index(s) for s in oaks]].mean(0), atol=1e-6)
    np.testing.assert_allclose(pulled[1], own[1], atol=1e-6)
    half = ZeroShotRun(zs["run"], relatives_weight=0.5).text_embeddings(["Quercus pubescens"])[0]
    np.testing.assert_allclose(half, (own[0] + pulled[0]) / 2, atol=1e-6)
    with pytest.raises(EcoalignInputError, match="relatives weight 1.5"):
        ZeroShotRun(zs["run"], relatives_weight=1.5)
