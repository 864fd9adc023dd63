"""float_loss, the λ sampler and fit()."""

from __future__ import annotations

import collections
import contextlib
import weakref

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import floatify
from floatify.checkpoint import CheckpointError, load_state, save_state
from floatify.context import get_lam, hold_noise
from floatify.train import LEGACY_STATE_FILE, STATE_FILE, LamSampler, float_paired_loss, float_step_loss

from helpers import RecordingLibc, use_libc


def tiny_model():
    torch.manual_seed(0)
    return floatify.convert(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                          nn.Flatten(), nn.Linear(4, 3)))


def batch(n=8):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_loss_at_zero_is_plain_cross_entropy_and_runs_no_attack():
    model, (x, y) = tiny_model(), batch()

    def attack(*_):
        raise AssertionError("no attack at λ = 0")

    loss = floatify.float_loss(model, x, y, 0.0, attack=attack)
    assert torch.equal(loss, F.cross_entropy(model(x), y))


def replay(noise_draw: str):
    """The noise context float_loss uses for ``noise_draw`` (to replay its draws by seed)."""
    return hold_noise() if noise_draw == "step" else contextlib.nullcontext()


@pytest.mark.parametrize("noise_draw", ["step", "forward"])
def test_loss_at_one_is_adversarial_cross_entropy_without_a_clean_forward(noise_draw):
    model, (x, y) = tiny_model(), batch()
    x_adv = (x + 0.03).clamp(0, 1)
    calls = []
    model.register_forward_hook(lambda mod, inp, out: calls.append(inp[0]))
    torch.manual_seed(4)
    loss = floatify.float_loss(model, x, y, 1.0, attack=lambda a, b: x_adv, noise_draw=noise_draw)
    assert len(calls) == 1 and torch.equal(calls[0], x_adv)  # the zero-weight clean term is skipped
    torch.manual_seed(4)
    with floatify.lam(1.0), replay(noise_draw):
        expected = F.cross_entropy(model(x_adv), y)  # first draw goes to x_adv: no clean term at λ = 1
    assert torch.allclose(loss, expected)


@pytest.mark.parametrize("noise_draw", ["step", "forward"])
def test_intermediate_lam_mixes_the_two_terms(noise_draw):
    model, (x, y) = tiny_model(), batch()
    x_adv = (x - 0.03).clamp(0, 1)
    torch.manual_seed(2)
    loss = floatify.float_loss(model, x, y, 0.3, attack=lambda a, b: x_adv, noise_draw=noise_draw)
    torch.manual_seed(2)
    with floatify.lam(0.3), replay(noise_draw):
        clean, adv = F.cross_entropy(model(x), y), F.cross_entropy(model(x_adv), y)
    assert torch.allclose(loss, 0.7 * clean + 0.3 * adv)


@pytest.mark.parametrize("noise_draw, same", [("step", True), ("forward", False)])
def test_step_noise_draw_shows_the_attack_the_draw_the_loss_uses(noise_draw, same):
    torch.manual_seed(0)
    model = floatify.convert(nn.Sequential(nn.Flatten(), nn.Linear(108, 3)))  # reason: no BN, logits comparable
    (x, y), seen = batch(), []

    def attack(a, b):
        seen.extend([model(a).detach(), model(a).detach()])  # two attack iterations
        return a

    loss = floatify.float_loss(model, x, y, 1.0, attack=attack, noise_draw=noise_draw)
    assert torch.equal(seen[0], seen[1]) is same
    assert torch.allclose(loss, F.cross_entropy(seen[0], y)) is same


def test_noise_draw_is_validated():
    model, (x, y) = tiny_model(), batch()
    with pytest.raises(ValueError, match="noise_draw must be one of step, forward"):
        floatify.float_loss(model, x, y, 1.0, noise_draw="epoch")
    with pytest.raises(ValueError, match="noise_draw"):
        floatify.TrainConfig(noise_draw="batch")


def test_attack_sees_noise_on_eval_bn_and_leaves_param_grads_alone():
    model, (x, y) = tiny_model(), batch()
    model.train()
    seen = {}

    def spy(a, b):
        seen["lam"], seen["training"] = get_lam(), model.training
        with torch.no_grad():
            seen["noisy"] = not torch.equal(model[0].weight, model[0]._parameters["weight"])
        return a

    floatify.float_loss(model, x, y, 0.5, attack=spy)
    assert seen == {"lam": 0.5, "training": True, "noisy": True}
    # a real torchattacks attack: BN eval during the attack, no parameter gradient left behind
    model.zero_grad(set_to_none=True)
    from floatify.attacks import make_attack

    with floatify.lam(1.0):
        x_adv = make_attack(model, "pgd", eps=8 / 255, steps=3)(x, y)
    assert all(p.grad is None for p in model.parameters())
    assert model.training, "torchattacks must restore train mode"
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1


@pytest.mark.parametrize("gradients_alive", [False, True], ids=["zero-grad-first", "zero-grad-late"])
def test_the_attack_holds_its_noisy_weights_only_while_no_gradient_is_alive(gradients_alive):
    # reason: a held set adds one weight-sized tensor per layer, which only costs peak memory where the previous
    # step's gradients live through the attack; there each read recomputes (with recipes for what autograd saves)
    model, (x, y) = tiny_model(), batch()
    if gradients_alive:
        floatify.float_loss(model, x, y, 1.0).backward()
    seen = {}

    def spy(a, b):
        w = model[0].weight
        seen["held"] = w.data_ptr() == model[0].weight.data_ptr()
        ref = weakref.ref(w)
        graph = F.conv2d(a.clone().requires_grad_(True), w).sum()  # autograd saves w for the input gradient
        del w
        seen["freed"] = ref() is None  # neither held by the block nor saved by autograd (kept as its recipe)
        del graph  # reason: the graph (and what it saved) lived until the check
        return a

    floatify.float_loss(model, x, y, 1.0, attack=spy).backward()
    assert seen == {"held": not gradients_alive, "freed": gradients_alive}


def test_gradients_alive_sees_a_tied_weight_under_its_converted_name():
    from floatify.train import _gradients_alive

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.head = nn.Embedding(3, 4), nn.Linear(4, 3)
            self.head.weight = self.emb.weight  # reason: named_parameters() lists it once, under emb

    model = floatify.convert(Tied(), filter_fn=lambda module, fqn: fqn == "head")
    assert not _gradients_alive(model)
    model.emb.weight.grad = torch.zeros(3, 4)
    assert _gradients_alive(model)


def test_sampler_distributions():
    oat = LamSampler("oat", seed=0, zero_share=0.25)
    draws = [oat(i)[0] for i in range(6000)]
    counts = collections.Counter(draws)
    assert set(counts) == {0.0, 0.1, 0.2, 0.3, 0.4, 1.0}
    assert counts[0.0] / len(draws) == pytest.approx(0.25, abs=0.02)
    for v in (0.1, 0.2, 0.3, 0.4, 1.0):
        assert counts[v] / len(draws) == pytest.approx(0.15, abs=0.02)
    uni = [LamSampler("uniform", seed=1, zero_share=0.25)(i)[0] for i in range(4000)]
    positive = [v for v in uni if v > 0]
    assert uni.count(0.0) / len(uni) == pytest.approx(0.25, abs=0.02)  # the clean BN must train too
    assert max(positive) <= 1 and sum(positive) / len(positive) == pytest.approx(0.5, abs=0.02)
    assert LamSampler("binary")(7) == [0.0, 1.0]
    assert LamSampler("paired")(7) == [0.0, 1.0]
    assert {LamSampler("fixed", values=[0.3])(i)[0] for i in range(20)} == {0.3}  # a dedicated model
    # identical on every rank: depends only on (seed, step)
    assert [LamSampler("oat", seed=3)(i) for i in range(50)] == [LamSampler("oat", seed=3)(i) for i in range(50)]
    with pytest.raises(ValueError, match="strategy"):
        LamSampler("nope")


@pytest.mark.parametrize("weight", [0.0, 0.5, 0.75, 1.0])
def test_paired_loss_uses_the_whole_batch_at_both_ends(weight):
    x, y = torch.rand(6, 3, 4, 4), torch.randint(0, 3, (6,))
    kw = dict(eps=0.1, steps=2)
    torch.manual_seed(0)  # reason: a fresh model per loss, as each forward updates the BatchNorm statistics
    got = float_paired_loss(tiny_model(), x, y, weight, **kw)
    torch.manual_seed(0)
    model = tiny_model()
    clean = floatify.float_loss(model, x, y, 0.0, **kw)
    adversarial = floatify.float_loss(model, x, y, 1.0, **kw)
    assert torch.allclose(got, (1 - weight) * clean + weight * adversarial)
    # not the binary strategy's halves: those see each example once
    torch.manual_seed(0)
    halves = float_step_loss(tiny_model(), x, y, [0.0, 1.0], **kw)
    assert weight in (0.0, 1.0) or not torch.allclose(got, halves)


def test_fit_paired_trains_and_counts_both_ends():
    history = floatify.fit(tiny_model(), _loader(), epochs=1, steps=1, strategy="paired", progress=False)
    assert history[0]["lam_counts"] == {"0.00": 4, "1.00": 4}
    with pytest.raises(ValueError, match="adv_weight must be a number in \\[0, 1\\]"):
        floatify.TrainConfig(adv_weight=1.5)


def test_sampler_global_step_keyword_and_deprecated_step():
    oat = LamSampler("oat", seed=3)
    assert oat(global_step=5) == oat(5)
    with pytest.warns(DeprecationWarning, match="global_step"):
        assert oat(step=5) == oat(5)
    with pytest.raises(TypeError):
        oat(5, step=5)


def test_binary_step_splits_the_batch():
    model, (x, y) = tiny_model(), batch()
    calls = []

    def attack(a, b):
        calls.append(len(a))
        return a

    float_step_loss(model, x, y, [0.0, 1.0], attack=attack)
    assert calls == [4]  # only the λ = 1 half is attacked


def _loader(n=32, bs=8):
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.rand(n, 3, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g))
    return DataLoader(data, batch_size=bs, shuffle=True, generator=torch.Generator().manual_seed(0))


def test_fit_is_reproducible_and_resumes(tmp_path):
    kw = dict(epochs=2, steps=2, strategy="oat", progress=False)
    a = tiny_model()
    h1 = floatify.fit(a, _loader(), **kw)
    b = tiny_model()
    h2 = floatify.fit(b, _loader(), **kw)
    assert [r["loss"] for r in h1] == [r["loss"] for r in h2]
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    # interrupted after epoch 1 (its checkpoint written), then resumed: continues at epoch 2
    class Stop(Exception):
        pass

    def stop_after_first(epoch, record):
        if epoch == 1:
            raise Stop

    with pytest.raises(Stop):
        floatify.fit(tiny_model(), _loader(), checkpoint_dir=tmp_path / "cut", on_epoch_end=stop_after_first, **kw)
    resumed = floatify.fit(tiny_model(), _loader(), checkpoint_dir=tmp_path / "cut", resume=True, **kw)
    assert [r["epoch"] for r in resumed] == [1, 2] and resumed[0]["loss"] == h1[0]["loss"]
    # a finished run resumed again has nothing left to do and keeps its state
    c = tiny_model()
    state_dir = tmp_path / "run"
    floatify.fit(c, _loader(), checkpoint_dir=state_dir, **kw)
    d = tiny_model()
    hist = floatify.fit(d, _loader(), checkpoint_dir=state_dir, resume=True, **kw)
    assert len(hist) == 2  # nothing left to do: the stored history is returned
    assert all(torch.equal(p, q) for p, q in zip(c.state_dict().values(), d.state_dict().values()))
    with pytest.raises(ValueError, match="settings changed"):
        floatify.fit(tiny_model(), _loader(), checkpoint_dir=state_dir, resume=True, epochs=3, steps=2,
                     strategy="oat", progress=False)
    # a checkpoint written before a setting existed (here: noise_draw) resumes with that setting's default
    state = load_state(state_dir / STATE_FILE)
    del state["config"]["noise_draw"]
    save_state(state_dir / STATE_FILE, state)
    assert len(floatify.fit(tiny_model(), _loader(), checkpoint_dir=state_dir, resume=True, **kw)) == 2
    # an older run's pickle-free train_state.pt (plain tensors and containers) still resumes
    del state["data"], state["tag"], state["scaler"]
    torch.save(state, state_dir / LEGACY_STATE_FILE)
    (state_dir / STATE_FILE).unlink()
    assert len(floatify.fit(tiny_model(), _loader(), checkpoint_dir=state_dir, resume=True, **kw)) == 2


def test_fit_passes_noise_draw_through_and_both_modes_differ():
    kw = dict(epochs=1, steps=2, progress=False)
    step, fwd = tiny_model(), tiny_model()
    floatify.fit(step, _loader(), noise_draw="step", **kw)
    floatify.fit(fwd, _loader(), noise_draw="forward", **kw)
    again = tiny_model()
    floatify.fit(again, _loader(), noise_draw="step", **kw)
    assert torch.equal(step[0].weight_alpha, again[0].weight_alpha)  # reproducible
    assert not torch.equal(step[0].weight_alpha, fwd[0].weight_alpha)  # the setting reaches float_loss


def test_fit_trains_alpha_without_weight_decay_and_rejects_plain_models():
    model = tiny_model()
    before = model[0].weight_alpha.detach().clone()
    floatify.fit(model, _loader(), epochs=1, steps=2, progress=False, weight_decay=0.5, lr=0.05)
    assert not torch.equal(model[0].weight_alpha.detach(), before)
    with pytest.raises(ValueError, match="converted"):
        floatify.fit(nn.Linear(2, 2), _loader(), epochs=1, progress=False)
    with pytest.raises(ValueError, match="strategy"):
        floatify.fit(tiny_model(), _loader(), epochs=1, strategy="bogus", progress=False)


class _Stop(Exception):
    pass


def _stop_after(k):
    def hook(epoch, record):
        if epoch == k:
            raise _Stop

    return hook


@pytest.mark.parametrize("stop_after", [1, 2])
def test_resume_after_a_kill_gives_the_weights_of_an_uninterrupted_run(tmp_path, stop_after):
    kw = dict(epochs=3, steps=1, strategy="uniform", progress=False)
    straight = tiny_model()
    floatify.fit(straight, _loader(), **kw)
    with pytest.raises(_Stop):
        floatify.fit(tiny_model(), _loader(), checkpoint_dir=tmp_path, on_epoch_end=_stop_after(stop_after), **kw)
    torch.manual_seed(123)  # reason: a fresh process has other global RNG state; resume must not depend on it
    resumed = tiny_model()
    floatify.fit(resumed, _loader(), checkpoint_dir=tmp_path, resume=True, **kw)
    assert straight.state_dict().keys() == resumed.state_dict().keys()
    differ = [k for k, v in straight.state_dict().items() if not torch.equal(v, resumed.state_dict()[k])]
    assert differ == []
    assert (tmp_path / STATE_FILE).is_file() and not (tmp_path / LEGACY_STATE_FILE).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # unpickling this creates the marker file


def test_resume_never_unpickles_code(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model": _Evil(str(marker)), "config": {}}, tmp_path / LEGACY_STATE_FILE)
    with pytest.raises(CheckpointError, match="refusing to load training state .*train_state.pt"):
        floatify.fit(tiny_model(), _loader(), checkpoint_dir=tmp_path, resume=True, epochs=1, progress=False)
    assert not marker.exists()


def _write(path, data):
    path.write_bytes(data)


def _truncate(path):
    path.write_bytes(path.read_bytes()[:200])


def _checkpoint_instead(path):
    floatify.checkpoint.save_checkpoint(path, tiny_model(), {})


def _incomplete(path):
    save_state(path, {"epoch": 0})


def _bad_tensor_ref(path):
    state = load_state(path)
    state["model"] = {"0.weight": "not a tensor"}
    save_state(path, state)


@pytest.mark.parametrize("damage, message", [
    (lambda p: _write(p, b""), "truncated or corrupted"),
    (lambda p: _write(p, b"\x00garbage" * 50), "truncated or corrupted"),
    (_truncate, "truncated or corrupted"),
    (_checkpoint_instead, "not a floatify state file"),
    (_incomplete, "incomplete"),
    (_bad_tensor_ref, "does not fit this model"),
])
def test_a_damaged_train_state_is_a_clear_error(tmp_path, damage, message):
    kw = dict(epochs=2, steps=1, progress=False)
    floatify.fit(tiny_model(), _loader(), checkpoint_dir=tmp_path, **kw)
    damage(tmp_path / STATE_FILE)
    with pytest.raises(CheckpointError, match=message) as err:
        floatify.fit(tiny_model(), _loader(), checkpoint_dir=tmp_path, resume=True, **kw)
    assert STATE_FILE in str(err.value)


def _other_model():
    torch.manual_seed(0)
    return floatify.convert(nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                          nn.Linear(5, 3)))


@pytest.mark.parametrize("model, loader, tag, message", [
    (_other_model, lambda: _loader(), None, "does not fit this model"),
    (lambda: floatify.sparsify(tiny_model(), 0.5), lambda: _loader(), None, "does not fit this model"),
    (tiny_model, lambda: _loader(bs=4), None, "training data changed .*batch_size 8 -> 4"),
    (tiny_model, lambda: _loader(n=24), None, "training data changed .*dataset_size 32 -> 24"),
    (tiny_model, lambda: _loader(), {"density": 0.5}, "settings changed .*density"),
])
def test_resume_with_other_model_data_or_settings_is_refused(tmp_path, model, loader, tag, message):
    kw = dict(epochs=2, steps=1, progress=False)
    with pytest.raises(_Stop):
        floatify.fit(tiny_model(), _loader(), checkpoint_dir=tmp_path, on_epoch_end=_stop_after(1), **kw)
    with pytest.raises(ValueError, match=message):
        floatify.fit(model(), loader(), checkpoint_dir=tmp_path, resume=True, tag=tag, **kw)


@pytest.mark.parametrize("setting, message", [
    (dict(grad_clip=0.0), "grad_clip must be a finite number > 0"),
    (dict(grad_clip=-1.0), "grad_clip must be a finite number > 0"),
    (dict(grad_clip=float("nan")), "grad_clip"),
    (dict(steps=-5), "steps .* must be an int >= 1"),
    (dict(steps=0), "steps"),
    (dict(steps=2.5), "steps"),
    (dict(step_size=0.0), "step_size"),
    (dict(weight_decay=-1.0), "weight_decay"),
    (dict(momentum=1.0), "momentum"),
    (dict(warmup_epochs=-1.0), "warmup_epochs"),
])
def test_train_config_rejects_settings_that_cannot_train(setting, message):
    with pytest.raises(ValueError, match=message):
        floatify.TrainConfig(**setting)
    assert floatify.TrainConfig(grad_clip=1.0, steps=1).grad_clip == 1.0


@pytest.mark.parametrize("keep, calls", [(True, ["mallopt", "mallopt", "malloc_trim", "mallopt", "mallopt"]),
                                         (False, [])])
def test_fit_on_cpu_keeps_freed_heap_for_the_run_unless_told_not_to(monkeypatch, tmp_path, keep, calls):
    libc = RecordingLibc()
    use_libc(monkeypatch, libc)
    seen = []
    floatify.fit(tiny_model(), _loader(), epochs=2, steps=1, progress=False, keep_freed_heap=keep,
                 checkpoint_dir=tmp_path, on_epoch_end=lambda e, r: seen.append(len(libc.calls)))
    assert [c[0] for c in libc.calls] == calls
    assert seen == ([2, 2] if keep else [0, 0]), "set once before the first epoch, reset after the last"
    # a speed-only setting: the finished run resumes with it changed, and with nothing left to train, nothing is tuned
    libc.calls.clear()
    assert len(floatify.fit(tiny_model(), _loader(), epochs=2, steps=1, progress=False, keep_freed_heap=not keep,
                            checkpoint_dir=tmp_path, resume=True)) == 2
    assert libc.calls == []
    with pytest.raises(ValueError, match="keep_freed_heap must be True or False"):
        floatify.TrainConfig(keep_freed_heap="yes")


def test_fit_resets_the_heap_when_training_stops_with_an_error(monkeypatch):
    libc = RecordingLibc()
    use_libc(monkeypatch, libc)
    with pytest.raises(_Stop):
        floatify.fit(tiny_model(), _loader(), epochs=2, steps=1, progress=False, on_epoch_end=_stop_after(1))
    assert [c[0] for c in libc.calls] == ["mallopt", "mallopt", "malloc_trim", "mallopt", "mallopt"]


def test_training_on_no_batches_is_an_error():
    data = TensorDataset(torch.rand(5, 3, 6, 6), torch.randint(0, 3, (5,)))
    with pytest.raises(ValueError, match="no batches"):
        floatify.fit(tiny_model(), DataLoader(data, batch_size=8, drop_last=True), epochs=1, progress=False)


def _lrs(cfg, steps_per_epoch):
    from floatify.train import make_scheduler

    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = make_scheduler(opt, cfg, steps_per_epoch)
    lrs = []
    for _ in range(cfg.epochs * steps_per_epoch):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


@pytest.mark.parametrize("warmup_epochs", [0, 0.5, 1])
def test_schedule_is_linear_warm_up_then_cosine(warmup_epochs):
    import math

    from floatify.train import TrainConfig

    cfg = TrainConfig(epochs=2, lr=0.1, warmup_epochs=warmup_epochs)
    warm, total = int(warmup_epochs * 4), 8
    want = [0.1 * (s + 1) / warm if s < warm else 0.05 * (1 + math.cos(math.pi * (s - warm) / (total - warm)))
            for s in range(total)]
    assert _lrs(cfg, 4) == pytest.approx(want, abs=1e-12)


def test_fit_warmup_grad_clip_and_adamw_reach_the_optimizer(tmp_path):
    kw = dict(epochs=2, steps=1, progress=False)
    warm = floatify.fit(tiny_model(), _loader(), warmup_epochs=1, **kw)  # 4 steps per epoch
    assert warm[0]["lr"] == pytest.approx(0.1) and warm[1]["lr"] == pytest.approx(0.0, abs=1e-12)
    plain = floatify.fit(tiny_model(), _loader(), **kw)
    assert plain[0]["lr"] == pytest.approx(0.05)  # cosine half way
    before = tiny_model().state_dict()
    clipped = tiny_model()
    floatify.fit(clipped, _loader(), grad_clip=1e-9, lr=0.1, momentum=0.0, weight_decay=0.0, **kw)
    moved = max((clipped.state_dict()[k] - v).abs().max().item() for k, v in before.items() if v.is_floating_point()
                and "running" not in k)
    assert moved < 1e-8  # 8 steps of lr 0.1 × gradient norm 1e-9
    adamw = tiny_model()
    floatify.fit(adamw, _loader(), optimizer="adamw", lr=1e-3, checkpoint_dir=tmp_path, **kw)
    opt_state = load_state(tmp_path / STATE_FILE)["optimizer"]
    assert all("exp_avg_sq" in s for s in opt_state["state"].values())  # AdamW's moments were checkpointed


def test_amp_is_a_no_op_on_cpu():
    a, b = tiny_model(), tiny_model()
    floatify.fit(a, _loader(), epochs=1, steps=1, progress=False, amp=True)
    floatify.fit(b, _loader(), epochs=1, steps=1, progress=False)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_resume_from_a_state_of_the_earlier_hand_written_schedule(tmp_path):
    kw = dict(epochs=3, steps=1, strategy="uniform", progress=False)
    straight = tiny_model()
    floatify.fit(straight, _loader(), **kw)
    with pytest.raises(_Stop):
        floatify.fit(tiny_model(), _loader(), checkpoint_dir=tmp_path, on_epoch_end=_stop_after(1), **kw)
    state = load_state(tmp_path / STATE_FILE)
    steps = state["scheduler"]["last_epoch"]
    state["scheduler"] = {"base_lrs": [0.1, 0.1], "last_epoch": steps, "verbose": False, "_step_count": steps + 1,
                          "_get_lr_called_within_step": False, "_last_lr": [0.1, 0.1], "lr_lambdas": [None, None]}
    save_state(tmp_path / STATE_FILE, state)
    resumed = tiny_model()
    floatify.fit(resumed, _loader(), checkpoint_dir=tmp_path, resume=True, **kw)
    assert all(torch.equal(p, q) for p, q in zip(straight.state_dict().values(), resumed.state_dict().values()))
