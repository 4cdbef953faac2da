"""Evaluation maths on constructed embeddings where the answer is known: Wilson intervals, top-k with ties,
template averaging, sum-vs-text aggregation above species, SimpleShot, intrinsic ratios; image-folder rows."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ecoalign.core.errors import EcoalignInputError
from ecoalign.data.taxonomy import Taxon
from ecoalign.organism import evaluate as ev
from ecoalign.organism import intrinsic as intr
from ecoalign.organism.labelled import read_labelled_table
from ecoalign.organism.photos import embed_folder, list_images
from ecoalign.organism.predict import predict_folder


def _unit(*v):
    v = np.asarray(v, float)
    return v / np.linalg.norm(v)


class VectorTextEncoder:
    """Isolates the maths from a network: the text of a caption ('{}' template) names its vector."""

    def __init__(self, vectors: dict[str, np.ndarray], logit_scale: float = 1.0):
        self.vectors, self.logit_scale, self.embed_dim = vectors, logit_scale, len(next(iter(vectors.values())))
        self.seen: list[str] = []

    def embed_text(self, texts, batch_size=256):
        self.seen += list(texts)
        return np.stack([self.vectors[t] for t in texts]).astype(np.float32)

    def embed(self, images, batch_size=64):
        """Mean RGB of each image, as a direction."""
        out = np.stack([np.asarray(im, float).reshape(-1, 3).mean(axis=0) + 1e-3 for im in images])
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


# ------------------------------------------------------------------------------------------------ Wilson
def test_wilson_interval_solves_the_score_equation():
    z = 1.959964
    for s, n in [(0, 10), (3, 10), (10, 10), (37, 120), (1, 1)]:
        lo, hi = ev.wilson_interval(s, n)
        p = s / n
        assert 0 <= lo <= p <= hi <= 1
        for bound in (lo, hi):  # Wilson bounds are where |p_hat - p| = z * sqrt(p (1 - p) / n)
            if 0 < bound < 1:
                assert abs(abs(p - bound) - z * math.sqrt(bound * (1 - bound) / n)) < 1e-9
    assert ev.wilson_interval(0, 10)[1] == pytest.approx(z * z / (10 + z * z))
    assert all(math.isnan(x) for x in ev.wilson_interval(0, 0))


def test_topk_ties_give_no_free_hits():
    flat = np.full((4, 3), 1 / 3)
    assert not ev.topk_hits(flat, np.array([0, 1, 2, 0]), 1).any()
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]])
    assert ev.topk_hits(scores, np.array([1, 1]), 1).tolist() == [True, False]
    assert ev.topk_hits(scores, np.array([2, 2]), 2).tolist() == [True, False]


# ------------------------------------------------------------------------------------------------ zero-shot
def test_class_embedding_is_renormalised_mean_of_normalised_captions():
    vecs = {"a x": np.array([3.0, 0, 0]), "b x": np.array([0, 1.0, 0]), "a y": np.array([0, 0, 2.0]),
            "b y": np.array([0, 0, -5.0])}
    enc = VectorTextEncoder(vecs)
    out = ev.class_embeddings(enc, [["a x", "b x"], ["a y", "b y"]])
    assert np.allclose(out[0], _unit(1, 1, 0))   # unnormalised mean would lean towards the longer vector
    assert np.allclose(np.linalg.norm(out, axis=1)[:1], 1)
    with pytest.raises(EcoalignInputError):
        ev.class_embeddings(enc, [[]])


def _genus_world():
    """Genus G1 holds species s1 and s2, genus G2 holds s3. Species s3 is the single most likely species for the
    image, yet G1 holds more probability in total; the genus-level texts point the image to G2."""
    base = dict(kingdom="Animalia", phylum="Chordata", cls="Aves", order="Passeriformes", family="Corvidae")
    s1, s2, s3 = (Taxon(**base, genus=g, epithet=e) for g, e in [("Gone", "alpha"), ("Gone", "beta"),
                                                                  ("Gtwo", "gamma")])
    vec = {"Animalia Chordata Aves Passeriformes Corvidae Gone alpha": _unit(1, 1, 0),
           "Animalia Chordata Aves Passeriformes Corvidae Gone beta": _unit(1, -1, 0),
           "Animalia Chordata Aves Passeriformes Corvidae Gtwo gamma": _unit(0, 0, 1),
           "Animalia Chordata Aves Passeriformes Corvidae Gone": _unit(0, 1, 0),
           "Animalia Chordata Aves Passeriformes Corvidae Gtwo": _unit(1, 0, 1)}
    return (s1, s2, s3), VectorTextEncoder(vec, logit_scale=3.0)


def test_sum_and_text_aggregation_differ_as_defined():
    (s1, s2, s3), enc = _genus_world()
    image = _unit(1, 0, 1)[None]  # cos 0.5 with s1 and s2, 0.707 with s3
    species = ev.build_classes(enc, [s1, s2, s3], "species", templates=("{}",))
    p = species.scores(image)[0]
    assert p.argmax() == 2 and p.sum() == pytest.approx(1)
    summed = ev.build_classes(enc, [s1, s2, s3], "genus", method="sum", templates=("{}",))
    g = summed.scores(image)[0]
    assert summed.labels == [s1.label("genus"), s3.label("genus")]
    assert g == pytest.approx([p[0] + p[1], p[2]])       # descendants' probabilities added
    assert g[0] > g[1]                                     # two moderately likely species beat one likelier one
    text = ev.build_classes(enc, [s1, s2, s3], "genus", method="text", templates=("{}",))
    assert text.leaf_groups is None and text.scores(image)[0].argmax() == 1
    for classes, hit in [(summed, True), (text, False)]:
        report, _ = ev.zero_shot_accuracy(image, [s2], classes)
        assert report.top1.hits == int(hit) and report.n_images == 1 and report.top5_k == 2


def test_zero_shot_excludes_labels_above_the_rank_and_checks_inputs():
    (s1, s2, s3), enc = _genus_world()
    classes = ev.build_classes(enc, [s1, s2, s3], "species", templates=("{}",))
    images = np.stack([_unit(1, 1, 0), _unit(1, -1, 0), _unit(0, 0, 1), _unit(0, 0, 1)])
    genus_only = s1.truncate("genus")
    report, scores = ev.zero_shot_accuracy(images, [s1, s2, s3, genus_only], classes)
    assert report.n_images == 3 and report.excluded["label_above_rank"] == 1
    assert report.top1.value == 1.0 and report.top1.low < 1.0  # Wilson: 3/3 is not certainty
    with pytest.raises(EcoalignInputError, match="method"):
        ev.build_classes(enc, [s1], "genus", method="vote")
    with pytest.raises(EcoalignInputError, match="rank"):
        ev.build_classes(enc, [genus_only], "species")


# ------------------------------------------------------------------------------------------------ few-shot
def test_simpleshot_matches_its_definition():
    rng = np.random.default_rng(0)
    support = rng.normal(size=(6, 5)) + 4.0     # a large common offset that centring must remove
    labels = np.array(list("aabbcc"))
    query = rng.normal(size=(10, 5)) + 4.0
    got = ev.simpleshot_predict(support, labels, query)
    mu = support.mean(axis=0)
    n = lambda x: (x - mu) / np.linalg.norm(x - mu, axis=1, keepdims=True)  # noqa: E731
    cents = {c: n(support)[labels == c].mean(axis=0) for c in "abc"}
    want = [min(cents, key=lambda c: np.linalg.norm(q - cents[c])) for q in n(query)]
    assert got.tolist() == want


def test_simpleshot_centring_changes_the_answer():
    """Collinear supports are one point after plain L2 normalisation; centring on their mean separates them."""
    support = np.array([[1.0, 0.0], [3.0, 0.0]])
    raw = support / np.linalg.norm(support, axis=1, keepdims=True)
    assert np.allclose(raw[0], raw[1])  # without centring the classes cannot be told apart
    got = ev.simpleshot_predict(support, ["a", "b"], np.array([[3.1, 0.0], [0.9, 0.0], [2.5, 0.4]]))
    assert got.tolist() == ["b", "a", "b"]


def test_few_shot_separable_vs_random_labels():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(4, 16)) * 3
    emb = np.concatenate([c + rng.normal(size=(8, 16)) * 0.3 for c in centres])
    labels = np.repeat(list("wxyz"), 8)
    for k in (1, 5):
        rep = ev.few_shot_accuracy(emb, labels, k, folds=5, seed=0)
        assert rep.mean == 1.0 and rep.n_classes == 4 and len(rep.per_fold) == 5
    noise = rng.normal(size=(400, 16))
    rep = ev.few_shot_accuracy(noise, rng.choice(list("wxyz"), 400), 5, folds=8, seed=0)
    assert rep.low < 0.25 + 0.06 and rep.mean < 0.35 and rep.low <= rep.mean <= rep.high
    uneven = np.concatenate([labels[:-7], ["lonely"]])
    rep = ev.few_shot_accuracy(emb[:len(uneven)], uneven, 1, folds=2)
    assert rep.excluded_classes == ["lonely", "z"] and rep.n_classes == 3
    with pytest.raises(EcoalignInputError):
        ev.few_shot_accuracy(emb[:3], ["a", "b", "c"], 1)


# ------------------------------------------------------------------------------------------------ intrinsic
def test_explained_variance_ratio_on_constructed_spaces():
    rng = np.random.default_rng(2)
    d, species = 12, 3
    means = np.eye(d)[:species] * 5
    lab = np.repeat(np.arange(species), 20)

    def build(noise_dims):
        noise = np.zeros((len(lab), d))
        half = rng.normal(size=(len(lab) // 2, len(noise_dims)))
        block = np.concatenate([half, -half])  # symmetric per species after the shuffle below -> exact means
        order = np.argsort(np.tile(np.arange(len(lab) // 2), 2), kind="stable")
        noise[:, noise_dims] = block[order]
        return means[lab] + noise

    ortho = intr.explained_variance_ratio(build(list(range(species, d))), lab)
    inside = intr.explained_variance_ratio(build(list(range(species))), lab)
    iso = intr.explained_variance_ratio(means[lab] + rng.normal(size=(len(lab), d)), lab)
    assert ortho["rho"] == pytest.approx(0, abs=1e-10) and ortho["span_dim"] == species
    assert inside["rho"] == pytest.approx(1, abs=1e-10)
    assert abs(iso["rho"] - species / d) < 0.1 and iso["chance"] == pytest.approx(species / d)


def test_explained_variance_ratio_with_variants_and_span_basis():
    basis = intr.span_basis(np.array([[1.0, 0, 0], [2.0, 0, 0], [0, 1.0, 0]]))
    assert basis.shape == (3, 2) and np.allclose(basis.T @ basis, np.eye(2))
    emb = np.array([[1, 0, 0, 0], [1, 0, 0, 2], [0, 1, 0, 0], [0, 1, 0, 2]], float)
    out = intr.explained_variance_ratio(emb, ["a", "a", "b", "b"], variants=["juv", "ad", "juv", "ad"])
    assert out["n_vectors"] == 2
    # both species shift by (0,0,0,2); the species means are (1,0,0,1) and (0,1,0,1)
    u = intr.span_basis(np.array([[1, 0, 0, 1], [0, 1, 0, 1]], float))
    dvec = np.array([0, 0, 0, 2.0])
    assert out["rho"] == pytest.approx(float(((u.T @ dvec) ** 2).sum() / 4))


def test_fisher_ratio_known_value_and_rank_summary(tmp_path):
    a = np.array([[0.0, 0], [2, 0]])
    b = np.array([[4.0, 0], [6, 0]])
    assert intr.fisher_ratio(a, b) == pytest.approx(16 / 2)
    m = intr.mean_fisher_ratio(np.concatenate([a, b, a + 100]), ["x", "x", "y", "y", "z", "z"])
    assert m["pairs"] == 3
    base = dict(kingdom="Plantae", phylum="Tracheophyta", cls="Magnoliopsida", order="Lamiales", family="Lamiaceae")
    taxa = [Taxon(**base, genus=g, epithet=e) for g, e in
            [("Mentha", "a"), ("Mentha", "a"), ("Mentha", "b"), ("Mentha", "b"), ("Salvia", "c"), ("Salvia", "c")]]
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(6, 8))
    rep = intr.intrinsic_analysis(emb, taxa, rank="genus", out_dir=tmp_path)
    assert (tmp_path / "intrinsic.json").exists() and (tmp_path / "embedding_pca_genus.png").read_bytes()[:4] == \
        b"\x89PNG"
    assert rep["fisher_genus"]["pairs"] == 1 and 0 <= rep["explained_variance_ratio"]["rho"] <= 1


# ------------------------------------------------------------------------------------------------ folders
def test_predict_and_embed_folder_rows_skip_broken_images(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8), (250, 5, 5)).save(tmp_path / "red.png")
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (8, 8), (5, 5, 250)).save(tmp_path / "sub" / "blue.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    enc = VectorTextEncoder({"red": _unit(1, 0, 0), "blue": _unit(0, 0, 1), "green": _unit(0, 1, 0)}, 10.0)
    classes = ev.custom_classes(enc, ["red", "blue", "green"], templates=("{}",))
    table, skipped = predict_folder(enc, tmp_path, classes, k=2, progress=False)
    assert list(table.columns) == ["file_name", "classification", "score", "position"]
    assert [s[0] for s in skipped] == ["broken.jpg"]
    best = table[table["position"] == 1].set_index("file_name")["classification"].to_dict()
    assert best == {"red.png": "red", "sub/blue.jpg": "blue"}
    emb, skipped = embed_folder(enc, tmp_path, progress=False)
    assert list(emb.columns) == ["file_name", "emb_000", "emb_001", "emb_002"] and len(emb) == 2
    with pytest.raises(EcoalignInputError, match="no image files"):
        list_images(_empty(tmp_path))


def _empty(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    return d


def test_labelled_table_reading(tmp_path):
    (tmp_path / "t.csv").write_text("file_name,kingdom,phylum,class,order,family,genus,species,common_name\n"
                                    "a.jpg,Metazoa,Chordata,Aves,Passeriformes,Corvidae,Corvus,Corvus corax,raven\n"
                                    "b.jpg,,,,,,,,\n")
    items, notes = read_labelled_table(tmp_path / "t.csv")
    assert items[0][1] == tmp_path / "a.jpg" and items[0][2].scientific == "Corvus corax"
    assert items[1][2] is None and any("Metazoa" in n for n in notes)
    (tmp_path / "bad.csv").write_text("x,y\n1,2\n")
    with pytest.raises(EcoalignInputError, match="no image column"):
        read_labelled_table(tmp_path / "bad.csv")
