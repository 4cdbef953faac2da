"""How good an alignment is: cross-modal retrieval on held-out plots, and fidelity to the frozen geometry."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def retrieval_recall(img: torch.Tensor, rel: torch.Tensor, ks=(1, 10)) -> dict[str, float]:
    """Recall@k and mean reciprocal rank both ways: is a plot's own relevé among its k most similar relevés, and vice versa."""
    sims = F.normalize(img.float(), dim=-1) @ F.normalize(rel.float(), dim=-1).T
    n = sims.shape[0]
    true = sims.diagonal()
    rank_i2r = (sims > true[:, None]).sum(dim=1)  # relevés that beat the true one, per image
    rank_r2i = (sims > true[None, :]).sum(dim=0)
    out = {"n": int(n),
           "image_to_releve_MRR": float((1.0 / (rank_i2r.float() + 1)).mean()),
           "releve_to_image_MRR": float((1.0 / (rank_r2i.float() + 1)).mean())}
    for k in ks:
        out[f"image_to_releve_R@{k}"] = float((rank_i2r < k).float().mean())
        out[f"releve_to_image_R@{k}"] = float((rank_r2i < k).float().mean())
        out[f"chance_R@{k}"] = min(1.0, k / n) if n else float("nan")
    return out


def anchor_fidelity(adapted: torch.Tensor, frozen: torch.Tensor) -> float:
    """Pearson correlation between the pairwise cosine similarities of adapted and frozen embeddings."""
    a = F.normalize(adapted.float(), dim=-1)
    f = F.normalize(frozen.float(), dim=-1)
    iu = torch.triu_indices(len(a), len(a), offset=1)
    sa = (a @ a.T)[iu[0], iu[1]].numpy()
    sf = (f @ f.T)[iu[0], iu[1]].numpy()
    if sa.std() == 0 or sf.std() == 0:
        return float("nan")
    return float(np.corrcoef(sa, sf)[0, 1])
