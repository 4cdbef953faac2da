"""Why did mixed text types train worse than taxonomic text alone? A small controlled experiment on the organism
world: the same starting model (pretrained by train-organism on the world's general image-caption pairs), the
same fine-tuning on the seen species, varying one thing at a time:

- the text types that "mixed" draws from: all six; without the common-name types; the taxonomic forms only;
- the evaluation text: every model is scored with each text type (genus top-1 on HELD-OUT species, classes
  scored by summing species probabilities, one template "a photo of {}.") and with all templates averaged.

Prints one table (rows: training text, columns: evaluation text) per seed and the mean over seeds, with the
Wilson interval half-width of one cell for scale.

    python benchmarks/bench_text_types.py [--seeds 0 1] [--epochs 10] [--threads 1]
"""
from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch

TRAIN = {
    "taxonomic": {"text_type": "taxonomic"},
    "mixed (all 6)": {"text_type": "mixed"},
    "mixed w/o common": {"text_type": "mixed", "mixed_types": ["taxonomic", "scientific", "taxonomic_common",
                                                               "scientific_common", "taxon_tag"]},
    "mixed taxonomic forms": {"text_type": "mixed", "mixed_types": ["taxonomic", "taxonomic_common", "taxon_tag"]},
}
EVAL = ("taxonomic", "taxonomic_common", "taxon_tag", "scientific", "scientific_common", "common")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    logging.getLogger().setLevel(logging.ERROR)

    from ecoalign.data.taxonomy import TEMPLATES, Taxon
    from ecoalign.demo.organism_world import organism_world
    from ecoalign.encoders.organism import load_organism_encoder
    from ecoalign.organism import evaluate as ev
    from ecoalign.organism.curate import curate
    from ecoalign.organism.photos import embed_items
    from ecoalign.organism.shards import iter_samples, shard_paths
    from ecoalign.organism.train import train_organism

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        world = organism_world(root / "world", seed=0, images_per_species=4, image_px=32, n_general_pairs=256)
        cur = root / "curated"
        curate(world.metadata_csv, cur, unseen_species=str(world.heldout_file), val_fraction=0.0,
               test_fraction=0.0, progress=False)
        unseen = [(s["key"], s["image"], s["taxon"]) for s in iter_samples(shard_paths(cur, "test_unseen"))]
        import pandas as pd

        table = pd.read_csv(world.metadata_csv, keep_default_na=False)
        species = [Taxon.from_ranks(r, common=r.get("common_name") or None)[0]
                   for r in table.drop_duplicates("species").to_dict("records")]
        start = train_organism(curated=str(world.general_pairs), text_type="caption", epochs=38, batch_size=64,
                               lr=1e-3, warmup_steps=10, val_split=None, progress=False, out=str(root / "start"))
        print(f"[text-types] {len(unseen)} held-out-species images, {len({t.label('genus') for t in species})} "
              f"genera; start model pretrained on general captions ({start})", flush=True)
        results = {}
        for seed in a.seeds:
            for name, kw in TRAIN.items():
                run = train_organism(curated=str(cur), arch=str(start), epochs=a.epochs, batch_size=64, lr=5e-4,
                                     warmup_steps=10, seed=seed, val_split=None, progress=False,
                                     out=str(root / f"{name.replace(' ', '_')}_{seed}"), **kw)
                enc = load_organism_encoder(run)
                _, taxa, emb, _ = embed_items(enc, unseen, progress=False)
                for kind in EVAL + ("taxonomic, all templates",):
                    tpl = TEMPLATES if kind.endswith("templates") else ("a photo of {}.",)
                    classes = ev.build_classes(enc, species, "genus", method="sum", text_type=kind.split(",")[0],
                                               templates=tpl)
                    results[seed, name, kind] = ev.zero_shot_accuracy(emb, taxa, classes)[0].top1
                print(f"[text-types] seed {seed} {name:>22}: " + "  ".join(
                    f"{k.split(',')[0][:14]}{'+tpl' if k.endswith('templates') else ''} {results[seed, name, k].value:.3f}"
                    for k in EVAL + ("taxonomic, all templates",)), flush=True)
        kinds = EVAL + ("taxonomic, all templates",)
        print("\n[text-types] genus top-1 on held-out species, mean over seeds " + str(a.seeds))
        print(f"{'training text':>24} | " + " | ".join(f"{k[:17]:>17}" for k in kinds))
        for name in TRAIN:
            print(f"{name:>24} | " + " | ".join(f"{np.mean([results[s, name, k].value for s in a.seeds]):17.3f}"
                                                 for k in kinds))
        one = results[a.seeds[0], "taxonomic", "taxonomic"]
        print(f"[text-types] one cell: n = {one.n} images, Wilson 95% half-width about {(one.high - one.low) / 2:.3f}; "
              f"chance about {1 / len({t.label('genus') for t in species}):.3f}")


if __name__ == "__main__":
    main()
