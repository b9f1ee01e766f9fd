"""Validation and test metrics mean the same with 1 and 2 data-parallel processes (each sample counted once).

Two real processes (gloo), started here the way Ray Train starts its workers: each knows its rank from
its environment and Lightning joins them into one DDP group. The split has an odd number of images, so a
sampler that pads the last rank (as torch's DistributedSampler does) would count one image twice.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch.multiprocessing as mp

from mltrain import metrics
from mltrain.cluster.ports import free_port
from mltrain.config import TrainConfig

pytestmark = pytest.mark.integration

CONFIG = {"pretrained": False, "image_size": 64, "batch_size": 4, "engine": "lightning", "accelerator": "cpu"}


def _evaluate(rank: int, world_size: int, data_dir: str, out: str, port: int) -> None:
    import lightning.pytorch as pl
    from lightning.pytorch.strategies import DDPStrategy

    from mltrain.data.module import Food11Data
    from mltrain.engines.lightning.module import Food11DataModule, Food11Module

    os.environ.update(
        {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(world_size)}
        | {"NODE_RANK": "0", "LOCAL_RANK": str(rank), "RANK": str(rank)}
    )
    config = TrainConfig(**CONFIG)
    data = Food11Data(data_dir, config, progress=False).setup()
    module = Food11Module(config)  # seeded: the same weights in every process
    strategy = DDPStrategy(process_group_backend="gloo") if world_size > 1 else "auto"
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=world_size,
        strategy=strategy,
        use_distributed_sampler=False,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    datamodule = Food11DataModule(data)
    validated = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    tested = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    if rank == 0:
        Path(out).write_text(json.dumps({**validated, **tested}))


def _run(world_size: int, data: Path, out: Path) -> dict[str, float]:
    mp.spawn(_evaluate, args=(world_size, str(data), str(out), free_port()), nprocs=world_size, join=True)
    return json.loads(out.read_text())


@pytest.mark.timeout(300)
def test_val_and_test_metrics_are_the_same_on_one_and_two_processes(tiny_copy: Path, tmp_path: Path) -> None:
    extra = tiny_copy / "validation" / "class_03" / "extra.jpg"  # 23 validation images: uneven shards
    shutil.copy(next((tiny_copy / "training" / "class_03").iterdir()), extra)
    one = _run(1, tiny_copy, tmp_path / "one.json")
    two = _run(2, tiny_copy, tmp_path / "two.json")
    for key in (metrics.VAL_LOSS, metrics.VAL_ACCURACY, metrics.TEST_LOSS, metrics.TEST_ACCURACY):
        assert two[key] == pytest.approx(one[key], rel=1e-5), key
