"""int8 transformer blocks for the DOFA backbone on CPU: which linears are quantised, how, and a copy that runs so.

Where oneDNN can (x86 PyTorch builds with oneDNN and bfloat16 support): the MLP linears as int8 oneDNN matmuls
(AMX-INT8 or VNNI units; weights per output channel, prepacked once; activations quantised per tensor on each call;
bias and GELU fused into the matmul) and everything else (attention, layer norms, residuals) in bfloat16.
Torch dynamic quantisation (fbgemm, VNNI) takes and gives float32, so everything around its int8 matmuls stays
float32 (in `map`, the float32 attention took ~45% of the time), and on AMX cores its int8 matmuls ran slower
than bfloat16 ones. Measured on 2 shared AMX cores, DOFA-small, batches of 32: this scheme about bf16's speed
(0.98x bf16's CPU time, 2.3x fp32's), torch dynamic quantisation 0.6x bf16's. On 2 Zen 4 cores (AVX-512 VNNI and
bfloat16, no AMX; ``python benchmarks/bench_map.py --skip-rss``): map 2.17x fp32's tiles/s (bf16 1.97x), encoder
alone 2.64x (torch dynamic quantisation 1.70x); the activations go in as unsigned bytes (see OneDNNInt8Linear).
Elsewhere (no oneDNN bfloat16): torch dynamic quantisation (qint8, per tensor) of the same linears, the rest
float32.

Only the MLP's linears: quantising the attention's too (DOFA-small, random weights, 36 windows of bench_map's
raster) raised the error beside the spread between windows from 0.023 to 0.037 (bf16: 0.012; per-tensor
activation scales lose the small variation between windows around their large common part) and was slower, not
faster: quantising activations costs memory passes (range, scale, round, convert) that a bfloat16 matmul does
not pay, and for the attention's smaller matmuls they cost more than int8 saves.
"""
from __future__ import annotations

import copy
import warnings

import torch

INT8_LAYERS = ("mlp.fc1", "mlp.fc2")
_ZERO_POINT = 128  # of the activations' unsigned bytes (OneDNNInt8Linear)
_ONEDNN_SCHEME = ("int8 oneDNN matmuls of " + ", ".join(INT8_LAYERS) + " (weights per channel, activations per "
                  "tensor, dynamic), GELU fused; the rest bfloat16")
_DYNAMIC_SCHEME = "dynamic qint8, per-tensor, of " + ", ".join(INT8_LAYERS) + "; the rest float32"


def onednn_int8_available() -> bool:
    """Whether this PyTorch build and CPU run oneDNN int8 matmuls with bfloat16 outputs."""
    try:
        return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn, "qlinear_pointwise")
                and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()))
    except (AttributeError, RuntimeError):
        return False


def int8_scheme() -> str:
    """What int8 means on this machine: part of encoder identities and cache keys (the schemes' numbers differ)."""
    return _ONEDNN_SCHEME if onednn_int8_available() else _DYNAMIC_SCHEME


def int8_blocks(blocks):
    """A copy of the transformer ``blocks`` (a ModuleList) computing as ``int8_scheme()`` says; the input dtype it
    expects is that of its first parameter (bfloat16 or float32). ``blocks`` are left untouched."""
    if onednn_int8_available():
        out = copy.deepcopy(blocks).to(torch.bfloat16)
        for mine, theirs in zip(out, blocks):
            mlp = theirs.mlp
            fuse = type(mlp.act) is torch.nn.GELU and isinstance(mlp.norm, torch.nn.Identity)
            mine.mlp.fc1 = OneDNNInt8Linear(mlp.fc1, gelu=mlp.act.approximate if fuse else None)
            mine.mlp.fc2 = OneDNNInt8Linear(mlp.fc2)
            if fuse:
                mine.mlp.act = torch.nn.Identity()
        return out.eval()
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():  # torch 2.14 flags torch.ao.quantization (still shipped) as deprecated
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_(tensor|channel).*", category=UserWarning)
        layers = {f"{i}.{name}" for i, block in enumerate(blocks) for name, mod in block.named_modules()
                  if isinstance(mod, torch.nn.Linear) and name in INT8_LAYERS}
        return quantize_dynamic(blocks, layers, dtype=torch.qint8, inplace=False).eval()


class OneDNNInt8Linear(torch.nn.Module):
    """A float linear layer as an int8 oneDNN matmul: bfloat16 in, bfloat16 out, optionally GELU fused.

    Hand-written around ``torch.ops.onednn.qlinear_pointwise`` (the op PyTorch's own x86 int8 path, inductor's
    PT2E lowering, calls): torch dynamic quantisation has no bfloat16 in/out and runs on fbgemm, not on AMX, and
    PT2E needs ``torch.compile`` (minutes of compiling per process on a small CPU)."""

    def __init__(self, linear: torch.nn.Linear, gelu: str | None = None):
        super().__init__()
        w = linear.weight.detach().float()
        scale = (w.abs().amax(dim=1) / 127.0).clamp_min(torch.finfo(torch.float32).tiny)
        wq = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
        self.register_buffer("packed", torch.ops.onednn.qlinear_prepack(wq, None))  # once, not per call
        self.register_buffer("w_scale", scale)
        self.register_buffer("w_zero", torch.zeros(len(scale), dtype=torch.int64))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float())
        self.out_features = int(w.shape[0])
        self.post = ("gelu", "tanh" if gelu == "tanh" else "none") if gelu else ("none", "")

    def forward(self, x):
        flat = x.reshape(-1, x.shape[-1])
        lo, hi = torch.aminmax(flat)
        # symmetric, per tensor: |x / s| <= 127 by construction, so no clamp (one memory pass fewer). Stored as
        # unsigned bytes with zero point 128 (exact; the same products): VNNI multiplies unsigned by signed bytes,
        # and for signed activations oneDNN 3.12 has no VNNI kernel, only its reference one (on a Zen 4 without
        # AMX: 19 s per DOFA-small MLP matmul, 600x float32); AMX takes either
        s = max(-float(lo), float(hi), 1e-30) / 127.0
        xq = flat.mul(1.0 / s).round_().add_(_ZERO_POINT).to(torch.uint8)
        y = torch.ops.onednn.qlinear_pointwise(xq, s, _ZERO_POINT, self.packed, self.w_scale, self.w_zero, self.bias,
                                               1.0, 0, torch.bfloat16, self.post[0], [], self.post[1])
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"out_features={self.out_features}, int8 oneDNN, post-op {self.post[0]}"
