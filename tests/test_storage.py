"""storage.py: atomic writes, checked formats and configs, what a folder is."""

from __future__ import annotations

import json

import pytest
import torch

from sketch2image.errors import CheckpointError, InputError
from sketch2image.nets.autoencoder import AutoEncoderConfig, SketchAutoEncoder
from sketch2image.nets.refiner import Refiner
from sketch2image.pipeline import Sketch2Image
from sketch2image.storage import (
    RUN_FORMAT,
    atomic_dir,
    atomic_file,
    folder_kind,
    part_dir,
    read_document,
    read_json,
    read_run_info,
    run_of,
    save_tensors,
    tensors_metadata,
    write_run_info,
)


def test_atomic_file_and_dir_leave_the_old_version_or_nothing(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]
    folder = tmp_path / "d"
    with pytest.raises(RuntimeError), atomic_dir(folder) as tmp:
        (tmp / "x").write_text("x")
        raise RuntimeError("killed")
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]
    with atomic_dir(folder) as tmp:
        (tmp / "x").write_text("x")
    assert (folder / "x").read_text() == "x"
    with pytest.raises(CheckpointError, match="already exists"), atomic_dir(folder, replace=False):
        pass


def test_read_json_names_the_file_and_the_problem(tmp_path):
    with pytest.raises(CheckpointError, match="nope.json: config missing"):
        read_json(tmp_path / "nope.json", "config")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(CheckpointError, match="bad.json: unreadable config"):
        read_json(tmp_path / "bad.json", "config")


def test_one_checked_reader_for_every_json_document(tmp_path):
    doc = tmp_path / "doc.json"
    for content, problem in [("{", "unreadable thing"), ("[1]", "not a valid thing (format None"),
                             ('{"format": "other/1", "a": 1}', "not a valid thing (format 'other/1'"),
                             ('{"format": "ours/1"}', "not a valid thing")]:  # fmt: skip
        doc.write_text(content)
        with pytest.raises(InputError, match="doc.json: " + problem.replace("(", r"\(")):
            read_document(doc, ("ours/1",), "thing", keys=("a",), error=InputError)
    doc.write_text('{"format": "ours/1", "a": 1}')
    assert read_document(doc, ("ours/1",), "thing", keys=("a",)) == {"format": "ours/1", "a": 1}


def test_run_json_is_written_and_read_in_one_place(tmp_path):
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    write_run_info(run, "ae", data=tmp_path / "sk" / "manifest.json", n_images=3)
    info = read_run_info(run / "model")  # a run's model/ folder finds its run
    assert info == {"format": RUN_FORMAT, "stage": "ae", "data": str((tmp_path / "sk" / "manifest.json").resolve()),
                    "n_images": 3}  # fmt: skip
    assert read_run_info(tmp_path) is None  # not a run
    (run / "run.json").write_text(json.dumps({"data": "x"}))  # a run from before run.json had a tag: still read
    assert read_run_info(run) == {"data": "x"}
    (run / "run.json").write_text(json.dumps({"format": "sketch2image.model/1"}))
    with pytest.raises(CheckpointError, match="run.json: not a valid training run description"):
        read_run_info(run)


def test_folder_kinds_and_where_each_part_lives(model_dir, tmp_path):
    assert folder_kind(model_dir) == "model"
    assert folder_kind(model_dir / "ae") == "ae" and folder_kind(model_dir / "refiner") == "refiner"
    assert folder_kind(model_dir / "tom") == "tom" and folder_kind(tmp_path / "tom_run") == "tom"
    assert folder_kind(tmp_path / "ae_run") == "ae" and folder_kind(tmp_path / "gan_run") == "refiner"  # runs
    assert folder_kind(tmp_path / "images") == "unknown"
    assert part_dir(model_dir, "ae") == model_dir / "ae"  # an exported model
    assert part_dir(tmp_path / "ae_run", "ae") == tmp_path / "ae_run" / "model"  # a training run
    assert part_dir(model_dir / "refiner", "refiner") == model_dir / "refiner"  # the part's own folder
    with pytest.raises(CheckpointError, match="no refiner here"):
        part_dir(tmp_path / "ae_run", "refiner")
    assert run_of(tmp_path / "tom_run") == tmp_path / "tom_run" and run_of(model_dir / "ae") is None


def test_sketch2image_load_takes_a_model_or_an_auto_encoder(model_dir, tmp_path):
    assert Sketch2Image.load(model_dir).refiner is not None
    alone = Sketch2Image.load(tmp_path / "ae_run")
    assert alone.refiner is None and alone.tom is None and alone.size == 32
    with pytest.raises(CheckpointError, match="no auto-encoder here"):
        Sketch2Image.load(tmp_path / "gan_run")


def test_networks_check_their_format_and_config(tmp_path):
    torch.manual_seed(0)
    ae = SketchAutoEncoder(AutoEncoderConfig(size=32, width=4, max_width=16, style_dim=8))
    folder = ae.save_pretrained(tmp_path / "ae")
    assert json.loads((folder / "config.json").read_text()) == {**vars(ae.cfg)}  # the network's settings only
    again = SketchAutoEncoder.from_pretrained(folder)
    assert all(torch.equal(a, b) for a, b in zip(ae.state_dict().values(), again.state_dict().values(), strict=True))
    with pytest.raises(CheckpointError, match="not a sketch2image refiner"):
        save_tensors({"w": torch.zeros(1)}, tmp_path / "r" / "refiner.safetensors", {"format": "other/1"})
        Refiner.from_pretrained(tmp_path / "r")
    (folder / "config.json").write_text(json.dumps({**vars(ae.cfg), "lr": 0.1}))  # a training key
    with pytest.raises(CheckpointError, match=r"unknown AutoEncoderConfig keys \['lr'\]"):
        SketchAutoEncoder.from_pretrained(folder)
    # Format 1 files saved the whole training config: its network fields are read, the rest ignored.
    save_tensors(ae.state_dict(), folder / "model.safetensors", {"format": "sketch2image.autoencoder/1"})
    assert SketchAutoEncoder.from_pretrained(folder).cfg == ae.cfg
    assert tensors_metadata(folder / "model.safetensors")["format"] == "sketch2image.autoencoder/1"
    (folder / "config.json").write_text(json.dumps({**vars(ae.cfg), "style_dim": 9}))
    with pytest.raises(CheckpointError, match="do not fit this model"):
        SketchAutoEncoder.from_pretrained(folder)


def test_a_training_config_gives_the_network_only_its_own_settings(tmp_path):
    from sketch2image.configs import AEConfig

    cfg = AEConfig(size=32, width=4, max_width=16, style_dim=8, lr=1e-3, steps=7)
    ae = SketchAutoEncoder(cfg)
    assert type(ae.cfg) is AutoEncoderConfig and ae.cfg == cfg.model_config() and ae.cfg.width == 4
    saved = json.loads((ae.save_pretrained(tmp_path / "ae") / "config.json").read_text())
    assert "lr" not in saved and "steps" not in saved and saved["size"] == 32


def test_broken_headers_give_readable_errors(model_dir, tmp_path):
    from safetensors.torch import load_file

    from sketch2image.sketcher import TOMSketcher

    snap = model_dir / "tom" / "snapshots" / "snapshot_00.safetensors"
    meta = tensors_metadata(snap)
    save_tensors(load_file(str(snap)), snap, {k: v for k, v in meta.items() if k != "config"})
    with pytest.raises(CheckpointError, match="snapshot_00.safetensors: the snapshot's config is missing"):
        TOMSketcher.from_pretrained(model_dir / "tom")
    config = model_dir / "refiner" / "config.json"
    good = config.read_text()
    config.write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="must be a JSON object"):
        Refiner.from_pretrained(model_dir / "refiner")
    config.write_text(good)
    weights = model_dir / "refiner" / "refiner.safetensors"
    save_tensors(load_file(str(weights)), weights, {"format": "sketch2image.refiner/1"})  # no style_dim
    with pytest.raises(CheckpointError, match="needs style_dim"):
        Refiner.from_pretrained(model_dir / "refiner")
