"""train-organism: mixed text types, replay through its own projection, resume = uninterrupted, CLI, DDP on CPU."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ecoalign.cli import main
from ecoalign.core.errors import EcoalignInputError
from ecoalign.encoders.organism import load_organism_encoder
from ecoalign.organism.train import train_organism
from ecoalign.organism.train_data import SpeciesCaption

SPECIES = [("Corvidae", "Corvus", "corax", "raven", (40, 40, 200)), ("Corvidae", "Corvus", "corone", "crow", (40, 40, 120)),
           ("Paridae", "Parus", "major", "great tit", (220, 200, 30)), ("Paridae", "Parus", "minor", None, (200, 120, 30))]


def _png(arr) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A tiny curated set in `ecoalign curate`'s layout (written with its shard writer) and general pairs."""
    from ecoalign.data.taxonomy import TEXT_TYPES, Taxon, text
    from ecoalign.organism.shards import sample_record, write_shards

    root = tmp_path_factory.mktemp("organisms")
    rng = np.random.default_rng(0)
    records = {"train": [], "val": []}
    for si, (family, genus, epithet, common, colour) in enumerate(SPECIES):
        taxon, _ = Taxon.from_ranks({"kingdom": "Animalia", "phylum": "Chordata", "class": "Aves",
                                     "order": "Passeriformes", "family": family, "genus": genus,
                                     "species": epithet}, common=common)
        for j in range(8):
            arr = (rng.normal(0, 20, (40, 40, 3)) + np.array(colour)).clip(0, 255).astype(np.uint8)
            arr[si * 8:si * 8 + 6] = 255
            split, key = ("train" if j < 6 else "val"), f"s{si}i{j}"
            meta = {"key": key, "taxon": taxon.as_dict(), "common": common, "split": split, "source": key}
            records[split].append(sample_record(key, _png(arr), "png", meta, {k: text(taxon, k) for k in TEXT_TYPES}))
    for split, recs in records.items():
        write_shards(recs, root / "curated" / split, shard_size=10)
    (root / "curated" / "curation.json").write_text(json.dumps({"seed": 0}))
    pairs = []
    for i in range(12):
        name, colour = [("red", (220, 30, 30)), ("green", (30, 200, 30)), ("blue", (30, 30, 220))][i % 3]
        arr = np.full((40, 40, 3), colour, np.uint8)
        arr[:(i % 4) * 8 + 4] //= 2
        pairs.append({"__key__": f"g{i}", "jpg": _png(arr), "txt": f"a {name} square with {i % 4} stripes".encode()})
    write_shards(pairs, root / "pairs", shard_size=8, prefix="pairs")
    return root


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def _kw(data, **extra):
    return {"curated": str(data / "curated"), "epochs": 2, "batch_size": 8, "log_every": 1, "progress": False,
            "checkpoint_every": 100, **extra}


def test_mixed_and_fixed_captions(data):
    from ecoalign.organism.shards import iter_samples, shard_paths

    samples = list(iter_samples(shard_paths(data / "curated", "train"), decode=False))
    raven = next(i for i, s in enumerate(samples) if s["taxon"].epithet == "corax")
    mixed = SpeciesCaption(samples, "mixed", templates=True)
    draws = [mixed(raven, np.random.default_rng([0, e, raven])) for e in range(60)]
    assert draws == [mixed(raven, np.random.default_rng([0, e, raven])) for e in range(60)]  # keyed, repeatable
    assert any("Animalia Chordata Aves" in d for d in draws) and any("raven" in d for d in draws)
    assert any("kingdom Animalia phylum" in d for d in draws) and len(set(draws)) > 20
    fixed = SpeciesCaption(samples, "scientific", templates=False)
    assert {fixed(raven, np.random.default_rng(e)) for e in range(10)} == {"Corvus corax"}
    nameless = next(i for i, s in enumerate(samples) if s["taxon"].epithet == "minor")
    assert SpeciesCaption(samples, "common", templates=False)(nameless, np.random.default_rng(0)) == "Parus minor"


def _replay_kw(data, **extra):
    return _kw(data, replay=str(data / "pairs"), replay_batch_size=4, val_split=None, **extra)


@pytest.fixture(scope="module")
def full_run(data, tmp_path_factory):
    """The uninterrupted reference run (one thread, like the runs compared with it: same float sums)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_organism(out=str(tmp_path_factory.mktemp("full") / "run"), **_replay_kw(data))
    finally:
        torch.set_num_threads(n)


def _max_weight_difference(run_a, run_b) -> float:
    sa, sb = load_organism_encoder(run_a).model.state_dict(), load_organism_encoder(run_b).model.state_dict()
    return max((sa[k] - sb[k]).abs().max().item() for k in sa)


def test_replay_run_resumes_exactly_and_saves_a_loadable_encoder(data, full_run, tmp_path):
    kw = _replay_kw(data)
    full = full_run
    part = train_organism(out=str(tmp_path / "part"), max_steps=4, **kw)
    assert not (part / "encoder").exists() and (part / "checkpoints" / "last.pt").exists()
    with pytest.raises(EcoalignInputError, match="cannot change \\['lr'\\] when resuming"):
        train_organism(resume=str(part), lr=0.1)
    train_organism(resume=str(part), progress=False)

    assert _max_weight_difference(full, part) == 0.0
    a = load_organism_encoder(full)
    sa = a.model.state_dict()
    ma, mb = pd.read_csv(full / "metrics.csv"), pd.read_csv(part / "metrics.csv")
    assert list(ma["step"]) == [1, 2, 3, 4, 5, 6] and np.allclose(ma["loss"], mb["loss"])
    assert ma["replay_loss"].notna().all()
    assert ma["loss"].iloc[-1] < ma["loss"].iloc[0]

    report = json.loads((full / "train_report.json").read_text())
    assert report["started_from_random_weights"] and report["replay_pairs"] == 12 and report["steps"] == 6
    assert a.info["initialised_from"]["random_weights"] and not a.random_weights
    assert a.info["training"]["text_type"] == "mixed"
    # replay had its own projection; the saved encoder carries the species one as visual.proj
    ckpt = torch.load(full / "checkpoints" / "last.pt", weights_only=False)["model"]
    assert "clip.visual.proj" not in ckpt and not torch.equal(ckpt["species_proj"], ckpt["replay_proj"])
    assert torch.equal(sa["visual.proj"], ckpt["species_proj"])
    torch.manual_seed(0)  # the run's own random start
    start = load_organism_encoder("open_clip:ecoalign-tiny-vit")
    assert not torch.equal(start.model.visual.proj, sa["visual.proj"])


def test_grad_checkpointing_gives_the_same_training(data, tmp_path):
    kw = _kw(data, epochs=1, max_steps=2, text_type="taxonomic", val_split=None)
    plain = train_organism(out=str(tmp_path / "plain"), **kw)
    ckpt = train_organism(out=str(tmp_path / "ckpt"), grad_checkpointing=True, **kw)
    sa = torch.load(plain / "checkpoints" / "last.pt", weights_only=False)["model"]
    sb = torch.load(ckpt / "checkpoints" / "last.pt", weights_only=False)["model"]
    assert max((sa[k] - sb[k]).abs().max().item() for k in sa) < 1e-5
    assert not torch.equal(sa["clip.text_projection"], load_organism_encoder("open_clip:ecoalign-tiny-vit")
                           .model.state_dict()["text_projection"])


def test_cli_trains_and_reports_bad_input(data, tmp_path, capsys):
    cur = str(data / "curated")
    out = tmp_path / "cli"
    assert main(["train-organism", "--data", cur, "--epochs", "1", "--batch-size", "8", "--text-type", "taxon_tag",
                 "--out", str(out), "progress=false", "log_every=1"]) == 0
    captured = capsys.readouterr()
    text = captured.out + captured.err  # the run's log goes to stderr, the command's results to stdout
    assert "RANDOM weights" in text and "encoder saved" in text
    enc = load_organism_encoder(out)
    assert enc.info["training"]["text_type"] == "taxon_tag"
    assert pd.read_csv(out / "metrics.csv")["val_loss"].notna().any()
    cases = [(["--text-type", "latin"], "text_type='latin'"),
             (["--batch-size", "64"], "batch_size=64 is larger than the 24 training images"),
             (["--arch", "ViT-B-33"], "unknown open_clip architecture 'ViT-B-33'"),
             (["--replay", str(tmp_path / "none")], "the shard pattern matches no file")]
    for extra, message in cases:
        assert main(["train-organism", "--data", cur, "--batch-size", "8", "--out", str(tmp_path / "bad"), *extra]) == 2
        assert message in capsys.readouterr().err
    assert main(["train-organism", "--data", cur, "--out", str(out)]) == 2
    assert "a run already exists here" in capsys.readouterr().err
    assert main(["train-organism", "--data", str(tmp_path)]) == 2
    assert "no .tar shards in this directory" in capsys.readouterr().err


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(data, tmp_path):
    """torchrun with 2 CPU processes (gloo): each trains on its half, features gathered for the loss."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "ecoalign.cli", "train-organism", "--data", str(data / "curated"), "--epochs", "1",
           "--batch-size", "4", "--replay", str(data / "pairs"), "--replay-batch-size", "2", "--device", "cpu",
           "--out", str(out), "progress=false", "log_every=1", "val_split=null"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "train_report.json").read_text())
    assert report["world_size"] == 2 and report["train_images"] == 24 and report["steps"] == 3
    assert (proc.stdout + proc.stderr).count("encoder saved") == 1  # only rank 0 writes
    assert load_organism_encoder(out).embed_text(["a photo of Corvus corax."]).shape == (1, 64)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(data, full_run, tmp_path):
    """SIGKILL a CLI run once it has checkpointed, then --resume: the result equals the uninterrupted run."""
    import signal
    import time

    out = tmp_path / "killed"
    kw = _replay_kw(data, checkpoint_every=1)
    flags = [f"{k}={'null' if v is None else str(v).lower() if isinstance(v, bool) else v}" for k, v in kw.items()
             if k != "curated"]
    cmd = [sys.executable, "-m", "ecoalign.cli", "train-organism", "--data", kw["curated"], "--out", str(out), *flags]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    while not (out / "checkpoints" / "last.pt").exists() and proc.poll() is None:  # no wall-clock deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-2000:]
    assert not (out / "train_report.json").exists()
    assert main(["train-organism", "--resume", str(out), "progress=false"]) == 0
    assert _max_weight_difference(full_run, out) == 0.0
