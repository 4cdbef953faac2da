"""Zero-shot prediction speed: ecoalign vs pybioclip's CustomLabelsClassifier, same model, images, classes, batch.

Both start from the same open_clip architecture with random weights saved to a local checkpoint (pybioclip takes
it as model_str/pretrained_str); class text embeddings are built before the clock starts on both sides; the
timed part is file paths -> top-k rows (decode, preprocess, image tower, softmax, ranking). Runs alternate
(ecoalign, pybioclip, ecoalign, ...) after one warm-up each (pybioclip compiles its model with torch.compile),
and the median images/s is reported with the ratio.

    python benchmarks/bench_zero_shot.py [--arch ViT-B-16] [--images 48] [--batch 16] [--classes 10] [--repeats 2]

Set-up cost (not timed) grows with classes x 80 templates through the text tower: keep --classes small on a CPU.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def make_images(folder: Path, n: int, px: int = 400) -> list[Path]:
    """JPEG photos of the size organism photos come in (procedural texture; content does not affect speed)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        base = rng.integers(0, 255, size=(px // 8, px // 8, 3), dtype=np.uint8)
        im = Image.fromarray(base).resize((px, px), Image.BILINEAR)
        p = folder / f"img{i:04d}.jpg"
        im.save(p, quality=90)
        paths.append(p)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="ViT-B-16", help="open_clip architecture (or ecoalign-tiny-vit)")
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    import open_clip
    import torch
    from bioclip.predict import OPENA_AI_IMAGENET_TEMPLATE, CustomLabelsClassifier

    from ecoalign.encoders.organism import load_organism_encoder, register_tiny_configs
    from ecoalign.organism.evaluate import custom_classes
    from ecoalign.organism.predict import predict_folder

    register_tiny_configs()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = tmp / "random.pt"
        model = open_clip.create_model(args.arch, pretrained=None)
        torch.save(model.state_dict(), ckpt)
        del model
        paths = make_images(tmp / "photos", args.images)
        names = [f"genus{i // 4} species{i}" for i in range(args.classes)]

        ours = load_organism_encoder(f"open_clip:{args.arch}", weights=str(ckpt), device=args.device)
        # the same 80 OpenAI ImageNet templates pybioclip uses, so both build identical class embeddings
        classes = custom_classes(ours, names, templates=[t("{}") for t in OPENA_AI_IMAGENET_TEMPLATE])
        theirs = CustomLabelsClassifier(cls_ary=names, model_str=args.arch, pretrained_str=str(ckpt),
                                        device=args.device)

        def run_ours():
            table, _ = predict_folder(ours, tmp / "photos", classes, k=args.k, batch_size=args.batch,
                                      progress=False)
            return table

        def run_theirs():
            return theirs.predict([str(p) for p in paths], k=args.k, batch_size=args.batch,
                                  callback=lambda done, total: None)

        def timed(fn):
            t0 = time.perf_counter()
            out = fn()
            return len(paths) / (time.perf_counter() - t0), out

        timed(run_ours), timed(run_theirs)  # warm-up (pybioclip's torch.compile happens here)
        rates = {"ecoalign": [], "pybioclip": []}
        for _ in range(args.repeats):
            r, table = timed(run_ours)
            rates["ecoalign"].append(r)
            r, rows = timed(run_theirs)
            rates["pybioclip"].append(r)
        # same model, templates and preprocessing: the top-1 class per image should agree
        ours_top = table[table["rank"] == 1].set_index("file_name")["classification"]
        theirs_top = {Path(r["file_name"]).name: r["classification"] for r in rows[::min(args.k, args.classes)]}
        agree = sum(ours_top.get(k) == v for k, v in theirs_top.items()) / len(theirs_top)

    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"zero-shot prediction, {args.arch} random weights, {args.images} JPEG 400x400 images, "
          f"{args.classes} classes, batch {args.batch}, top-{args.k}, device {args.device}, "
          f"torch threads {torch.get_num_threads()}")
    for k, v in rates.items():
        print(f"  {k:<10} {med[k]:7.1f} images/s  (runs: {', '.join(f'{x:.1f}' for x in v)})")
    print(f"  ratio ecoalign / pybioclip = {med['ecoalign'] / med['pybioclip']:.2f}")
    print(f"  top-1 agreement between the two: {agree:.0%} of images")


if __name__ == "__main__":
    main()
