"""The run schema, YAML loading and `--set` overrides."""

from finetune.config.data import (
    DataConfig,
    DatasetConfig,
    TokenizerConfig,
    TokenizerTrainConfig,
)
from finetune.config.loader import apply_override, dump_config, load_config, validate_config
from finetune.config.schema import (
    DistributedConfig,
    FullMethod,
    LoggingConfig,
    LoraMethod,
    ModelConfig,
    OutputConfig,
    QLoraMethod,
    RunConfig,
    TrainConfig,
)

__all__ = [
    "DataConfig",
    "DatasetConfig",
    "DistributedConfig",
    "FullMethod",
    "LoggingConfig",
    "LoraMethod",
    "ModelConfig",
    "OutputConfig",
    "QLoraMethod",
    "RunConfig",
    "TokenizerConfig",
    "TokenizerTrainConfig",
    "TrainConfig",
    "apply_override",
    "dump_config",
    "load_config",
    "validate_config",
]
