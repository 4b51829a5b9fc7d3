"""Build the DeepSpeed ops that finetune's runs load on this machine, ahead of the first run.

DeepSpeed compiles its C++ ops the first time a run needs them, into the torch extensions
cache (~/.cache/torch_extensions, or TORCH_EXTENSIONS_DIR): on CPU the shared-memory
allreduce (every multi-rank run), CPU Adam (optimizer offload), async I/O and pinned memory
(NVMe offload). That adds minutes to the start of a first run, on every node of a
multi-node job that does not share the cache, while the other nodes wait in a collective.
Run this once per machine or node image instead:

    python scripts/build_deepspeed_ops.py

It prints one line per op (built, already built, or skipped with the reason) and exits 1 if
an op this machine supports failed to build.
"""

from __future__ import annotations

import sys
import time

# DeepSpeed's builder names (its accelerator maps them to this machine's implementation)
OPS = ("ShareMemCommBuilder", "CPUAdamBuilder", "AsyncIOBuilder", "PinMemoryBuilder")


def main() -> int:
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    failed = 0
    for name in OPS:
        builder = accelerator.create_op_builder(name)
        if builder is None:
            print(f"{name}: skipped, not used on {accelerator.device_name()}", flush=True)
            continue
        if not builder.is_compatible(verbose=False):
            print(f"{name}: skipped, cannot be built here (`ds_report` says why)", flush=True)
            continue
        start = time.monotonic()
        try:
            builder.load(verbose=False)
        except Exception as err:  # report every op, then fail
            print(f"{name}: FAILED: {err}", flush=True)
            failed += 1
            continue
        print(f"{name}: ready ({time.monotonic() - start:.0f} s)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
