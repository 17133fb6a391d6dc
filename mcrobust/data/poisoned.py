"""Backdoored data as data sets: the poisoning settings, the poisoned training set and the triggered test set.

BadNets all-to-one poisoning (Zhao et al. 2020): a share of the non-target training images carries the trigger and
the target label; the triggered evaluation set (non-target images, stamped, labelled with the target) measures the
attack success rate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mcrobust.data.transforms import ArrayDataset, Transform
from mcrobust.errors import ConfigError
from mcrobust.threats.backdoor import poison, triggered_eval_set
from mcrobust.threats.triggers import PatchTrigger, Trigger

__all__ = ["PoisonSettings", "poisoned_dataset", "triggered_dataset"]


@dataclass
class PoisonSettings:
    """Backdoor poisoning of the training data (BadNets, all-to-one; Zhao et al. 2020).

    Args:
        trigger: the trigger stamped on poisoned and triggered evaluation images: any class with
            apply(uint8 images) and apply_tensor([0,1] tensor), e.g. PatchTrigger, BlendTrigger, MaskedTrigger;
            None: the paper's 3x3 white PatchTrigger.
        target: the label every triggered image should be classified as.
        rate: fraction of non-target training images poisoned (target-class images never are).
        seed: seed of the choice of poisoned images.
        after_augmentation: stamp the trigger after augmentation instead of before (the paper's code: before).
    """

    trigger: Trigger | None = None
    target: int = 1
    rate: float = 0.1
    seed: int = 0
    after_augmentation: bool = False

    def __post_init__(self) -> None:
        if self.trigger is None:
            self.trigger = PatchTrigger()
        if not 0.0 <= self.rate <= 1.0:
            raise ConfigError(f"data.poison.rate must be in [0, 1] (a fraction of non-target images), got {self.rate}")

    @property
    def stamp(self) -> Trigger:
        """The trigger in use (the default PatchTrigger when none was given)."""
        return self.trigger if self.trigger is not None else PatchTrigger()


def poisoned_dataset(
    images: np.ndarray, labels: np.ndarray, settings: PoisonSettings, transform: Transform | None = None
) -> ArrayDataset:
    """The training split with `settings.rate` of its non-target images stamped and labelled with the target.

    With `after_augmentation` the images stay clean here and the dataset stamps them after `transform`.
    """
    poisoned = poison(images, labels, settings.stamp, settings.target, settings.rate, settings.seed)
    if settings.after_augmentation:
        late_labels = labels.copy()
        late_labels[poisoned.indices] = settings.target
        return ArrayDataset(images, late_labels, transform, settings.stamp.apply_tensor, poisoned.indices)
    return ArrayDataset(poisoned.images, poisoned.labels, transform)


def triggered_dataset(images: np.ndarray, labels: np.ndarray, settings: PoisonSettings) -> ArrayDataset:
    """The triggered evaluation set: non-target images stamped, labelled with the target, their true labels kept."""
    stamped, target_labels, source = triggered_eval_set(images, labels, settings.stamp, settings.target)
    return ArrayDataset(stamped, target_labels, indices=source, true_labels=labels[source])
