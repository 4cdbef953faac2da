"""The real torchgeo DOFA: cached patch kernels, weights from enum / file / none, and clear failures."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ecoalign.core.errors import EcoalignInputError
from ecoalign.encoders.dofa import DOFAFeatures, build_dofa

WL = [0.49, 0.56, 0.665, 0.842]


def test_cached_patch_kernel_matches_torchgeo_forward():
    model, info = build_dofa("small", "none")
    x = torch.randn(3, 4, 224, 224)
    with torch.inference_mode():
        expected = model.forward_features(x, WL)
    feats = DOFAFeatures(model, WL)
    got = feats(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    kernel = feats._kernel
    feats(x[:1])
    assert feats._kernel is kernel  # computed once per band set, not per batch
    assert info.random_weights and info.weights == "none" and info.embed_dim == 384


def test_random_weights_are_seeded():
    a, _ = build_dofa("small", "none")
    b, _ = build_dofa("small", "none")
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


def _same_shaped_checkpoint(path: Path, size="small", seed=7) -> dict:
    from torchgeo.models import dofa_base_patch16_224, dofa_small_patch16_224

    torch.manual_seed(seed)
    donor = {"small": dofa_small_patch16_224, "base": dofa_base_patch16_224}[size]()
    state = {k: v for k, v in donor.state_dict().items() if not k.startswith(("fc_norm", "head"))}
    torch.save({"model": state}, path)
    return state


def test_local_checkpoint_loads_exactly(tmp_path):
    state = _same_shaped_checkpoint(tmp_path / "dofa_small.pth")
    model, info = build_dofa("small", str(tmp_path / "dofa_small.pth"))
    assert not info.random_weights and info.weights == "dofa_small.pth" and len(info.weights_sha256) == 64
    for k, v in state.items():
        assert torch.equal(model.state_dict()[k], v), k
    assert not any(p.requires_grad for p in model.parameters())


def test_checkpoint_of_another_size_is_a_clear_error(tmp_path):
    _same_shaped_checkpoint(tmp_path / "small.pth", "small")
    with pytest.raises(EcoalignInputError, match=r"small\.pth.*does not fit.*shape mismatches.*same DOFA size"):
        build_dofa("base", str(tmp_path / "small.pth"))


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(EcoalignInputError, match="checkpoint not found"):
        build_dofa("small", str(tmp_path / "nope.pth"))


def test_enum_weights_missing_from_hub_cache_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(EcoalignInputError) as err:
        build_dofa("base", "DOFA_MAE")
    msg = str(err.value)
    assert str(tmp_path / "hub" / "checkpoints" / "dofa_base_patch16_224-a0275954.pth") in msg
    assert "--weights none" in msg and "hf.co" in msg


def test_enum_weights_found_in_hub_cache_load_through_torchgeo(tmp_path, monkeypatch):
    """With the checkpoint where torchgeo would have downloaded it, the enum path works offline."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    target = tmp_path / "hub" / "checkpoints" / "dofa_base_patch16_224-a0275954.pth"
    target.parent.mkdir(parents=True)
    state = _same_shaped_checkpoint(target, "base", seed=3)
    torch.save(state, target)  # torchgeo's file holds a bare state dict
    model, info = build_dofa("base", "DOFA_MAE")
    assert info.weights == "DOFABase16_Weights.DOFA_MAE" and not info.random_weights
    k = "blocks.0.attn.qkv.weight"
    assert torch.equal(model.state_dict()[k], state[k])
    _, by_full_name = build_dofa("base", "DOFABase16_Weights.DOFA_MAE")  # torchgeo.models.get_weight's names too
    assert by_full_name == info


def test_unknown_enum_and_size():
    with pytest.raises(EcoalignInputError, match="unknown weights 'DOFA_XYZ'.*DOFA_MAE"):
        build_dofa("base", "DOFA_XYZ")
    with pytest.raises(EcoalignInputError, match="unknown weights 'DOFALarge16_Weights.DOFA_MAE' for DOFA-base"):
        build_dofa("base", "DOFALarge16_Weights.DOFA_MAE")  # another size's weights
    with pytest.raises(EcoalignInputError, match="no pretrained weights for DOFA-small"):
        build_dofa("small", "DOFA_MAE")
    with pytest.raises(EcoalignInputError, match="unknown DOFA size 'huge'"):
        build_dofa("huge", "none")
