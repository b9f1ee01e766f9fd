"""The model and the data as Lightning sees them: the shared model, loss, data path and metric names.

Nothing here knows where it runs (one process, DDP on one machine, Ray Train workers): the module logs
per-sample means that stay exact with any number of processes, and the data module asks the trainer for
this process's rank and gives it its share of every split.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassConfusionMatrix

from mltrain import metrics
from mltrain.config import NUM_CLASSES, TrainConfig
from mltrain.data.module import Food11Data
from mltrain.data.sampling import set_loader_epoch
from mltrain.data.transforms import to_model_input
from mltrain.engines.common import prepare_model
from mltrain.internals.lightning import epochs_processed
from mltrain.model import backbone, head

TRAIN, VAL, TEST = "train", "val", "test"
STAGE_METRICS = {
    TRAIN: (metrics.TRAIN_LOSS, metrics.TRAIN_ACCURACY),
    VAL: (metrics.VAL_LOSS, metrics.VAL_ACCURACY),
    TEST: (metrics.TEST_LOSS, metrics.TEST_ACCURACY),
}


class Food11Module(pl.LightningModule):
    """The shared model and loss as a LightningModule; each step adds to per-epoch loss and accuracy.

    Loss and accuracy are torchmetrics means weighted by batch size: at the end of an epoch they sum the
    totals and counts of every process before dividing, so each sample counts once even when processes
    hold different numbers of samples (a mean of per-process means would not). The test pass also counts a
    confusion matrix, summed over processes the same way (:attr:`test_confusion` after ``trainer.test``).

    Args:
        config: The resolved configuration.
    """

    def __init__(self, config: TrainConfig) -> None:
        super().__init__()
        self.config = config
        self.model = prepare_model(config)  # the same initial weights as the plain engine
        if config.compile:
            self.model.compile()  # in place: checkpoints keep the plain module's parameter names
        self.criterion = nn.CrossEntropyLoss()
        self.epoch_means = nn.ModuleDict({name: MeanMetric() for names in STAGE_METRICS.values() for name in names})
        self.test_pairs = MulticlassConfusionMatrix(num_classes=NUM_CLASSES)
        self.test_confusion: list[list[int]] | None = None
        """The last test pass's confusion matrix over all processes (rows: true class, columns: predicted)."""

    @property
    def backbone(self) -> nn.Module:
        """What BackboneFinetuning freezes and unfreezes (a property, so it is not registered twice)."""
        return backbone(self.model)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(inputs)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # Phase 1 as in the plain engine: Adam over the head at lr; TwoPhaseFinetuning adds the backbone.
        return torch.optim.Adam(head(self.model).parameters(), lr=self.config.lr)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, TRAIN)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, VAL)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, TEST)

    def on_test_epoch_start(self) -> None:
        self.test_pairs.reset()

    def on_test_epoch_end(self) -> None:
        # compute() sums every process's counts (a collective: every rank calls it here).
        self.test_confusion = self.test_pairs.compute().long().cpu().tolist()

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        images, labels = batch
        logits = self(to_model_input(images, self.device, channels_last=self.config.channels_last))
        loss = self.criterion(logits.float(), labels)
        accuracy = (logits.detach().argmax(dim=1) == labels).float().mean()
        count = labels.shape[0]
        if stage == TEST:
            self.test_pairs.update(logits.detach().argmax(dim=1), labels)
        for name, value in zip(STAGE_METRICS[stage], (loss.detach(), accuracy), strict=True):
            mean = self.epoch_means[name]
            assert isinstance(mean, MeanMetric)  # what __init__ put there (ModuleDict is typed as holding Modules)
            mean.update(value, count)
            self.log(name, mean, on_step=False, on_epoch=True)
        return loss


class Food11DataModule(pl.LightningDataModule):
    """Food11Data's loaders for this process: its rank's share, with samplers that derive from (seed, epoch).

    The trainer must run with ``use_distributed_sampler=False``: the loaders shard themselves (evaluation
    without padding, so no sample counts twice), and Lightning's ``set_epoch`` call selects the epoch.
    """

    def __init__(self, data: Food11Data) -> None:
        super().__init__()
        self.data = data

    def train_dataloader(self) -> DataLoader:
        loader = self.data.train_dataloader(*self._where())
        # Lightning creates the first epoch's iterator before its set_epoch call, and after a restore it uses
        # that iterator: the sampler must already be at the epoch the (restored) trainer is about to run.
        set_loader_epoch(loader, epochs_processed(self._trainer()))  # what Lightning passes
        return loader

    def val_dataloader(self) -> DataLoader:
        return self.data.val_dataloader(*self._where())

    def test_dataloader(self) -> DataLoader:
        return self.data.test_dataloader(*self._where())

    def _where(self) -> tuple[torch.device, int, int]:
        trainer = self._trainer()
        return trainer.strategy.root_device, trainer.global_rank, trainer.world_size

    def _trainer(self) -> pl.Trainer:
        if self.trainer is None:  # pragma: no cover - Lightning attaches the trainer before asking for loaders
            raise RuntimeError("the data module is not attached to a trainer")
        return self.trainer


def classifier(pl_module: pl.LightningModule) -> nn.Module:
    """The shared model inside a :class:`Food11Module` (what callbacks freeze, count, copy and checkpoint)."""
    model = pl_module.model
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a Food11Module, found a {type(pl_module).__name__}")
    return model
