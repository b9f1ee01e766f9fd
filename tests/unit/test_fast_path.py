"""The performance levers stay correct on a CPU: loader sizing, mixed precision, channels_last.

(torch.compile is not exercised: compiling MobileNetV2 takes minutes on 2 CPUs and gave no speed-up.)

Speed itself is measured by `mltrain bench` (docs/PERFORMANCE.md), not asserted here. The CUDA-only
settings (pinned memory, many workers, autocast dtype) are checked for what they decide, and the
mixed-precision step runs on the CPU's autocast so the code path cannot silently break (a short training:
tests/integration/test_fast_path.py).
"""

import torch

from mltrain.config import TrainConfig
from mltrain.data.cache import available_cpus
from mltrain.data.module import LoaderPlan
from mltrain.data.transforms import IMAGENET_MEAN, IMAGENET_STD, to_model_input
from mltrain.engines.common import autocast_dtype


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
