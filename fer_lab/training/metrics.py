"""What a training, validation or test epoch accumulates, in one device tensor each.

Why not torchmetrics objects logged with `self.log` on every step: each such update and log is
host work (about 1 ms a step measured through Lightning), and on a GPU that host time, not the
network, bounds a small-image step. Here a step queues a dozen tensor ops and returns; the host
reads the sums (one sync) at the logging interval and at the epoch's end.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor

# TrainingTally.state: the epoch's sums, then the first non-finite loss of the run.
LOSS, CORRECT, REG, IMAGES, BATCHES, STEP, SEEN, BAD_LOSS, BAD_BATCH, BAD_STEP = range(10)


class TrainingTally:
    """The training epoch's data-loss sum, correct predictions, regularisation sum, images and
    batches, the optimizer step, and the first non-finite loss with its batch and step, all
    in one tensor on the loss's device. `add` makes no host sync and runs the same ops with the
    same shapes on every step of a given batch size (what a CUDA graph replays)."""

    def __init__(self, like: Tensor, first_step: int = 0) -> None:
        """State made with `like.new_*` (on its device, no host-to-device copy, which syncs)."""
        self.state = like.new_zeros(10, dtype=torch.float32)
        self.state[STEP].fill_(first_step)
        self._one, self._zero = self.state.new_ones(()), self.state.new_zeros(())
        self._counts: dict[int, tuple[Tensor, Tensor]] = {}

    def _per_batch(self, n: int) -> tuple[Tensor, Tensor]:
        """([n, 1, n] weights of loss, correct, reg; [n, 1, 1] added to images, batches, step)."""
        if n not in self._counts:
            weights = self.state.new_full((3,), float(n))
            weights[CORRECT].fill_(1)
            counts = self.state.new_ones(3)
            counts[0].fill_(n)
            self._counts[n] = (weights, counts)
        return self._counts[n]

    def add(self, loss: Tensor, logits: Tensor, labels: Tensor, reg: Tensor | None) -> None:
        """One batch: `loss` its mean data loss, `reg` the regularisation term (or None)."""
        weights, counts = self._per_batch(labels.shape[0])
        loss = loss.detach().float()
        correct = (logits.detach().argmax(1) == labels).sum(dtype=torch.float32)
        reg = self._zero if reg is None else reg.detach().float()
        s = self.state
        first_bad = ((loss - loss) != 0) & (s[SEEN] == 0)  # NaN or inf, in two ops
        record = torch.stack([self._one, loss, s[BATCHES], s[STEP]])
        s[SEEN:] = torch.where(first_bad, record, s[SEEN:])
        s[LOSS : REG + 1] += torch.stack([loss, correct, reg]) * weights
        s[IMAGES : STEP + 1] += counts

    def start_epoch(self) -> None:
        self.state[: BATCHES + 1].zero_()

    def means(self, sums: list[float]) -> dict[str, float]:
        """train/loss, train/acc and train/reg_loss from (possibly all-reduced) sums."""
        images = max(sums[IMAGES], 1.0)
        return {
            "train/loss": sums[LOSS] / images,
            "train/acc": sums[CORRECT] / images,
            "train/reg_loss": sums[REG] / images,
        }


class EvaluationTally:
    """A validation or test epoch: data-loss sum, images and the confusion matrix (true rows,
    predicted columns), from which accuracy and every F1/precision/recall follow."""

    def __init__(self, classes: int, like: Tensor) -> None:
        self.classes = classes
        self.sums = like.new_zeros(2, dtype=torch.float32)  # loss * images, images
        self.confusion = like.new_zeros(classes * classes, dtype=torch.float32)

    def add(self, loss: Tensor, logits: Tensor, labels: Tensor) -> None:
        n = labels.shape[0]
        cells = labels * self.classes + logits.argmax(1)
        self.confusion.index_add_(0, cells, torch.ones_like(cells, dtype=self.confusion.dtype))
        self.sums += torch.stack([loss.detach().float() * n, self.sums.new_full((), n)])

    def reset(self) -> None:
        self.sums.zero_()
        self.confusion.zero_()


def confusion_scores(confusion: Tensor) -> dict[str, Tensor]:
    """acc and f1_macro of a [C, C] confusion matrix, as torchmetrics' micro accuracy and macro
    F1 define them (classes neither present nor predicted do not count in the macro mean)."""
    per_class = per_class_scores(confusion)
    tp, support, predicted = per_class["tp"], confusion.sum(1), confusion.sum(0)
    counted = (support + predicted) > 0
    f1_macro = (per_class["f1"] * counted).sum() / counted.sum().clamp(min=1)
    return {"acc": tp.sum() / confusion.sum().clamp(min=1), "f1_macro": f1_macro}


def per_class_scores(confusion: Tensor) -> dict[str, Tensor]:
    """Per-class tp, precision, recall and F1 (0 where undefined, as torchmetrics)."""
    tp = confusion.diagonal()
    support, predicted = confusion.sum(1), confusion.sum(0)

    def ratio(a: Tensor, b: Tensor) -> Tensor:
        return torch.where(b > 0, a / b.clamp(min=1e-12), torch.zeros_like(a))

    return {
        "tp": tp,
        "precision": ratio(tp, predicted),
        "recall": ratio(tp, support),
        "f1": ratio(2 * tp, support + predicted),
    }
