"""train-organism on a data set larger than the address space it is allowed (``ulimit -v``), killed after its
first checkpoint and resumed to the end.

The set is ``--gigabytes`` of 512 px noise PNGs (a few distinct images under distinct keys, so writing it is
quick) in curate's layout; the training command runs under ``ulimit -v`` of ``--limit-gb`` (each process, the
DataLoader workers included). Prints the set's size, the limit, the steps and whether both sessions finished.

    python benchmarks/bench_memory_limit.py [--gigabytes 7] [--limit-gb 6] [--batch-size 64] [--workers 2]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_set(root: Path, gigabytes: float) -> tuple[int, int]:
    from PIL import Image

    from ecoalign.data.taxonomy import TEXT_TYPES, Taxon, text
    from ecoalign.organism.shards import sample_record, write_shards

    rng = np.random.default_rng(0)
    blobs = []
    for _ in range(4):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (512, 512, 3), dtype=np.uint8)).save(buf, format="PNG")
        blobs.append(buf.getvalue())
    taxa = [Taxon.from_ranks({"kingdom": "Animalia", "phylum": "Chordata", "class": "Aves", "order": "Passeriformes",
                              "family": "Corvidae", "genus": "Corvus", "species": s})[0] for s in ("corax", "corone")]
    n = int(gigabytes * 1e9 / len(blobs[0]))

    def records():
        for i in range(n):
            t = taxa[i % 2]
            yield sample_record(f"k{i}", blobs[i % 4], "png", {"taxon": t.as_dict()},
                                {k: text(t, k) for k in TEXT_TYPES})

    write_shards(records(), root / "train", shard_size=500)
    (root / "curation.json").write_text(json.dumps({"benchmark": True}))
    return n, sum(p.stat().st_size for p in (root / "train").glob("*.tar"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gigabytes", type=float, default=7.0)
    p.add_argument("--limit-gb", type=float, default=6.0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        data = Path(tmp) / "curated"
        n, size = make_set(data, a.gigabytes)
        run = Path(tmp) / "run"
        limit_kb = int(a.limit_gb * 1024 ** 2)
        flags = f"--data {data} --out {run} --epochs 1 --batch-size {a.batch_size} --workers {a.workers} " \
                f"--threads 1 progress=false val_split=null checkpoint_every=20 log_every=20"
        cmd = ["bash", "-c", f"ulimit -v {limit_kb} && exec {sys.executable} -m ecoalign.cli train-organism {flags}"]
        print(f"[memory-limit] {n} images, {size / 1e9:.2f} GB of shards; each process limited to "
              f"{a.limit_gb:.1f} GB of address space (ulimit -v {limit_kb})", flush=True)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        ckpt = run / "checkpoints" / "last.pt"
        while not ckpt.exists() and proc.poll() is None:
            time.sleep(0.5)
        time.sleep(1.0)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        err = proc.stderr.read()
        print(f"[memory-limit] first session killed (returncode {proc.returncode}) after its checkpoint "
              f"(step {__import__('torch').load(ckpt, weights_only=False)['step']})"
              + (f"; its stderr ends: {err[-800:]}" if proc.returncode not in (-9,) else ""), flush=True)
        resume = ["bash", "-c", (f"ulimit -v {limit_kb} && exec {sys.executable} -m ecoalign.cli train-organism "
                                 f"--resume {run} progress=false")]
        t0 = time.perf_counter()
        done = subprocess.run(resume, capture_output=True, text=True, check=False)
        report = run / "train_report.json"
        ok = done.returncode == 0 and report.exists()
        steps = json.loads(report.read_text())["steps"] if ok else None
        print(f"[memory-limit] resumed session: returncode {done.returncode}, {time.perf_counter() - t0:.0f} s, "
              f"finished {ok}, steps {steps} of {n // a.batch_size}"
              + ("" if ok else f"; stderr ends: {done.stderr[-1500:]}"))


if __name__ == "__main__":
    main()
