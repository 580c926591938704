"""Launched by tests/test_data_feed.py with torchrun: is the run folder the same on every rank?

``shared``: both ranks get one folder; ``separate``: each rank its own (as on two machines with local
disks). Each rank writes what ``check_shared`` said.
"""

import json
import sys
from pathlib import Path

from accelerate import Accelerator

from sketch2image.errors import S2IError
from sketch2image.train.distributed import check_shared


def main() -> None:
    out, mode = Path(sys.argv[1]), sys.argv[2]
    acc = Accelerator(cpu=True)
    run_dir = out / ("run" if mode == "shared" else f"run_rank{acc.process_index}")
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        check_shared(acc, run_dir)
        said = "ok"
    except S2IError as e:
        said = str(e)
    (out / f"{mode}_{acc.process_index}.json").write_text(json.dumps(said))
    acc.wait_for_everyone()
    acc.end_training()


if __name__ == "__main__":
    main()
