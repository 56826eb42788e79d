"""Run a script under `accelerate launch --config_file <an FSDP config>` with Accelerate's FSDP path taken on CPU
processes (gloo), for the tests: `accelerate launch ... tests/helpers_fsdp_cpu.py SCRIPT [ARGS...]` (with
`--use_cpu` among the script's `TrainingArguments`).

Torch's FSDP (version 1, `FullyShardedDataParallel` with `device_id=cpu`, and version 2, `fully_shard`) trains on CPU
processes over gloo. Accelerate 1.16 never applies an FSDP config there: `PartialState` sets up CPU processes as
`MULTI_CPU`, and `AcceleratorState` takes its FSDP branch only for accelerator devices, so the run silently becomes
DDP (docs/training.md). Two changes, in this process only, make the FSDP code of Accelerate, transformers and
hf_lime run as it does on GPUs:

1. CPU processes are reported as `MULTI_GPU` (on the `cpu` device) while `AcceleratorState` is set up, so it takes
   its FSDP branch;
2. FSDP1's `FlatParamHandle.to_cpu()` (the `offload_to_cpu=True` that Accelerate always asks for when it gathers a
   full state dict) is a no-op when the parameters already live on the CPU: there the `.to("cpu")` copies nothing
   and the handle frees the storage the state dict still points to (a use-after-free: rank 0 dies with SIGSEGV in
   `model.state_dict()`; Lightning-AI/pytorch-lightning#21804 describes the same bug).
"""

from __future__ import annotations

import contextlib
import runpy
import sys

import torch
from accelerate.state import PartialState
from accelerate.utils import DistributedType
from torch.distributed.fsdp._flat_param import FlatParamHandle


def _fsdp_on_cpu() -> None:
    set_up = PartialState.__init__

    def init(self, *args, **kwargs):
        set_up(self, *args, **kwargs)
        if self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.MULTI_GPU
            self.device = torch.device("cpu")  # FSDP1 compares `device_id` with "cpu", not Accelerate's "cpu:0"

    PartialState.__init__ = init

    to_cpu = FlatParamHandle.to_cpu

    def to_cpu_unless_there(self):
        return contextlib.nullcontext() if self.device.type == "cpu" else to_cpu(self)

    FlatParamHandle.to_cpu = to_cpu_unless_there


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit("usage: accelerate launch --config_file CONFIG tests/helpers_fsdp_cpu.py SCRIPT [ARGS...]")
    _fsdp_on_cpu()
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
