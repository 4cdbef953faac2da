"""Organism CLIP encoders: open_clip architectures, local checkpoints in every format, save/load, clear errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ecoalign.core.errors import EcoalignInputError
from ecoalign.encoders.organism import OrganismEncoder, load_organism_encoder

TINY = "open_clip:ecoalign-tiny-vit"


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return load_organism_encoder(TINY)


@pytest.fixture(scope="module")
def photos():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)) for _ in range(5)]


def test_random_tiny_encoder_embeds_and_says_random(tiny, photos, tmp_path):
    assert tiny.random_weights and "RANDOM" in repr(tiny)
    ident = tiny.identity()
    assert ident["kind"] == "organism_clip" and ident["random_weights"] and ident["weights_sha256"] is None
    z = tiny.embed(photos, batch_size=2)
    t = tiny.embed_text(["a photo of Corvus corax.", "a photo of Pica pica.", "a photo of Corvus corax."])
    assert z.shape == (5, 64) and t.shape == (3, 64) and z.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(t[0], t[2], atol=1e-6)
    assert not np.allclose(t[0], t[1])
    paths = []
    for i, im in enumerate(photos[:2]):
        paths.append(tmp_path / f"p{i}.png")
        im.save(paths[-1])
    np.testing.assert_allclose(tiny.embed(paths), z[:2], atol=1e-5)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(EcoalignInputError, match="broken.jpg.*unreadable image"):
        tiny.embed([tmp_path / "broken.jpg"])


@pytest.mark.parametrize("form", ["pt_wrapped", "bin", "safetensors"])
def test_local_checkpoint_forms_load_the_same_weights(tiny, photos, tmp_path, form):
    state = tiny.model.state_dict()
    if form == "pt_wrapped":  # what open_clip_train writes under DDP: {'state_dict': {'module.xxx': ...}, 'epoch'}
        path = tmp_path / "epoch_3.pt"
        torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    elif form == "bin":
        path = tmp_path / "open_clip_pytorch_model.bin"
        torch.save(state, path)
    else:
        from safetensors.torch import save_file

        path = tmp_path / "model.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    enc = load_organism_encoder(TINY, weights=path)
    assert not enc.random_weights and enc.info["weights_sha256"] and "RANDOM" not in repr(enc)
    np.testing.assert_allclose(enc.embed(photos), tiny.embed(photos), atol=1e-5)


def test_bad_names_and_checkpoints_raise_clear_errors(tiny, tmp_path):
    with pytest.raises(EcoalignInputError, match="unknown open_clip architecture 'ViT-B-33'.*ViT-B-32"):
        load_organism_encoder("open_clip:ViT-B-33")
    with pytest.raises(EcoalignInputError, match="checkpoint file not found"):
        load_organism_encoder(TINY, weights=tmp_path / "nope.pt")
    ckpt = tmp_path / "tiny.pt"
    torch.save(tiny.model.state_dict(), ckpt)
    with pytest.raises(EcoalignInputError, match=r"does not fit architecture 'ecoalign-small-vit'.*differ in shape.*"
                                                 r"\(64, 64\) in checkpoint vs \(64, 128\) in model"):
        load_organism_encoder("open_clip:ecoalign-small-vit", weights=ckpt)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(ckpt.read_bytes()[:5000])
    with pytest.raises(EcoalignInputError, match="truncated.pt: cannot read checkpoint"):
        load_organism_encoder(TINY, weights=truncated)
    with pytest.raises(EcoalignInputError, match="unknown organism encoder"):
        load_organism_encoder("bioclipp")
    with pytest.raises(EcoalignInputError, match="holds no organism encoder"):
        load_organism_encoder(tmp_path)


def test_hub_offline_says_where_to_put_the_files(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: offline, whatever the machine
    with pytest.raises(EcoalignInputError, match=r"imageomics/bioclip.*not reachable.*open_clip_config\.json.*"
                                                 r"local-dir:"):
        load_organism_encoder("bioclip")


def test_save_load_roundtrip_local_dir_and_tampering(tiny, photos, tmp_path):
    import ecoalign

    run = tmp_path / "run"
    tiny.save(run / "encoder")
    meta = json.loads((run / "encoder" / "organism_encoder.json").read_text())
    assert meta["info"]["random_weights"] is True  # saving does not launder a random model
    for name in (run, run / "encoder", f"local-dir:{run / 'encoder'}"):
        enc = load_organism_encoder(name)
        assert isinstance(enc, OrganismEncoder)
        np.testing.assert_allclose(enc.embed(photos), tiny.embed(photos), atol=1e-5)
    via_registry = ecoalign.load_encoder(run)
    assert isinstance(via_registry, OrganismEncoder) and via_registry.embed_dim == 64

    import open_clip  # the saved folder is a plain open_clip local-dir as well

    model = open_clip.create_model(f"local-dir:{run / 'encoder'}")
    x = tiny.image_tensor(photos)
    with torch.inference_mode():
        np.testing.assert_allclose(model.encode_image(x, normalize=True).numpy(), tiny.embed(x), atol=1e-5)

    with pytest.raises(EcoalignInputError, match="cannot be combined"):
        load_organism_encoder(run, weights=tmp_path / "x.pt")
    weights = run / "encoder" / "open_clip_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(EcoalignInputError, match="weights changed since saving"):
        load_organism_encoder(run)
    weights.unlink()
    with pytest.raises(EcoalignInputError, match="encoder weights missing"):
        load_organism_encoder(run)
    with pytest.raises(EcoalignInputError, match="holds no weights"):
        load_organism_encoder(f"local-dir:{run / 'encoder'}")
    with pytest.raises(EcoalignInputError, match="lacks its config"):
        load_organism_encoder(f"local-dir:{tmp_path}")


def test_open_clip_random_init_warning_is_not_shown(tmp_path, caplog):
    """open_clip warns on the root logger that a model built without `pretrained` is random, before a missing
    checkpoint is reported and when our own checkpoint is loaded into it; ecoalign reports random weights itself."""
    import logging

    with caplog.at_level(logging.WARNING):
        with pytest.raises(EcoalignInputError, match="checkpoint file not found"):
            load_organism_encoder(TINY, weights=tmp_path / "nope.pt")
        enc = load_organism_encoder(TINY)
        logging.getLogger().warning("No pretrained weights loaded: a root warning after ours still shows")
    assert enc.random_weights and caplog.text.count("No pretrained weights loaded") == 1
