"""Every stage's config has one shape (network settings + ``RunConfig`` + training), is checked where it is
made, and refuses each out-of-range value with one line naming the field; ``*_every = 0`` means "only at
the last step" in every stage, through the real command."""

from __future__ import annotations

import dataclasses
import json

import pytest

from sketch2image.cli import main
from sketch2image.configs import AEConfig, GANConfig, RunConfig, TOMConfig, apply_overrides
from sketch2image.errors import CheckpointError, S2IError
from sketch2image.nets.autoencoder import AutoEncoderConfig
from sketch2image.nets.refiner import RefinerConfig, RefinerLayout
from sketch2image.nets.tom import SketchGeneratorConfig
from sketch2image.storage import Checked, from_dict, to_dict

STAGES = [TOMConfig, AEConfig, GANConfig]
RUN_FIELDS = [f.name for f in dataclasses.fields(RunConfig)]
# field -> values every stage refuses (the interval fields: negative; the rest: out of their range)
REFUSED = {
    "steps": [0, -3],
    "batch_size": [0, -1],
    "seed": [-1],
    "beta1": [1.0, -0.1],
    "beta2": [1.5],
    "max_grad_norm": [-1.0, float("nan")],
    "sample_every": [-1],
    "checkpoint_every": [-5],
    "keep_checkpoints": [-1],
    "log_every": [-1],
    "num_workers": [-2],
    "mixed_precision": ["fp8"],
}


def test_every_stage_has_the_run_fields_and_its_network_settings():
    for cls in STAGES:
        assert issubclass(cls, RunConfig)
        assert set(RUN_FIELDS) <= {f.name for f in dataclasses.fields(cls)}
    assert issubclass(AEConfig, AutoEncoderConfig) and issubclass(TOMConfig, SketchGeneratorConfig)
    assert issubclass(GANConfig, RefinerLayout) and issubclass(RefinerConfig, RefinerLayout)
    # The GAN's layout fields are the refiner's own, not a copy: one declaration, the same names.
    layout = {f.name for f in dataclasses.fields(RefinerLayout)}
    assert layout <= {f.name for f in dataclasses.fields(GANConfig)}
    assert layout | {"style_dim"} == {f.name for f in dataclasses.fields(RefinerConfig)}


@pytest.mark.parametrize("cls", STAGES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("name", list(REFUSED))
def test_each_run_field_is_refused_out_of_range_in_every_stage(cls, name):
    for value in REFUSED[name]:
        with pytest.raises(S2IError, match=name) as e:
            cls(**{name: value})
        assert "\n" not in str(e.value)
        # ... and from the command line's --set and from a config file, naming where it came from
        with pytest.raises(S2IError, match=f"command line.*{name}"):
            apply_overrides(cls(), [f"{name}={json.dumps(value) if isinstance(value, str) else value}"])
        with pytest.raises(CheckpointError, match=f"run.json.*{name}"):
            from_dict(cls, {**to_dict(cls()), name: value}, "run.json")


@pytest.mark.parametrize("cls", STAGES, ids=lambda c: c.__name__)
def test_intervals_at_zero_or_absurdly_large_are_valid(cls):
    for name in ("sample_every", "checkpoint_every", "log_every"):
        for value in (0, 10**15):
            assert getattr(cls(**{name: value}), name) == value
    assert cls(steps=10**9).steps == 10**9


@pytest.mark.parametrize(
    ("cls", "field", "value"),
    [
        (TOMConfig, "warmup", -1),
        (TOMConfig, "snapshot_every", 0),
        (TOMConfig, "snapshots", 0),
        (TOMConfig, "lr_g", 0.0),
        (TOMConfig, "w_gram", -1.0),
        (TOMConfig, "feature_layer", "relu9_9"),
        (TOMConfig, "g_width", 0),
        (AEConfig, "lr", -2e-4),
        (AEConfig, "lr", float("inf")),
        (AEConfig, "cls_lr_mult", 0.0),
        (AEConfig, "cls_views", 0),
        (AEConfig, "cls_every", -1),
        (AEConfig, "grad_norm_every", -1),
        (AEConfig, "thicken_p", 1.5),
        (AEConfig, "mask_max_frac", -0.1),
        (AEConfig, "aug_min_scale", 0.0),
        (AEConfig, "content_margin", float("inf")),
        (AEConfig, "style_dim", 0),
        (GANConfig, "lr_d", 0.0),
        (GANConfig, "ema_decay", 1.0),
        (GANConfig, "levels", -1),
        (GANConfig, "max_width", 0),
        (RefinerConfig, "width", 0),
    ],
)
def test_stage_fields_out_of_range_are_refused(cls, field, value):
    with pytest.raises(S2IError, match=field):
        cls(**{field: value})


def test_a_config_is_checked_where_it_is_made():
    cfg = AEConfig.preset(64)
    with pytest.raises(S2IError, match="sample_every"):
        dataclasses.replace(cfg, sample_every=-1)
    with pytest.raises(S2IError, match="no AE preset"):
        cfg.with_size(48)
    with pytest.raises(S2IError, match="width"):  # the GAN's 0 means "the preset", a network's does not
        GANConfig().model_config(64, 16).__class__(width=0)


def test_zero_intervals_mean_only_at_the_last_step(tmp_path, paired_manifest):
    """The real command with every interval at 0 (it stopped with a ZeroDivisionError traceback)."""
    run = tmp_path / "ae"
    args = ["ae", "train", "--data", str(paired_manifest), "--out", str(run), "--preset", "64", "--batch-size", "4",
            "--steps", "3", *(a for kv in ("width=4", "max_width=32", "style_dim=16", "cls_every=2", "sample_every=0",
                                           "checkpoint_every=0", "log_every=0") for a in ("--set", kv))]  # fmt: skip
    assert main(args) == 0
    assert [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()] == [3]
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step_0000003.png"]
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_0000003"]


def test_an_interval_out_of_range_exits_2_with_one_line(tmp_path, paired_manifest, capsys):
    run = tmp_path / "ae"
    args = ["ae", "train", "--data", str(paired_manifest), "--out", str(run), "--set", "sample_every=-1"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("s2i: error:") and "sample_every -1 must be >= 0" in err and len(err.splitlines()) == 1
    assert not run.exists()  # nothing written


def test_tensorboard_is_a_run_setting_of_every_stage(tmp_path, image_dir, sketch_dir, tiny_tom, monkeypatch):
    """TOM writes it too (it was the AE's alone), through the one step loop; the writer is closed at the end."""
    from sketch2image.train import common
    from sketch2image.train.tom import train_tom

    class Writer:
        def __init__(self, path):
            self.scalars, self.closed, self.path = [], False, path

        def add_scalar(self, tag, value, step):
            self.scalars.append((tag, step))

        def close(self):
            self.closed = True

    made = []
    monkeypatch.setattr(common, "_tensorboard", lambda run_dir: made.append(Writer(run_dir)) or made[-1])
    train_tom(dataclasses.replace(tiny_tom, tensorboard=True), image_dir, sketch_dir, tmp_path / "tom", progress=False)
    (writer,) = made
    assert writer.closed and writer.path == tmp_path / "tom"
    assert {step for _, step in writer.scalars} == set(range(1, tiny_tom.steps + 1))  # log_every=1
    assert all(tag.startswith("tom/") for tag, _ in writer.scalars)


def test_legacy_defaults_of_every_layer_apply_to_old_files():
    """A key a base layer added later keeps its old meaning in every config built on that layer."""

    @dataclasses.dataclass
    class Layer(Checked):
        LEGACY_DEFAULTS = {"a": 1}  # files written before ``a`` existed meant 1
        a: int = 2

    @dataclasses.dataclass
    class Stage(Layer):
        LEGACY_DEFAULTS = {"b": 3}
        b: int = 4

    assert from_dict(Stage, {}) == Stage(a=1, b=3) and Stage() == Stage(a=2, b=4)
    assert from_dict(GANConfig, {k: v for k, v in to_dict(GANConfig()).items() if k != "arch"}).arch == "classic"
