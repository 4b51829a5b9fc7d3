"""What a run leaves in its output directory, by name: one place for training, resume, eval,
merge and push to agree on. Light on purpose (no torch, no transformers): `finetune push`
reads a run through these names without loading either.
"""

from __future__ import annotations

from pathlib import Path

RUN_CONFIG = "run_config.yaml"  # the resolved config the run was started with
METRICS = "metrics.jsonl"  # one JSON object per logged step and evaluation
RUN_INFO = "run_info.json"  # written last: its presence means the run finished
CHECKPOINTS = "checkpoints"  # checkpoint-STEP/ directories
CHECKPOINT_MANIFEST = "finetune_complete"  # in a checkpoint: its files, sizes and checksums
BASE_MODEL = "base_model"  # the random base of an adapter trained on a new model
MERGED = "merged"  # the adapter merged into its base (train.merge_adapter)
TENSORBOARD = "tensorboard"
LOSS_CURVE = "loss_curve.png"  # drawn for the model card when pushing
CARD = "README.md"  # the model card

# The final model is saved in STAGING first. Once every file is written, STAGED (inside
# it) lists them, and only then are they moved into the output directory; a save cut short
# before STAGED exists is discarded, one cut during the move is finished by the next run
# that takes the directory.
STAGING = ".saving"
STAGED = ".staged.json"

# The files of a saved model (weights, shards, their index, config, adapter); a new final
# save removes those of the earlier one that it does not write again.
MODEL_FILE_PATTERNS = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model*.bin",
    "pytorch_model.bin.index.json",
    "adapter_config.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
)


def save_being_moved(path: Path) -> bool:
    """Whether `path` holds a complete final save whose move into place has not finished (a
    run is moving it, or was killed doing so): its model files may then be a mix of two
    saves. `finetune train --resume` on the run finishes the move."""
    return (path / STAGING / STAGED).is_file()
