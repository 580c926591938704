"""Launched by tests/test_distributed.py with torchrun: a few steps of each stage on 2 CPU processes (gloo).

After every step the full parameter vector of every network is all-gathered and the ranks are
compared; rank 0 writes the final parameters and the per-step verdicts for the test to check.
"""

import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from dist_stages import STEPS, build, flat
from safetensors.torch import save_file


def main() -> None:
    out = Path(sys.argv[1])
    acc = Accelerator(cpu=True)
    report = {"world": acc.num_processes}
    for stage in ("tom", "ae", "gan"):
        _, step, modules = build(stage, acc)
        same = []
        for i in range(1, STEPS + 1):
            step(i)
            vec = torch.cat([t.flatten().float() for t in flat(modules()).values()])
            everyone = acc.gather(vec[None])
            same.append(bool((everyone == everyone[0]).all()))
        report[stage] = same
        if acc.is_main_process:
            save_file(flat(modules()), str(out / f"{stage}.safetensors"))
    if acc.is_main_process:
        (out / "report.json").write_text(json.dumps(report))
    acc.wait_for_everyone()
    acc.end_training()  # destroys the gloo group: left to interpreter exit, it can abort the process


if __name__ == "__main__":
    main()
