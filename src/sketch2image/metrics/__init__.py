"""Evaluation: FID/KID, style relevance, perceptual distance, PSNR/SSIM, Skt-Rec, Sty-Rec."""

from sketch2image.metrics.evaluate import DEFAULT_METRICS, REGISTRY, evaluate, parse_metrics, write_report

__all__ = ["DEFAULT_METRICS", "REGISTRY", "evaluate", "parse_metrics", "write_report"]
