"""Evaluation reports: the JSON ``s2i eval`` writes, its markdown table, and reading one back."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from sketch2image.errors import InputError
from sketch2image.storage import EVAL_REPORT_FORMAT, atomic_write_json, atomic_write_text, read_document


def machine_description() -> dict:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def report_markdown(report: dict, title: str = "Evaluation") -> str:
    lines = [
        f"## {title}",
        "",
        f"{report['n_test']} held-out images at {report['size']} px, seed {report['seed']}, "
        f"{'refined (EMA refiner)' if report['refine'] else 'auto-encoder output'}.",
        "",
        "| metric | value | better | samples | what it measures |",
        "|---|---|---|---|---|",
    ]
    for name, r in report["metrics"].items():
        value = _fmt(r["value"]) + (f" ± {_fmt(r['std'])}" if "std" in r else "")
        n = f"{r['n_generated']} gen / {r['n_reference']} real" if "n_generated" in r else str(r.get("n", ""))
        extra = f" (real images: {_fmt(r['real_images'])})" if "real_images" in r else ""
        lines.append(f"| {name} | {value}{extra} | {r['better']} | {n} | {r['description']} |")
    return "\n".join(lines) + "\n"


def write_report(report: dict, json_path: Path, md_path: Path | None = None, title: str = "Evaluation") -> None:
    atomic_write_json(Path(json_path), report)
    if md_path is not None:
        atomic_write_text(Path(md_path), report_markdown(report, title))


def read_report(path: Path) -> dict:
    """An ``s2i eval`` report, checked to be one."""
    return read_document(path, (EVAL_REPORT_FORMAT,), "`s2i eval` report", keys=("metrics",), error=InputError)


def card_metrics(report: dict) -> dict[str, str]:
    """``name -> "value (n samples, size, direction)"``: a report's lines for a model card."""
    card = {}
    for name, r in report["metrics"].items():
        n = r.get("n_generated", r.get("n"))
        card[name] = f"{r['value']:.4g} ({n} samples, {report['size']} px, {r['better']} is better)"
    return card
