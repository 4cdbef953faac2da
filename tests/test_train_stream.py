"""train-organism's data stream: shards split across ranks and workers without duplication, an exact restart from
saved positions, data sources (patterns, mixes, caption tables, old layouts) and bad input skipped and counted."""
from __future__ import annotations

import io
import json
import logging
import tarfile

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ecoalign.core.errors import EcoalignInputError
from ecoalign.organism.shards import write_shards
from ecoalign.organism.stream import SampleStream
from ecoalign.organism.train import train_organism
from ecoalign.organism.train_sources import resolve_sources

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py
COLOURS = [("red", (220, 30, 30)), ("green", (30, 200, 30)), ("blue", (30, 30, 220))]


def _png(i: int) -> bytes:
    arr = np.full((24, 24, 3), COLOURS[i % 3][1], np.uint8)
    arr[:(i % 4) * 6 + 2] //= 2
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _pair(i: int, prefix: str = "g") -> dict:
    return {"__key__": f"{prefix}{i}", "png": _png(i), "txt": f"a {COLOURS[i % 3][0]} square, {i % 4} bands".encode()}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """40 general image-caption pairs in 8 shards of 5 (no taxonomy)."""
    root = tmp_path_factory.mktemp("pairs")
    write_shards([_pair(i) for i in range(40)], root, shard_size=5, prefix="pairs")
    return root


def _keys(raw, source, rng):
    return torch.zeros(1), raw["__key__"]


def _stream(pairs, **kw):
    args = {"batch": 5, "seed": 0, "make_sample": _keys, "tokenizer": list, "shuffle_buffer": 10, **kw}
    return SampleStream(resolve_sources(str(pairs)), **args)


def _take(stream, workers: int, n: int, positions: dict | None = None) -> list[list[str]]:
    loader = iter(torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers))
    out = []
    for _ in range(n):
        _, keys, report = next(loader)
        out.append(keys)
        if positions is not None:
            positions[report["worker"]] = report["position"]
    return out


def test_ranks_and_workers_share_a_pass_without_duplication(pairs):
    """2 ranks x 2 workers: one pass (8 batches of 5 in all) reads every sample exactly once."""
    seen = [k for rank in (0, 1) for batch in _take(_stream(pairs, rank=rank, world=2, workers=2), 2, 4)
            for k in batch]
    assert sorted(seen) == sorted(f"g{i}" for i in range(40))
    one = [k for batch in _take(_stream(pairs), 0, 8) for k in batch]
    assert sorted(one) == sorted(seen) and one != [f"g{i}" for i in range(40)]  # shuffled
    again = [k for batch in _take(_stream(pairs), 0, 8) for k in batch]
    assert again == one  # keyed by seed: the same stream every time
    assert [k for b in _take(_stream(pairs, seed=1), 0, 8) for k in b] != one


def test_restart_from_saved_positions_continues_exactly(pairs):
    """Positions taken after 5 batches (as the trainer checkpoints them) give batches 6.. of the uninterrupted
    stream, with DataLoader workers (whose round robin restarts at worker 0)."""
    whole = _take(_stream(pairs, workers=2), 2, 11)
    positions: dict = {}
    first = _take(_stream(pairs, workers=2), 2, 5, positions)
    rest = _take(_stream(pairs, workers=2, start=positions, shift=5), 2, 6)
    assert first + rest == whole


def test_sources_patterns_and_mixing(pairs, tmp_path):
    pattern = str(pairs / "pairs-{000000..000003}.tar")
    assert [s.samples for s in resolve_sources([pattern, str(pairs / "pairs-00000[4-7].tar")])] == [20, 20]
    with pytest.raises(EcoalignInputError, match="2 of the 10 shards the pattern names do not exist, first: .*pairs-000008.tar"):
        resolve_sources(str(pairs / "pairs-{000000..000009}.tar"))
    with pytest.raises(EcoalignInputError, match="the shard pattern matches no file"):
        resolve_sources(str(tmp_path / "*.tar"))
    with pytest.raises(EcoalignInputError, match="no training data given"):
        resolve_sources([])
    (tmp_path / "empty").mkdir()
    with pytest.raises(EcoalignInputError, match="no .tar shards in this directory"):
        resolve_sources(str(tmp_path / "empty"))
    with pytest.raises(EcoalignInputError, match="2 data weight\\(s\\) for 1 data source"):
        resolve_sources(pattern, [1, 2])
    # two sources mixed 3:1 by weight
    other = tmp_path / "other"
    write_shards([_pair(i, "o") for i in range(40)], other, shard_size=5, prefix="other")
    stream = SampleStream(resolve_sources([str(pairs), str(other)], [3, 1]), batch=10, seed=0, make_sample=_keys,
                          tokenizer=list, shuffle_buffer=10)
    keys = [k for b in _take(stream, 0, 20) for k in b]
    share = np.mean([k.startswith("o") for k in keys])
    assert 0.15 < share < 0.35 and len(set(keys)) > 60


def _bad_shards(root):
    """Shards with a sample without text, an image that does not decode and a truncated tar member."""
    good = [_pair(i) for i in range(24)]
    notext = {"__key__": "notext", "png": _png(1)}
    broken = {"__key__": "broken", "png": b"\x89PNG\r\n\x1a\n not an image", "txt": b"a broken image"}
    write_shards(good[:10] + [notext, broken], root, shard_size=6, prefix="bad")
    write_shards(good[10:], root, shard_size=7, prefix="cut")
    cut = root / "cut-000001.tar"
    data = cut.read_bytes()
    with tarfile.open(cut) as tar:
        third = [m for m in tar.getmembers()][2 * 2 + 1]  # a member of the third sample
    cut.write_bytes(data[:third.offset_data + 10])  # truncated inside that member
    (root / "sizes.json").unlink()  # counted from the headers, damage included
    return root


@pytest.fixture
def caplog(caplog, monkeypatch):
    """caplog that also hears the ``ecoalign`` logger after a CLI run in this process stopped its propagation."""
    monkeypatch.setattr(logging.getLogger("ecoalign"), "propagate", True)
    return caplog


def test_bad_samples_are_skipped_counted_and_named(tmp_path, caplog):
    data = _bad_shards(tmp_path / "bad")
    with caplog.at_level(logging.WARNING):
        run = train_organism(curated=str(data), epochs=1, batch_size=8, val_split=None, progress=False,
                             out=str(tmp_path / "run"), shuffle_buffer=64)
    report = json.loads((run / "train_report.json").read_text())
    reasons = " | ".join(f"{e['where']}: {e['reason']}" for e in report["skipped_first"])
    assert report["skipped_samples"] >= 3 and report["steps"] == (12 + 7 + 3) // 8  # 3 counted before the cut
    assert "sample notext: no text" in reasons and "sample broken: image does not decode" in reasons
    assert "cut-000001.tar: unreadable tar data" in reasons
    assert "damaged" in caplog.text and "skipped a sample" in caplog.text and "notext" in caplog.text


def test_empty_shard_and_not_a_tar_are_refused(tmp_path):
    (tmp_path / "d").mkdir()
    write_shards([], tmp_path / "d", shard_size=5)
    (tmp_path / "d" / "shard-000000.tar").write_bytes(b"")
    with pytest.raises(EcoalignInputError, match="cannot read shard"):
        resolve_sources(str(tmp_path / "d"))
    (tmp_path / "e").mkdir()
    with tarfile.open(tmp_path / "e" / "x.tar", "w"):
        pass
    with pytest.raises(EcoalignInputError, match="no samples in these shards"):
        resolve_sources(str(tmp_path / "e"))


def test_old_layout_curated_shards_still_train(tmp_path, caplog):
    """A curated folder from before ShardWriter (members written by hand, no sizes.json, no <key>.txt)."""
    from ecoalign.data.taxonomy import TEXT_TYPES, Taxon, text

    cur = tmp_path / "old"
    (cur / "train").mkdir(parents=True)
    (cur / "curation.json").write_text(json.dumps({"seed": 0}))
    with tarfile.open(cur / "train" / "shard-000000.tar", "w") as tar:
        for i in range(16):
            taxon, _ = Taxon.from_ranks({"kingdom": "Animalia", "phylum": "Chordata", "class": "Aves",
                                         "order": "Passeriformes", "family": "Corvidae", "genus": "Corvus",
                                         "species": ["corax", "corone"][i % 2]})
            members = {"png": _png(i), "json": json.dumps({"taxon": taxon.as_dict()}).encode(),
                       **{f"{k}.txt": text(taxon, k).encode() for k in TEXT_TYPES}}
            for suffix, blob in members.items():
                info = tarfile.TarInfo(f"k{i}.{suffix}")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
    with caplog.at_level(logging.WARNING):
        run = train_organism(curated=str(cur), epochs=1, batch_size=8, val_split=None, progress=False,
                             out=str(tmp_path / "run"))
    assert json.loads((run / "train_report.json").read_text())["steps"] == 2
    assert "older `ecoalign curate`" in caplog.text and "re-run `ecoalign curate`" in caplog.text


def test_caption_table_pretraining_then_taxonomic_fine_tuning(tmp_path, pairs):
    """General pairs from a caption table and from shards (mixed), then the result fine-tuned on taxonomic
    text; bf16 autocast on CPU, one thread, two DataLoader workers."""
    from ecoalign.encoders.organism import load_organism_encoder
    from ecoalign.organism.shards import sample_record

    (tmp_path / "img").mkdir()
    rows = []
    for i in range(12):
        (tmp_path / "img" / f"{i}.png").write_bytes(_png(i))
        rows.append({"image": f"img/{i}.png", "caption": f"a {COLOURS[i % 3][0]} tile"})
    pd.DataFrame(rows).to_csv(tmp_path / "captions.csv", index=False)
    pre = train_organism(curated=[str(tmp_path / "captions.csv"), str(pairs)], data_weights=[1, 1], epochs=1,
                         batch_size=8, val_split=None, progress=False, out=str(tmp_path / "pre"),
                         precision="bf16", threads=1, num_workers=2)
    report = json.loads((pre / "train_report.json").read_text())
    assert report["precision"] == "bf16" and report["threads"] == 1 and report["train_images"] == 52
    from ecoalign.data.taxonomy import TEXT_TYPES, Taxon, text

    records = []
    for i in range(16):
        taxon, _ = Taxon.from_ranks({"kingdom": "Animalia", "phylum": "Chordata", "class": "Aves",
                                     "order": "Passeriformes", "family": "Paridae", "genus": "Parus",
                                     "species": ["major", "minor"][i % 2]})
        records.append(sample_record(f"t{i}", _png(i), "png", {"taxon": taxon.as_dict()},
                                     {k: text(taxon, k) for k in TEXT_TYPES}))
    write_shards(records, tmp_path / "cur" / "train", shard_size=8)
    (tmp_path / "cur" / "curation.json").write_text("{}")
    fine = train_organism(curated=str(tmp_path / "cur"), arch=str(pre), epochs=1, batch_size=8, val_split=None,
                          progress=False, out=str(tmp_path / "fine"), text_type="taxonomic")
    enc = load_organism_encoder(fine)
    start_from = enc.info["initialised_from"]
    assert not start_from["random_weights"] and start_from["weights"].startswith(str((pre / "encoder").resolve()))
    start = load_organism_encoder(pre).model.state_dict()
    assert any(not torch.equal(v, start[k]) for k, v in enc.model.state_dict().items())


def test_cli_flags_reach_the_config(monkeypatch, pairs):
    """--data (repeatable), --data-weights, --workers, --threads, --precision arrive as the config keys."""
    import ecoalign.organism.train as train_module
    from ecoalign.cli import main

    seen = {}

    def fake_train(**kwargs):  # isolates the argument parsing: the training itself is tested above
        seen.update(kwargs)
        return pairs

    monkeypatch.setattr(train_module, "train_organism", fake_train)
    assert main(["train-organism", "--data", "a", "--data", "b", "--data-weights", "3", "1", "--workers", "2",
                 "--threads", "1", "--precision", "bf16", "--text-type", "caption"]) == 0
    assert seen["curated"] == ["a", "b"] and seen["data_weights"] == [3.0, 1.0] and seen["num_workers"] == 2
    assert (seen["threads"], seen["precision"], seen["text_type"]) == (1, "bf16", "caption")
    main(["train-organism", "--data", "a"])
    assert seen["curated"] == "a"


def test_resume_with_workers_gives_the_uninterrupted_weights(pairs, tmp_path):
    """Two DataLoader workers: stopped after 2 of 5 steps and resumed, the weights equal an uninterrupted run's
    (each worker restarts from its stored position, the round robin where it left off)."""
    kw = {"curated": str(pairs), "epochs": 1, "batch_size": 8, "val_split": None, "progress": False,
          "num_workers": 2, "shuffle_buffer": 10, "threads": 1}
    full = train_organism(out=str(tmp_path / "full"), **kw)
    part = train_organism(out=str(tmp_path / "part"), max_steps=3, **kw)
    with pytest.raises(EcoalignInputError, match="cannot change \\['num_workers'\\] when resuming"):
        train_organism(resume=str(part), num_workers=1)
    train_organism(resume=str(part), progress=False)
    a = torch.load(full / "checkpoints" / "last.pt", weights_only=False)
    b = torch.load(part / "checkpoints" / "last.pt", weights_only=False)
    assert a["step"] == b["step"] == 5 and a["data"]["positions"] == b["data"]["positions"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
