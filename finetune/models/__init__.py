"""The project's own transformer architectures, registered with transformers' Auto classes.

Importing this package registers three model types:

- `"decoder"`: `FinetuneDecoderConfig`, `FinetuneDecoderModel`, `FinetuneDecoderForCausalLM`,
  `FinetuneDecoderForSequenceClassification`
- `"encoder"`: `FinetuneEncoderConfig`, `FinetuneEncoderModel`, `FinetuneEncoderForMaskedLM`,
  `FinetuneEncoderForSequenceClassification`
- `"seq2seq"`: `FinetuneSeq2SeqConfig`, `FinetuneSeq2SeqModel`,
  `FinetuneSeq2SeqForConditionalGeneration`

so `AutoConfig.for_model("decoder", ...)`, `AutoModelForCausalLM.from_config(...)` and
`from_pretrained` work in-process. Saved folders carry the model code and an `auto_map`, so they
also load with `trust_remote_code=True` where `finetune` is not installed. This file is never
copied with a checkpoint: the modeling files must not depend on it.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
)

from .configuration_common import TransformerConfig
from .configuration_decoder import FinetuneDecoderConfig
from .configuration_encoder import FinetuneEncoderConfig
from .configuration_seq2seq import FinetuneSeq2SeqConfig
from .modeling_decoder import (
    FinetuneDecoderForCausalLM,
    FinetuneDecoderForSequenceClassification,
    FinetuneDecoderModel,
)
from .modeling_encoder import (
    FinetuneEncoderForMaskedLM,
    FinetuneEncoderForSequenceClassification,
    FinetuneEncoderModel,
)
from .modeling_seq2seq import FinetuneSeq2SeqForConditionalGeneration, FinetuneSeq2SeqModel

# Architecture name (as a run config names it) -> config class. The config's `model_type` is the
# same name, so `AutoConfig.for_model(name, **fields)` builds the same thing.
ARCHITECTURES: dict[str, type[TransformerConfig]] = {
    "decoder": FinetuneDecoderConfig,
    "encoder": FinetuneEncoderConfig,
    "seq2seq": FinetuneSeq2SeqConfig,
}

# (config class, [(Auto class, model class), ...]) for every registration below
_REGISTRATIONS = [
    (
        FinetuneDecoderConfig,
        [
            (AutoModel, FinetuneDecoderModel),
            (AutoModelForCausalLM, FinetuneDecoderForCausalLM),
            (AutoModelForSequenceClassification, FinetuneDecoderForSequenceClassification),
        ],
    ),
    (
        FinetuneEncoderConfig,
        [
            (AutoModel, FinetuneEncoderModel),
            (AutoModelForMaskedLM, FinetuneEncoderForMaskedLM),
            (AutoModelForSequenceClassification, FinetuneEncoderForSequenceClassification),
        ],
    ),
    (
        FinetuneSeq2SeqConfig,
        [
            (AutoModel, FinetuneSeq2SeqModel),
            (AutoModelForSeq2SeqLM, FinetuneSeq2SeqForConditionalGeneration),
        ],
    ),
]


def _register() -> None:
    for config_class, models in _REGISTRATIONS:
        # No exist_ok: should transformers ever ship one of these model types, fail loudly
        AutoConfig.register(config_class.model_type, config_class)
        config_class.register_for_auto_class()
        for auto_class, model_class in models:
            auto_class.register(config_class, model_class)
            # save_pretrained then copies the model code and writes auto_map (remote code)
            model_class.register_for_auto_class(auto_class.__name__)


_register()

__all__ = [
    "ARCHITECTURES",
    "FinetuneDecoderConfig",
    "FinetuneDecoderForCausalLM",
    "FinetuneDecoderForSequenceClassification",
    "FinetuneDecoderModel",
    "FinetuneEncoderConfig",
    "FinetuneEncoderForMaskedLM",
    "FinetuneEncoderForSequenceClassification",
    "FinetuneEncoderModel",
    "FinetuneSeq2SeqConfig",
    "FinetuneSeq2SeqForConditionalGeneration",
    "FinetuneSeq2SeqModel",
    "TransformerConfig",
]
