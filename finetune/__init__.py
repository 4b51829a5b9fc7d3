"""finetune: config-driven fine-tuning of Hugging Face models.

Importing the package is cheap (no torch, no transformers), so commands that need neither,
such as `finetune push` and `finetune validate`'s early checks, start at once. Importing
`finetune.models` registers the project's architectures (`decoder`, `encoder`, `seq2seq`)
with transformers' AutoConfig and AutoModel* classes; every part of finetune that builds or
loads a model does so first.
"""

__version__ = "0.1.0"
