"""Runtime speed options change how a step runs, never what it computes."""

import copy

import pytest
import torch

from sketch2image.configs import AEConfig, GANConfig
from sketch2image.nets.autoencoder import SketchAutoEncoder
from sketch2image.nets.refiner import Refiner
from sketch2image.train.common import RUNTIME_KEYS, prepare_run_dir, speed_up


def _ae(**kw) -> SketchAutoEncoder:
    torch.manual_seed(0)
    cfg = AEConfig(size=32, width=8, max_width=32, style_dim=16, content_res=8, **kw)
    return SketchAutoEncoder(cfg.model_config()).gradient_checkpointing(cfg.grad_checkpoint)


def _inputs():
    g = torch.Generator().manual_seed(1)
    return (torch.rand(2, 1, 32, 32, generator=g) > 0.2).float(), torch.rand(2, 3, 32, 32, generator=g)


def _grads(model, *inputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.train()
    out = model(*inputs)
    out.square().mean().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_gives_the_same_gradients():
    sk, st = _inputs()
    plain, ckpt = _ae(), _ae(grad_checkpoint=True)
    ckpt.load_state_dict(plain.state_dict())
    out_a, ga = _grads(plain, sk, st)
    out_b, gb = _grads(ckpt, sk, st)
    assert torch.allclose(out_a, out_b, atol=1e-6) and ga.keys() == gb.keys() and len(ga) > 10
    assert all(torch.allclose(ga[k], gb[k], atol=1e-6) for k in ga)
    torch.manual_seed(0)
    r_cfg = GANConfig(width=8, max_width=16, levels=2, noise=False).model_config(32, style_dim=16)
    r_plain, r_ckpt = Refiner(r_cfg), Refiner(r_cfg).gradient_checkpointing()
    r_ckpt.load_state_dict(r_plain.state_dict())
    torch.nn.init.normal_(r_plain.to_rgb.weight, std=0.1)
    r_ckpt.load_state_dict(r_plain.state_dict())
    x, s = st.clamp(0.05, 0.95), torch.randn(2, 16)
    (oa, ra), (ob, rb) = _grads(r_plain, x, s), _grads(r_ckpt, x, s)
    assert torch.allclose(oa, ob, atol=1e-6) and all(torch.allclose(ra[k], rb[k], atol=1e-6) for k in ra)


def test_channels_last_layout_gives_the_same_outputs():
    sk, st = _inputs()
    model = _ae().eval()
    want = model(sk, st)
    nhwc = copy.deepcopy(model).to(memory_format=torch.channels_last)
    assert nhwc.decoder.to_rgb.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(nhwc(sk, st), want, atol=1e-5)
    # speed_up only switches the layout on CUDA; on the CPU the module is left as it is.
    cpu = speed_up(copy.deepcopy(model), AEConfig(channels_last=True), torch.device("cpu"))
    assert cpu.decoder.to_rgb.weight.is_contiguous()


def test_compiled_and_eager_outputs_agree():
    torch._dynamo.reset()
    sk, st = _inputs()
    eager = _ae().eval()
    compiled = speed_up(copy.deepcopy(eager), AEConfig(compile=True), torch.device("cpu"))
    assert compiled.state_dict().keys() == eager.state_dict().keys()  # checkpoints unchanged by compiling
    with torch.no_grad():
        assert torch.allclose(compiled(sk, st), eager(sk, st), atol=1e-5)


def test_runtime_keys_may_change_on_resume_but_the_method_may_not(tmp_path):
    from sketch2image.errors import S2IError

    prepare_run_dir(tmp_path / "run", AEConfig(), resume=False)
    assert {"compile", "channels_last", "grad_checkpoint", "steps"} <= set(RUNTIME_KEYS)
    prepare_run_dir(tmp_path / "run", AEConfig(compile=True, grad_checkpoint=True, steps=5), resume=True)
    with pytest.raises(S2IError, match="w_rec"):
        prepare_run_dir(tmp_path / "run", AEConfig(w_rec=2.0), resume=True)


def test_fused_adam_matches_the_loop_and_resumes_old_checkpoints():
    """The fused optimiser computes the same update; a checkpoint saved by the per-tensor loop resumes fused."""
    from sketch2image.train.checkpoint import load_optimizer, optimizer_state
    from sketch2image.train.common import adam

    models = [_ae(), _ae()]
    loop = torch.optim.Adam(models[0].parameters(), 1e-3, betas=(0.5, 0.999), foreach=False)
    fused = adam(models[1].parameters(), 1e-3, (0.5, 0.999))
    assert fused.param_groups[0]["fused"] is True
    for _ in range(3):
        for model, opt in zip(models, (loop, fused), strict=True):
            opt.zero_grad()
            _grads(model, *_inputs())
            opt.step()
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    tensors, meta = optimizer_state("opt", loop)  # as an older run wrote it (not fused)
    assert not meta["param_groups"][0]["fused"]
    resumed = adam(_ae().parameters(), 5e-4, (0.9, 0.9))
    load_optimizer("opt", resumed, tensors, meta)
    group = resumed.param_groups[0]
    assert group["fused"] is True  # the implementation is this run's; the hyper-parameters are restored
    assert group["lr"] == 1e-3 and tuple(group["betas"]) == (0.5, 0.999)
    first = next(iter(loop.state.values()))
    torch.testing.assert_close(next(iter(resumed.state.values()))["exp_avg"], first["exp_avg"])
