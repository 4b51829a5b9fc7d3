"""One rank of `test_hf_tensor_parallel`: load a saved model with transformers' own tensor
parallelism (`tp_plan="auto"`) and write its logits (rank 0) for the test to compare.

Run by torchrun: `torchrun --nproc_per_node 2 hf_tp_worker.py MODEL_DIR OUT_FILE`.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

import finetune.models  # noqa: F401  (registers the project's architectures)


def main(model_dir: str, out_file: str) -> None:
    config = AutoConfig.from_pretrained(model_dir)
    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    model = auto.from_pretrained(model_dir, tp_plan="auto").eval()
    ids = torch.arange(3, 19).reshape(2, 8) % config.vocab_size
    inputs = {"input_ids": ids}
    if config.is_encoder_decoder:
        inputs["decoder_input_ids"] = ids[:, :5]
    with torch.no_grad():
        logits = model(**inputs).logits
    if dist.get_rank() == 0:
        torch.save(logits, out_file)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
