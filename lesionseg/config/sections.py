"""The whole configuration, one section per stage, and the checks that span two sections."""

from __future__ import annotations

from dataclasses import dataclass, field

from lesionseg.config.prediction_sections import EvaluateConfig, InferConfig
from lesionseg.config.training_sections import (
    AugmentConfig,
    DataConfig,
    LossConfig,
    ModelConfig,
    PatchConfig,
    PreprocessConfig,
    TrainConfig,
)
from lesionseg.errors import LesionsegError


@dataclass(frozen=True)
class Config:
    """The whole configuration, one section per stage."""

    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    patches: PatchConfig = field(default_factory=PatchConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)

    def __post_init__(self) -> None:
        if self.patches.hard_fraction > 0 and self.patches.hard_channel not in self.data.channels:
            raise LesionsegError(
                f"config patches.hard_channel: must be one of data.channels ({', '.join(self.data.channels)}), "
                f"got {self.patches.hard_channel!r}"
            )
        if self.model.kind == "threshold" and self.model.threshold_channel not in self.data.channels:
            raise LesionsegError(
                f"config model.threshold_channel: must be one of data.channels ({', '.join(self.data.channels)}), "
                f"got {self.model.threshold_channel!r}"
            )


def check_training_config(config: Config) -> None:
    """The checks that involve two sections and matter only to ``train``: the patch fits the U-Net.

    ``lesionseg train`` calls this right after loading, before the backend starts.
    """
    check_patch_size(config.patches.size, config.model.depth)


def check_patch_size(patch_size: tuple[int, ...], depth: int) -> None:
    """Raise :class:`LesionsegError` unless every side is a positive multiple of 2**depth."""
    factor = 2**depth
    sizes = tuple(patch_size)
    if len(sizes) != 3 or any(int(s) != s or s <= 0 or s % factor for s in sizes):
        nearest = tuple(max(factor, factor * round(s / factor)) for s in sizes[:3])
        raise LesionsegError(
            f"patch size {sizes} must be 3 positive multiples of 2**depth = {factor} "
            f"(model.depth = {depth}), e.g. {nearest}"
        )
