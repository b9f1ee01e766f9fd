"""The performance levers in a short training on the CPU: bf16 autocast and the default memory layout."""

from pathlib import Path

import pytest
import torch

from mltrain.config import TrainConfig
from mltrain.data.module import Food11Data
from mltrain.engines.torch_engine import TorchRecipe
from mltrain.tracking import NullLogger

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    "overrides",
    [{"precision": "bf16"}, {"channels_last": False}],
    ids=["bf16-autocast", "default-layout"],
)
def test_fast_path_variants_train(tiny_data: Path, tmp_path: Path, overrides: dict) -> None:
    config = TrainConfig(
        initial_epochs=1, total_epochs=2, image_size=32, batch_size=16, pretrained=False, num_workers=0, **overrides
    )
    data = Food11Data(tiny_data, config, progress=False).setup()
    recipe = TorchRecipe(config, data, NullLogger(), tmp_path, progress=False, on_epoch_end=None)
    result = recipe.run()
    assert result.epochs_run == 2
    assert torch.isfinite(torch.tensor(result.test_loss)) and 0.0 <= result.test_accuracy <= 1.0
