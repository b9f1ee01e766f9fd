from pathlib import Path

import pytest
import torch

from mltrain.config import TrainConfig
from mltrain.errors import ConfigError
from mltrain.model import WEIGHTS, build_model, count_trainable, set_backbone_trainable

HEAD_PARAMS = 1280 * 11 + 11


def test_output_shape_any_batch_and_size() -> None:
    model = build_model(TrainConfig(pretrained=False)).eval()
    for shape in [(1, 3, 64, 64), (3, 3, 96, 128)]:
        assert model(torch.zeros(shape)).shape == (shape[0], 11)


def test_trainable_params_per_phase() -> None:
    model = build_model(TrainConfig(pretrained=False))
    total = sum(p.numel() for p in model.parameters())
    set_backbone_trainable(model, False)
    assert count_trainable(model) == HEAD_PARAMS
    set_backbone_trainable(model, True)
    assert count_trainable(model) == total
    assert total > 2_000_000


def test_head_is_dropout_then_linear() -> None:
    model = build_model(TrainConfig(pretrained=False, dropout_probability=0.3))
    dropout, linear = model.classifier
    assert isinstance(dropout, torch.nn.Dropout) and dropout.p == pytest.approx(0.3)
    assert isinstance(linear, torch.nn.Linear) and (linear.in_features, linear.out_features) == (1280, 11)


def test_pretrained_offline_says_how_to_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setattr(WEIGHTS.value, "url", "http://127.0.0.1:9/mobilenet_v2-7ebf99e0.pth")
    with pytest.raises(ConfigError) as err:
        build_model(TrainConfig(pretrained=True))
    message = str(err.value)
    assert "pretrained=false" in message
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "mobilenet_v2-7ebf99e0.pth") in message


def test_pretrained_from_placed_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A weights file placed where the error message says is used without any network access.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    from torchvision.models import mobilenet_v2

    reference = mobilenet_v2(weights=None)
    with torch.no_grad():
        reference.features[0][0].weight.fill_(0.125)
    filename = WEIGHTS.url.rsplit("/", 1)[-1]
    target = tmp_path / "torch" / "hub" / "checkpoints" / filename
    target.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), target)
    monkeypatch.setattr(WEIGHTS.value, "url", f"http://127.0.0.1:9/{filename}")
    model = build_model(TrainConfig(pretrained=True))
    assert torch.all(model.features[0][0].weight == 0.125)
