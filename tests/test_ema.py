"""The EMA callback: validation, the test and checkpoints see the average; a resumed fit
continues both the training weights and the average; an update makes no host sync."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.trainer.states import TrainerFn
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics import MaxMetric

from fer_lab.training.checkpoint_io import load_checkpoint
from fer_lab.training.ema import CHECKPOINT_KEY, EMAWeights, averaged_tensors

from .accelerator import host_syncs, module_to_accelerator
from .helpers import compose_config

DECAY = 0.6
STEPS_PER_EPOCH = 4
Weights = dict[str, torch.Tensor]


def snapshot(module: nn.Module) -> Weights:
    return {name: tensor.clone() for name, tensor in averaged_tensors(module)}


class Recorder(pl.LightningModule):
    """A small net with batch norm and a persistent metric state, recording the weights it
    trains from, those after each step, and those validation and the test run with."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
        self.best = MaxMetric()
        self.best.persistent(True)
        self.before_step: list[Weights] = []
        self.after_step: list[Weights] = []
        self.in_validation: list[Weights] = []
        self.in_test: list[Weights] = []

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        return F.cross_entropy(self.net(images), labels)

    def on_train_batch_start(self, batch: object, batch_idx: int) -> None:
        self.before_step.append(snapshot(self))

    def on_train_batch_end(self, outputs: object, batch: object, batch_idx: int) -> None:
        self.after_step.append(snapshot(self))

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        self.in_validation.append(snapshot(self))
        accuracy = (self.net(batch[0]).argmax(1) == batch[1]).float().mean()
        self.best.update(accuracy)
        self.log("val/acc", accuracy)

    def test_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        self.in_test.append(snapshot(self))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.5)


def loader() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(4 * STEPS_PER_EPOCH, 3, generator=generator)
    labels = torch.randint(0, 2, (4 * STEPS_PER_EPOCH,), generator=generator)
    return DataLoader(TensorDataset(images, labels), batch_size=4)


def fit(
    module: Recorder, folder: Path, epochs: int, ckpt_path: Path | None = None
) -> tuple[EMAWeights, pl.Trainer]:
    ema = EMAWeights(decay=DECAY, warmup=False)
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=1,
        limit_val_batches=1,
        callbacks=[ema, ModelCheckpoint(dirpath=folder, save_last=True, monitor=None)],
    )
    trainer.fit(module, loader(), loader(), ckpt_path=ckpt_path)
    return ema, trainer


def averaged(start: Weights, steps: list[Weights]) -> Weights:
    """The EMA of `steps` from `start`, computed the plain way."""
    average = {name: value.clone() for name, value in start.items()}
    for weights in steps:
        for name in average:
            average[name] = DECAY * average[name] + (1 - DECAY) * weights[name]
    return average


def assert_same(actual: Weights, expected: Weights) -> None:
    assert actual.keys() == expected.keys()
    for name in actual:
        torch.testing.assert_close(actual[name], expected[name], msg=name)


@pytest.fixture
def trained(tmp_path: Path) -> tuple[Recorder, Weights, EMAWeights, pl.Trainer]:
    torch.manual_seed(0)
    module = Recorder()
    initial = snapshot(module)
    return module, initial, *fit(module, tmp_path, epochs=2)


def test_validation_runs_on_the_average_and_training_on_the_weights(trained) -> None:
    module, initial, _, _ = trained
    sanity, first, second = module.in_validation
    assert_same(sanity, initial)
    assert_same(first, averaged(initial, module.after_step[:STEPS_PER_EPOCH]))
    assert_same(second, averaged(initial, module.after_step))
    # The second epoch trained on from the first epoch's last weights, not from the average.
    assert_same(module.before_step[STEPS_PER_EPOCH], module.after_step[STEPS_PER_EPOCH - 1])
    last_weights = module.after_step[STEPS_PER_EPOCH - 1]["net.0.weight"]
    assert not torch.equal(first["net.0.weight"], last_weights)
    assert_same(snapshot(module), second)  # after fit the module is the average


def test_checkpoint_holds_the_average_and_the_test_scores_it(trained, tmp_path: Path) -> None:
    module, initial, ema, trainer = trained
    saved = load_checkpoint(tmp_path / "last.ckpt")
    average = averaged(initial, module.after_step)
    assert_same({name: saved["state_dict"][name] for name in average}, average)
    assert_same(saved[CHECKPOINT_KEY]["training_weights"], module.after_step[-1])
    assert saved[CHECKPOINT_KEY]["updates"] == ema.updates == 2 * STEPS_PER_EPOCH
    assert saved["state_dict"]["best.max_value"] == module.best.max_value  # not averaged

    trainer.test(module, loader(), ckpt_path=tmp_path / "last.ckpt", verbose=False)
    assert_same(module.in_test[0], average)


def test_a_resumed_fit_continues_the_weights_and_the_average(trained, tmp_path: Path) -> None:
    module, initial, _, _ = trained
    resumed = Recorder()
    ema, _ = fit(resumed, tmp_path / "resumed", epochs=3, ckpt_path=tmp_path / "last.ckpt")
    assert_same(resumed.before_step[0], module.after_step[-1])
    expected = averaged(averaged(initial, module.after_step), resumed.after_step)
    assert_same(resumed.in_validation[-1], expected)
    assert ema.updates == 3 * STEPS_PER_EPOCH


def test_an_update_and_the_swap_make_no_host_sync() -> None:
    module = module_to_accelerator(Recorder())
    ema = EMAWeights(decay=0.9)
    trainer = SimpleNamespace(global_step=0, state=SimpleNamespace(fn=TrainerFn.FITTING))
    ema.on_fit_start(trainer, module)
    with host_syncs() as syncs:
        for step in range(1, 4):
            trainer.global_step = step
            ema.on_train_batch_end(trainer, module, None, None, step - 1)
        ema.on_validation_epoch_start(trainer, module)
        ema.on_validation_epoch_end(trainer, module)
    assert syncs == []
    assert ema.updates == 3


def test_warmup_lowers_the_first_decays() -> None:
    ema = EMAWeights(decay=0.999)
    assert ema.current_decay() == pytest.approx(0.1)
    ema.updates = 90
    assert ema.current_decay() == pytest.approx(0.91)
    ema.updates = 10**6
    assert ema.current_decay() == 0.999
    assert EMAWeights(decay=0.5, warmup=False).current_decay() == 0.5


def test_config_selects_the_callback_and_checks_the_decay() -> None:
    cfg = compose_config("dataset=synthetic", "callbacks=[early_stopping,ema]")
    assert {"model_checkpoint", "early_stopping", "ema"} <= set(cfg.callbacks)
    ema = instantiate(cfg.callbacks.ema)
    assert isinstance(ema, EMAWeights) and ema.decay == 0.999 and ema.warmup
    with pytest.raises(ValueError, match=r"callbacks\.ema\.decay"):
        EMAWeights(decay=1.0)
