"""Mixup and CutMix of a training batch (`mixing=mixup` / `mixing=cutmix`), made on the batch's
device without a host sync.

Mixup (Zhang et al. 2018) blends every image with a partner, `lam * image + (1 - lam) *
partner`; CutMix (Yun et al. 2019) pastes a box of the partner into it, `lam` then being the
share of the image left as it was. The partner of image i is image n-1-i (the batch reversed,
as in timm: no extra random draw). The loss weighs the two labels by `lam`: `mixed_loss`.

Every draw happens on the device from a generator seeded by `seed`, and the choices (mix this
batch or not, mixup or cutmix, where the box goes) are tensor ops rather than Python branches,
so calling this in a training step queues work and never waits for the GPU.
"""

from collections.abc import Callable

import torch

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class BatchMix:
    """Mixes a batch with probability `prob`: by mixup with lam ~ Beta(mixup_alpha,
    mixup_alpha), by cutmix with a box of area (1 - lam) for lam ~ Beta(cutmix_alpha,
    cutmix_alpha), or, when both alphas are set, by cutmix with probability `switch_prob`.
    An alpha of 0 turns that kind off."""

    def __init__(
        self,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        seed: int = 0,
    ) -> None:
        for key, value in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
            if value < 0:
                raise ValueError(f"mixing.{key} must be >= 0 (0 turns it off), got {value}")
        if mixup_alpha == 0 and cutmix_alpha == 0:
            raise ValueError(
                "mixing.mixup_alpha and mixing.cutmix_alpha are both 0: set one, or choose "
                "mixing=none"
            )
        for key, value in (("prob", prob), ("switch_prob", switch_prob)):
            if not 0 <= value <= 1:
                raise ValueError(f"mixing.{key} is a probability, in [0, 1]; got {value}")
        self.mixup_alpha = float(mixup_alpha)
        self.cutmix_alpha = float(cutmix_alpha)
        self.prob = float(prob)
        self.switch_prob = float(switch_prob)
        self.seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}

    def _generator(self, device: torch.device) -> torch.Generator:
        """One generator per device (a CUDA draw needs a CUDA generator), each from `seed`."""
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[device]

    def _beta(self, alpha: float, device: torch.device) -> torch.Tensor:
        # torch.distributions.Beta samples through this same function, but takes no generator.
        concentration = torch.full((2,), alpha, device=device)
        return torch._sample_dirichlet(concentration, generator=self._generator(device))[0]

    def _cutmix_keep(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """A (height, width) map of 1 outside a random box and 0 inside it: the box has area
        (1 - lam) for lam ~ Beta(cutmix_alpha), centred anywhere and cut at the edges (so
        the true lam, the map's mean, can be larger)."""
        lam = self._beta(self.cutmix_alpha, device)
        centre = torch.rand(2, generator=self._generator(device), device=device)
        ratio = torch.sqrt(1 - lam)
        half_h = torch.floor(height * ratio).div(2, rounding_mode="floor")
        half_w = torch.floor(width * ratio).div(2, rounding_mode="floor")
        cy, cx = torch.floor(centre[0] * height), torch.floor(centre[1] * width)
        rows = torch.arange(height, device=device).unsqueeze(1)
        cols = torch.arange(width, device=device).unsqueeze(0)
        inside = (rows >= cy - half_h) & (rows < cy + half_h)
        inside = inside & (cols >= cx - half_w) & (cols < cx + half_w)
        return (~inside).float()

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mixed images, labels, the partners' labels, lam): lam is a 0-dim float tensor on
        the images' device, the weight of `labels` in the loss (1 for a batch left as it was)."""
        device = images.device
        height, width = images.shape[-2:]
        draws = torch.rand(2, generator=self._generator(device), device=device)
        apply = draws[0] < self.prob
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            lam_mixup = self._beta(self.mixup_alpha, device)
            cut_keep = self._cutmix_keep(height, width, device)
            use_cutmix = draws[1] < self.switch_prob
            keep = torch.where(use_cutmix, cut_keep, lam_mixup.expand(height, width))
            lam = torch.where(use_cutmix, cut_keep.mean(), lam_mixup)
        elif self.cutmix_alpha > 0:
            keep = self._cutmix_keep(height, width, device)  # per pixel, the image's weight
            lam = keep.mean()
        else:
            lam = self._beta(self.mixup_alpha, device)
            keep = lam.expand(height, width)
        keep = torch.where(apply, keep, 1.0)
        lam = torch.where(apply, lam, 1.0)
        # lerp is exact at its ends: weight 1 returns the image, 0 the partner, bit for bit.
        mixed = torch.lerp(images.flip(0), images, keep.to(images.dtype))
        return mixed, labels, labels.flip(0), lam


def mixed_loss(
    loss_fn: Loss,
    logits: torch.Tensor,
    labels_a: torch.Tensor,
    labels_b: torch.Tensor,
    lam: torch.Tensor,
) -> torch.Tensor:
    """The loss of a mixed batch: `lam` times the loss on the images' own labels plus `1 - lam`
    times the loss on their partners' (any loss of conf/loss, label smoothing included)."""
    return lam * loss_fn(logits, labels_a) + (1 - lam) * loss_fn(logits, labels_b)
