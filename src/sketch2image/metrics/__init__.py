"""Evaluation: FID/KID, style relevance, perceptual distance, PSNR/SSIM, Skt-Rec, Sty-Rec."""

from sketch2image.metrics.evaluate import evaluate
from sketch2image.metrics.registry import DEFAULT_METRICS, REGISTRY, Metric, parse_metrics, register
from sketch2image.metrics.report import read_report, report_markdown, write_report

__all__ = [
    "DEFAULT_METRICS",
    "REGISTRY",
    "Metric",
    "evaluate",
    "parse_metrics",
    "read_report",
    "register",
    "report_markdown",
    "write_report",
]
