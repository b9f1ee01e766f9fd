"""The performance levers stay correct on a CPU: loader sizing, mixed precision, channels_last.

(torch.compile is not exercised: compiling MobileNetV2 takes minutes on 2 CPUs and gave no speed-up.)

Speed itself is measured by `mltrain bench` (docs/PERFORMANCE.md), not asserted here. The CUDA-only
settings (pinned memory, many workers, autocast dtype) are checked for what they decide, and the
mixed-precision step runs on the CPU's autocast so the code path cannot silently break.
"""

from pathlib import Path

import pytest
import torch

from mltrain.config import TrainConfig
from mltrain.data.cache import available_cpus
from mltrain.data.module import Food11Data, LoaderPlan
from mltrain.data.transforms import IMAGENET_MEAN, IMAGENET_STD, to_model_input
from mltrain.engines.common import autocast_dtype
from mltrain.engines.torch_engine import TorchRecipe
from mltrain.tracking import NullLogger


def test_loader_plan_follows_the_device_and_the_cores() -> None:
    config = TrainConfig(pretrained=False)
    cores = available_cpus()
    cuda = LoaderPlan.for_device(config, torch.device("cuda"))
    assert cuda.pin_memory and cuda.workers == min(max(cores - 1, 1), 16) and cuda.prefetch_factor
    cpu = LoaderPlan.for_device(config, torch.device("cpu"))
    assert not cpu.pin_memory and cpu.workers == (1 if cores > 1 else 0)
    fixed = LoaderPlan.for_device(TrainConfig(pretrained=False, num_workers=0), torch.device("cuda"))
    assert fixed.workers == 0 and fixed.prefetch_factor is None


def test_precision_choice() -> None:
    assert autocast_dtype(TrainConfig(precision="auto"), torch.device("cpu")) is None
    assert autocast_dtype(TrainConfig(precision="32"), torch.device("cuda")) is None
    assert autocast_dtype(TrainConfig(precision="bf16"), torch.device("cpu")) == torch.bfloat16
    assert autocast_dtype(TrainConfig(precision="16"), torch.device("cuda")) == torch.float16


def test_model_input_is_normalised_in_the_requested_layout() -> None:
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    expected = (images.float() / 255 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(
        1, 3, 1, 1
    )
    fast = to_model_input(images, torch.device("cpu"), channels_last=True)
    assert fast.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fast, expected, rtol=1e-5, atol=1e-5)
    plain = to_model_input(images, torch.device("cpu"), channels_last=False)
    assert plain.is_contiguous()


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
