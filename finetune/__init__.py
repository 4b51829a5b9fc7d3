"""finetune: config-driven fine-tuning of Hugging Face models.

Importing the package registers the project's architectures (`decoder`, `encoder`,
`seq2seq`) with transformers' AutoConfig and AutoModel* classes.
"""

from finetune import models as _models  # noqa: F401  (registration with the Auto classes)

__version__ = "0.1.0"
