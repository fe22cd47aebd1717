"""Networks: forward/backward of both architectures, checkpoint round trips and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kidneyseg.config import Config, ModelConfig
from kidneyseg.errors import KidneysegError
from kidneyseg.models import build_model, load_checkpoint, read_checkpoint_meta, save_checkpoint
from kidneyseg.normalization import NormalizationRecord

NORM = NormalizationRecord("kidney", (0.0, 200.0), 80.0, 50.0)


@pytest.mark.parametrize(
    "model_cfg",
    [
        ModelConfig(architecture="unet_plain", base_channels=4, encoder_weights="none"),
        ModelConfig(architecture="unet_resnet34", encoder_weights="none"),
    ],
    ids=["unet_plain", "unet_resnet34"],
)
def test_forward_backward(model_cfg: ModelConfig) -> None:
    torch.manual_seed(0)
    model = build_model(model_cfg)
    x = torch.randn(2, 1, 32, 32)
    logits = model(x)
    assert logits.shape == (2, 1, 32, 32)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    cfg = Config(
        model=ModelConfig(architecture="unet_plain", base_channels=4, encoder_weights="none")
    )
    torch.manual_seed(1)
    model = build_model(cfg.model)
    # Move the BatchNorm running statistics away from their defaults so they must be stored.
    model.train()
    model(torch.randn(4, 1, 32, 32) * 3 + 1)
    model.eval()
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model, cfg, "kidney", NORM, extra={"epoch": 7, "val_loss": 0.25})
    loaded, meta = load_checkpoint(path)
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert not loaded.training
    assert meta.phase == "kidney" and meta.normalization == NORM
    assert (meta.extra["epoch"], meta.extra["val_loss"]) == (7, 0.25)
    assert meta.config == cfg
    assert read_checkpoint_meta(path).labels["2"] == "tumor"


def test_checkpoint_refusals(tmp_path: Path) -> None:
    with pytest.raises(KidneysegError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(KidneysegError, match="corrupt or unreadable"):
        load_checkpoint(junk)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(KidneysegError, match="not a kidneyseg checkpoint"):
        load_checkpoint(foreign)
    old = tmp_path / "old.safetensors"
    meta = {"format": "kidneyseg-checkpoint", "format_version": 99, "kidneyseg_version": "9"}
    save_file({"w": torch.zeros(2)}, str(old), metadata={"kidneyseg": json.dumps(meta)})
    with pytest.raises(KidneysegError, match="incompatible"):
        load_checkpoint(old)
    with pytest.raises(KidneysegError, match="encoder weights file not found"):
        build_model(ModelConfig(encoder_weights=str(tmp_path / "none.pth")))


def test_imagenet_weights_offline_gives_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import segmentation_models_pytorch.encoders as smp_encoders

    def offline(*args: object, **kwargs: object) -> str:
        raise OSError("[Errno 101] Network is unreachable")

    # smp fetches the ImageNet encoder through the Hugging Face hub; make that fail as offline.
    monkeypatch.setattr(smp_encoders, "hf_hub_download", offline)
    with pytest.raises(KidneysegError) as err:
        build_model(ModelConfig(encoder_weights="imagenet"))
    message = str(err.value)
    assert "\n" not in message
    assert "Pre-fetch" in message and "model.encoder_weights=none" in message


def test_local_encoder_weights_file(tmp_path: Path) -> None:
    import torchvision

    # An RGB ResNet34 state dict (as torchvision/timm save it) adapts to the 1-channel stem.
    rgb = torchvision.models.resnet34(weights=None).state_dict()
    path = tmp_path / "resnet34.pth"
    torch.save(rgb, path)
    model = build_model(ModelConfig(encoder_weights=str(path)))
    stem = model.encoder.state_dict()["conv1.weight"]
    torch.testing.assert_close(stem, rgb["conv1.weight"].sum(1, keepdim=True))
    torch.testing.assert_close(
        model.encoder.state_dict()["layer4.2.bn2.weight"], rgb["layer4.2.bn2.weight"]
    )
    with pytest.raises(KidneysegError, match="not found"):
        build_model(ModelConfig(encoder_weights=str(tmp_path / "missing.pth")))
    (tmp_path / "junk.pth").write_bytes(b"not a state dict")
    with pytest.raises(KidneysegError, match="cannot read encoder weights"):
        build_model(ModelConfig(encoder_weights=str(tmp_path / "junk.pth")))


def test_local_encoder_weights_for_context_channels(tmp_path: Path) -> None:
    """2.5D inputs (``model.in_channels = data.context_slices``): 3 channels take the RGB stem as
    it is; other counts cycle its filters scaled by 3 / channels, smp's rule for its ImageNet
    weights (before: the grey stem repeated, 5x the response for 5 channels)."""
    import torchvision

    rgb = torchvision.models.resnet34(weights=None).state_dict()
    path = tmp_path / "resnet34.pth"
    torch.save(rgb, path)
    three = build_model(ModelConfig(encoder_weights=str(path), in_channels=3))
    torch.testing.assert_close(three.encoder.state_dict()["conv1.weight"], rgb["conv1.weight"])
    five = build_model(ModelConfig(encoder_weights=str(path), in_channels=5))
    stem = five.encoder.state_dict()["conv1.weight"]
    torch.testing.assert_close(stem, rgb["conv1.weight"][:, [0, 1, 2, 0, 1]] * 3 / 5)
