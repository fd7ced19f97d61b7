"""Run configuration: one frozen dataclass per stage, loaded from TOML/YAML/JSON.

A configuration file has one table per stage (``[data]``, ``[preprocess]``, ``[patches]``,
``[augment]``, ``[model]``, ``[loss]``, ``[train]``, ``[infer]``,
``[evaluate]``); every key is optional and defaults to the values below.
Any value can be overridden from the command line with
``--set section.key=value`` (the value is parsed as YAML, so ``0.5``,
``[flair, t1]``, ``true`` and ``null`` all work).

The resolved configuration is written next to every output (``config.yaml``)
so that a run can be reproduced and inference normalises exactly as training.

Modules: :mod:`~lesionseg.config.vocabulary` (the choices every key accepts, the validators),
:mod:`~lesionseg.config.training_sections` and :mod:`~lesionseg.config.prediction_sections`
(one frozen dataclass per stage), :mod:`~lesionseg.config.sections` (:class:`Config`, checks
spanning two sections), :mod:`~lesionseg.config.loading` (files, overrides, saving).
Every public name is importable from :mod:`lesionseg.config`.
"""

from lesionseg.config.loading import (
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    parse_override,
    save_config,
)
from lesionseg.config.prediction_sections import EvaluateConfig, InferConfig
from lesionseg.config.sections import Config, check_patch_size, check_training_config
from lesionseg.config.training_sections import (
    AugmentConfig,
    DataConfig,
    LossConfig,
    ModelConfig,
    PatchConfig,
    PreprocessConfig,
    TrainConfig,
)
from lesionseg.config.vocabulary import (
    ACTIVATIONS,
    BLENDS,
    CONNECTIVITIES,
    CRITERIA,
    HEADS,
    MASK_VALUES,
    MAX_DEPTH,
    MIN_DEPTH,
    NORMALIZATIONS,
    NORMS,
    PRECISIONS,
    SCHEDULES,
    STRATEGIES,
    UPSAMPLINGS,
)

__all__ = [
    "ACTIVATIONS",
    "BLENDS",
    "CONNECTIVITIES",
    "CRITERIA",
    "HEADS",
    "MASK_VALUES",
    "MAX_DEPTH",
    "MIN_DEPTH",
    "NORMALIZATIONS",
    "NORMS",
    "PRECISIONS",
    "SCHEDULES",
    "STRATEGIES",
    "UPSAMPLINGS",
    "AugmentConfig",
    "Config",
    "DataConfig",
    "EvaluateConfig",
    "InferConfig",
    "LossConfig",
    "ModelConfig",
    "PatchConfig",
    "PreprocessConfig",
    "TrainConfig",
    "check_patch_size",
    "check_training_config",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "parse_override",
    "apply_overrides",
    "save_config",
]
