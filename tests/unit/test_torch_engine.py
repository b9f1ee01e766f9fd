from pathlib import Path

import torch

from mltrain.config import TrainConfig
from mltrain.engines import torch_engine

TINY = {"initial_epochs": 1, "total_epochs": 2, "pretrained": False, "image_size": 64, "batch_size": 16}


def test_early_stopping_keeps_the_best_weights_without_logging_a_model(tiny_data: Path, tmp_path: Path) -> None:
    from mltrain.data.module import Food11Data
    from mltrain.tracking import NullLogger

    config = TrainConfig(**{**TINY, "total_epochs": 10, "patience": 2})
    data = Food11Data(tiny_data, config, progress=False).setup()
    tracker = NullLogger()
    recipe = torch_engine.TorchRecipe(config, data, tracker, tmp_path, False, None)
    recipe._setup_phase(torch_engine.FINE_TUNE)
    kept = []
    for epoch, val_loss in enumerate([1.0, 0.8, 0.9, 0.7, 0.75, 0.76], start=1):
        with torch.no_grad():
            next(recipe.model.parameters()).add_(1.0)  # weights that differ from epoch to epoch
        recipe._track_best(epoch, val_loss)
        kept.append(recipe.best_weights)
    assert kept[0] is not kept[1] and kept[2] is kept[1] and kept[3] is not kept[2]  # copied on each improvement
    first = next(iter(kept[3].values()))
    assert torch.allclose(first, next(recipe.model.parameters()) - 2.0)  # epoch 4 weights, two steps back
    assert recipe.state.best_epoch == 4 and recipe.state.best_val_loss == 0.7
    assert recipe.state.stopped_early  # two epochs (5, 6) without improvement
