"""Launched by tests/test_data_feed.py with torchrun: which pairs each rank decodes.

Every rank trains the tiny auto-encoder of ``dist_stages`` for a few steps on a manifest's files,
counting every image and sketch it decodes; rank r writes ``decodes_r.json`` and rank 0 the final
weights.
"""

import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from dist_stages import STEPS, flat, tiny_ae_config
from safetensors.torch import save_file

from sketch2image.data import paired
from sketch2image.data.paired import PairedFiles
from sketch2image.train.ae import AETrainer


def run(manifest: Path, acc: Accelerator) -> tuple[list[dict], dict]:
    """Per step, the (index, sketches) this process decoded and its rows; the final weights."""
    decoded: list[list] = []
    load = PairedFiles.load

    def counting(self, i, picks):
        decoded.append([i, list(picks)])
        return load(self, i, picks)

    PairedFiles.load = counting
    data = PairedFiles(paired.PairIndex.scan(manifest, 32))
    cfg = tiny_ae_config()
    cfg.num_workers = 0  # decodes happen in this process, where they are counted
    trainer = AETrainer(cfg, data, acc)
    plans = []
    for step in range(1, STEPS + 1):
        n = len(decoded)
        trainer.step(step)
        rec, cls = trainer.rec_rows, trainer.cls_rows
        plans.append({"decoded": decoded[n:], "rows": [rec.start, rec.stop], "cls_rows": [cls.start, cls.stop]})
    PairedFiles.load = load
    return plans, flat({"ae": acc.unwrap_model(trainer.model)})


def main() -> None:
    manifest, out = Path(sys.argv[1]), Path(sys.argv[2])
    acc = Accelerator(cpu=True)
    torch.manual_seed(0)
    plans, weights = run(manifest, acc)
    (out / f"decodes_{acc.process_index}.json").write_text(json.dumps(plans))
    if acc.is_main_process:
        save_file(weights, str(out / "ae.safetensors"))
    acc.wait_for_everyone()
    acc.end_training()


if __name__ == "__main__":
    main()
