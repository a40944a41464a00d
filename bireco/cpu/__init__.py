"""The CPU fast path: every speed trick bireco uses only when training on a CPU, behind one switch
(`trainer.cpu_fast_path`, on in `trainer=cpu` only) and applied for one run by `fast_path.CpuFastPath`:

- allocator.py  malloc keeps large freed buffers between steps
- dropout.py    LoRA dropout that draws the positions it drops
- attention.py  SDPA in fp32 while autograd records under bf16
- casts.py      bf16 copies of Linear weights made once per run or pass (`WeightCasts`, `run_with`)

GPU runs, evaluation and `bireco.encode` never use any of it.
"""
