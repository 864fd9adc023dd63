"""fit() and TrainConfig: reproducible training, resume, model EMA, the quick look, summary.csv, the CPU heap."""

from __future__ import annotations

import csv
import dataclasses
import math

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

import floatify
from floatify.checkpoint import load_state
from floatify.train import STATE_FILE, TrainConfig, make_scheduler, training_settings

from helpers import RecordingLibc, use_libc
from tiny_training import Stop, loader, stop_after, tiny_model, weights_equal

KW = dict(epochs=2, steps=1, progress=False)


def _trained(**kw):
    model = tiny_model()
    history = floatify.fit(model, loader(), **{**KW, **kw})
    return model, history


# ---------------------------------------------------------------------------------------- reproducible runs
def test_fit_is_reproducible_and_a_finished_run_resumes_to_nothing(tmp_path):
    a, h1 = _trained(strategy="oat", steps=2)
    b, h2 = _trained(strategy="oat", steps=2)
    assert [r["loss"] for r in h1] == [r["loss"] for r in h2] and weights_equal(a, b)
    c = tiny_model()
    floatify.fit(c, loader(), checkpoint_dir=tmp_path, strategy="oat", **{**KW, "steps": 2})
    d = tiny_model()
    history = floatify.fit(d, loader(), checkpoint_dir=tmp_path, resume=True, strategy="oat", **{**KW, "steps": 2})
    assert [r["loss"] for r in history] == [r["loss"] for r in h1]  # the stored history, nothing trained again
    assert weights_equal(c, d)


@pytest.mark.parametrize("stop, kw", [(1, {}), (2, {}), (1, dict(model_ema=True)), (2, dict(model_ema=True)),
                                      (1, dict(model_ema=True, optimizer="adamw", lr=1e-3, warmup_epochs=1))])
def test_resume_after_a_kill_gives_the_weights_of_an_uninterrupted_run(tmp_path, stop, kw):
    kw = dict(epochs=3, steps=1, strategy="uniform", progress=False, **kw)
    straight = tiny_model()
    floatify.fit(straight, loader(), **kw)
    with pytest.raises(Stop):
        floatify.fit(tiny_model(), loader(), checkpoint_dir=tmp_path, on_epoch_end=stop_after(stop), **kw)
    torch.manual_seed(123)  # reason: a fresh process has other global RNG state; resume must not depend on it
    resumed = tiny_model()
    floatify.fit(resumed, loader(), checkpoint_dir=tmp_path, resume=True, **kw)
    assert weights_equal(straight, resumed)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_fit_passes_noise_draw_through_and_both_modes_differ():
    step, _ = _trained(noise_draw="step", steps=2, epochs=1)
    fwd, _ = _trained(noise_draw="forward", steps=2, epochs=1)
    again, _ = _trained(noise_draw="step", steps=2, epochs=1)
    assert torch.equal(step[0].weight_alpha, again[0].weight_alpha)  # reproducible
    assert not torch.equal(step[0].weight_alpha, fwd[0].weight_alpha)  # the setting reaches float_loss


def test_fit_trains_alpha_without_weight_decay_and_rejects_plain_models():
    model = tiny_model()
    before = model[0].weight_alpha.detach().clone()
    floatify.fit(model, loader(), epochs=1, steps=2, progress=False, weight_decay=0.5, lr=0.05)
    assert not torch.equal(model[0].weight_alpha.detach(), before)
    with pytest.raises(ValueError, match="converted"):
        floatify.fit(nn.Linear(2, 2), loader(), epochs=1, progress=False)


def test_fit_paired_trains_and_counts_both_ends():
    _, history = _trained(epochs=1, strategy="paired")
    assert history[0]["lam_counts"] == {"0.00": 4, "1.00": 4}


def test_training_on_no_batches_is_an_error():
    data = TensorDataset(torch.rand(5, 3, 6, 6), torch.randint(0, 3, (5,)))
    with pytest.raises(ValueError, match="no batches"):
        floatify.fit(tiny_model(), DataLoader(data, batch_size=8, drop_last=True), epochs=1, progress=False)


# ------------------------------------------------------------------------------------------------ TrainConfig
@pytest.mark.parametrize("setting, error, message", [
    (dict(epochs=0), ValueError, "epochs must be an int >= 1, got 0"),
    (dict(epochs=2.0), TypeError, "epochs must be an int >= 1"),
    (dict(lr=float("inf")), ValueError, "lr must be a finite number >= 0"),
    (dict(lr=0.0), ValueError, "lr must be > 0"),
    (dict(optimizer="lbfgs"), ValueError, "optimizer must be one of sgd, adamw, got 'lbfgs'"),
    (dict(strategy="bogus"), ValueError, "strategy must be one of paired, binary, oat, uniform, fixed"),
    (dict(grad_clip=0.0), ValueError, "grad_clip must be a finite number > 0"),
    (dict(grad_clip=-1.0), ValueError, "grad_clip must be a finite number > 0"),
    (dict(grad_clip=float("nan")), ValueError, "grad_clip"),
    (dict(steps=-5), ValueError, "steps \\(training attack iterations\\) must be an int >= 1"),
    (dict(steps=0), ValueError, "steps"),
    (dict(steps=2.5), TypeError, "steps"),
    (dict(step_size=0.0), ValueError, "step_size must be > 0"),
    (dict(step_size=1.5), ValueError, "step_size \\(pixel units\\) must be a number in \\[0, 1\\]"),
    (dict(eps=2.0), ValueError, "eps \\(pixel units\\) must be a number in \\[0, 1\\]"),
    (dict(noise_draw="batch"), ValueError, "noise_draw must be one of step, forward"),
    (dict(attack="apgd"), ValueError, "attack must be one of pgd, fgsm"),
    (dict(weight_decay=-1.0), ValueError, "weight_decay must be a finite number >= 0"),
    (dict(momentum=1.0), ValueError, "momentum must be in \\[0, 1\\)"),
    (dict(warmup_epochs=-1.0), ValueError, "warmup_epochs must be a number in \\[0, 6\\]"),
    (dict(adv_weight=1.5), ValueError, "adv_weight must be a number in \\[0, 1\\]"),
    (dict(zero_share=-0.1), ValueError, "zero_share must be a number in \\[0, 1\\]"),
    (dict(fixed_lam=2.0), ValueError, "fixed_lam"),
    (dict(keep_freed_heap="yes"), TypeError, "keep_freed_heap must be True or False"),
    (dict(model_ema=1), TypeError, "model_ema must be True or False"),
    (dict(amp="no"), TypeError, "amp must be True or False"),
    (dict(model_ema_decay=1.0), ValueError, "model_ema_decay must be in \\[0, 1\\)"),
    (dict(eval_every=-1), ValueError, "eval_every \\(a quick look every K epochs; 0: never\\) must be an int >= 0"),
    (dict(eval_every=0.5), TypeError, "eval_every"),
    (dict(seed=-1), ValueError, "seed must be an int >= 0, got -1"),
    (dict(seed=2**70), ValueError, "seed must be an int in \\[0, 4294967295\\]"),
    (dict(seed="x"), TypeError, "seed must be an int"),
    (dict(compile="yes"), TypeError, "compile must be True or False"),
    (dict(compile=True, compile_mode="turbo"), ValueError, "compile_mode must be one of default, reduce-overhead, "),
    (dict(compile_mode="default"), ValueError, "compile_mode='default' needs compile=True"),
])
def test_train_config_rejects_settings_that_cannot_train(setting, error, message):
    with pytest.raises(error, match=message):
        TrainConfig(**setting)
    with pytest.raises(error, match=message):  # the same check as a keyword of fit
        floatify.fit(tiny_model(), loader(), progress=False, **setting)


def test_train_config_is_frozen_and_fit_overrides_a_copy():
    cfg = TrainConfig(epochs=2, steps=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 1.0  # type: ignore[misc]
    history = floatify.fit(tiny_model(), loader(), cfg, lr=0.05, progress=False)
    assert history[0]["lr"] == pytest.approx(0.025) and cfg.lr == 0.1  # cosine half way from the override
    assert [r["epoch"] for r in floatify.fit(tiny_model(), loader(), cfg, epochs=3, progress=False)] == [1, 2, 3]


def test_an_unknown_setting_is_one_type_error_naming_the_valid_ones():
    with pytest.raises(TypeError, match="fit\\(\\) got an unknown option 'learning_rate'; valid options: epochs, lr, "):
        floatify.fit(tiny_model(), loader(), learning_rate=0.1, progress=False)
    with pytest.raises(TypeError, match="fit\\(\\) takes a floatify.TrainConfig as config, got dict"):
        floatify.fit(tiny_model(), loader(), {"epochs": 1}, progress=False)


# Another valid value of every TrainConfig field. A new field must get a row (checked below), so resuming can never
# ignore it: the resume check compares every field that is not marked as leaving the weights alone.
OTHER_VALUE = {"epochs": 3, "lr": 0.05, "optimizer": "adamw", "weight_decay": 0.0, "momentum": 0.5,
               "strategy": "oat", "zero_share": 0.5, "attack": "fgsm", "eps": 0.1, "steps": 2, "step_size": 0.01,
               "noise_draw": "forward", "grad_clip": 1.0, "amp": True, "seed": 1, "warmup_epochs": 1.0,
               "fixed_lam": 0.5, "adv_weight": 0.5, "keep_freed_heap": True, "model_ema": True,
               "model_ema_decay": 0.9, "eval_every": 1, "compile": True, "compile_mode": "max-autotune-no-cudagraphs"}
ALONG = {"compile_mode": {"compile": True}}  # reason: a setting valid only with another one changed too
WEIGHTS_UNAFFECTED = {"keep_freed_heap", "eval_every"}


def test_every_train_config_field_has_a_row_in_the_resume_table():
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(OTHER_VALUE) == names
    assert names - set(training_settings(TrainConfig())) == WEIGHTS_UNAFFECTED
    assert all(OTHER_VALUE[k] != getattr(TrainConfig(), k) for k in names)


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A run stopped after its first epoch of two (with its state written)."""
    folder = tmp_path_factory.mktemp("interrupted")
    with pytest.raises(Stop):
        floatify.fit(tiny_model(), loader(), checkpoint_dir=folder, on_epoch_end=stop_after(1), **KW)
    return folder


@pytest.mark.parametrize("name", sorted(set(OTHER_VALUE) - WEIGHTS_UNAFFECTED))
def test_resume_refuses_any_changed_training_setting(interrupted, name):
    before = (interrupted / STATE_FILE).read_bytes()
    changed = ", ".join(f"'{k}'" for k in sorted({name, *ALONG.get(name, {})}))
    with pytest.raises(ValueError, match=f"training settings changed since the checkpoint \\(\\[{changed}\\]\\)"):
        floatify.fit(tiny_model(), loader(), checkpoint_dir=interrupted, resume=True,
                     **{**KW, **ALONG.get(name, {}), name: OTHER_VALUE[name]})
    assert (interrupted / STATE_FILE).read_bytes() == before


@pytest.mark.parametrize("name", sorted(WEIGHTS_UNAFFECTED))
def test_resume_accepts_a_changed_setting_that_leaves_the_weights_alone(tmp_path, name):
    straight, _ = _trained()
    with pytest.raises(Stop):
        floatify.fit(tiny_model(), loader(), checkpoint_dir=tmp_path, on_epoch_end=stop_after(1), **KW)
    resumed = tiny_model()
    extra = {"eval_loader": loader(shuffle=False)} if name == "eval_every" else {}
    floatify.fit(resumed, loader(), checkpoint_dir=tmp_path, resume=True, **{**KW, name: OTHER_VALUE[name]}, **extra)
    assert weights_equal(straight, resumed)


# ------------------------------------------------------------------------------------------------ model EMA
def test_with_model_ema_fit_returns_the_ema_weights_and_saves_both(tmp_path):
    model = tiny_model()
    floatify.fit(model, loader(), checkpoint_dir=tmp_path, model_ema=True, model_ema_decay=0.9, **KW)
    state = load_state(tmp_path / STATE_FILE)
    ema, raw = state["ema"]["model"], state["model"]
    assert ema.keys() == raw.keys() == model.state_dict().keys()  # α, both BatchNorm sets, every buffer
    assert all(torch.equal(v, ema[k]) for k, v in model.state_dict().items())
    averaged = [k for k in raw if raw[k].is_floating_point() and not torch.equal(raw[k], ema[k])]
    assert {"0.weight_alpha", "1.weight_adv", "1.running_mean", "1.running_mean_adv", "5.weight"} <= set(averaged)
    plain, _ = _trained()
    assert weights_equal(_trained(model_ema=True, model_ema_decay=0.0)[0], plain)  # decay 0: the EMA is the model


def test_the_ema_follows_timm_with_warm_up(monkeypatch):
    from timm.utils import ModelEmaV3

    import floatify.train

    model = tiny_model()
    floatify.fit(model, loader(), epochs=1, steps=1, progress=False, model_ema=True, model_ema_decay=0.9)
    # the same run without EMA, a timm EMA updated by hand after every optimizer step
    raw = tiny_model()
    reference, decays = ModelEmaV3(raw, decay=0.9, use_warmup=True), []
    train_step = floatify.train._train_step

    def step_then_average(run, x, y, lams, global_step):
        loss = train_step(run, x, y, lams, global_step)
        reference.update(run.inner, step=global_step + 1)
        decays.append(reference.get_decay(global_step + 1))
        return loss

    monkeypatch.setattr(floatify.train, "_train_step", step_then_average)
    floatify.fit(raw, loader(), epochs=1, steps=1, progress=False)
    assert decays[0] == 0.0 and 0 < decays[-1] < 0.9  # warm-up: a copy first, so a short run's EMA still moves
    assert weights_equal(model, reference.module) and not weights_equal(model, raw)


# -------------------------------------------------------------------------------------------- the quick look
def test_eval_every_adds_the_quick_look_without_changing_training(tmp_path):
    plain, plain_history = _trained(epochs=3)
    looked = tiny_model()
    history = floatify.fit(looked, loader(), eval_every=2, eval_loader=loader(shuffle=False), checkpoint_dir=tmp_path,
                           **{**KW, "epochs": 3})
    assert weights_equal(plain, looked)
    assert [r["loss"] for r in history] == [r["loss"] for r in plain_history]
    keys = ("eval_clean_lam0", "eval_clean_lam1", "eval_robust_lam1")
    assert [all(k in r for k in keys) for r in history] == [False, True, False]
    assert all(0.0 <= history[1][k] <= 1.0 for k in keys)
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert [r["eval_robust_lam1"] for r in rows] == ["", str(history[1]["eval_robust_lam1"]), ""]


def test_the_quick_look_scores_the_model_fit_returns():
    from floatify.evaluate import evaluate

    model = tiny_model()
    history = floatify.fit(model, loader(), eval_every=2, eval_loader=loader(shuffle=False), model_ema=True, **KW)
    torch.manual_seed(0)
    report = evaluate(model, loader(shuffle=False), lams=(0.0,), attacks="quick", progress=False, max_batches=4)
    assert history[-1]["eval_clean_lam0"] == report.score(0.0, "clean").mean  # λ = 0 is deterministic


@pytest.mark.parametrize("kw, message", [
    (dict(eval_every=2), "eval_every=2 needs eval_loader"),
    (dict(eval_loader=[]), "eval_loader is given but eval_every is 0"),
])
def test_eval_every_and_eval_loader_come_together(kw, message):
    with pytest.raises(ValueError, match=message):
        floatify.fit(tiny_model(), loader(), **KW, **kw)


# ------------------------------------------------------------------------------------------------ summary.csv
def test_summary_csv_has_a_row_per_epoch_and_survives_a_resume(tmp_path):
    kw = dict(epochs=3, steps=1, strategy="oat", progress=False)
    straight = tmp_path / "straight"
    history = floatify.fit(tiny_model(), loader(), checkpoint_dir=straight, **kw)
    rows = list(csv.DictReader((straight / "summary.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert [float(r["loss"]) for r in rows] == [r["loss"] for r in history]
    lam_columns = [k for k in rows[0] if k.startswith("lam_")]
    assert lam_columns == sorted(lam_columns, key=lambda k: float(k[4:])) and "lam_0.00" in lam_columns
    assert [sum(int(r[k]) for k in lam_columns) for r in rows] == [4, 4, 4]  # one λ per batch, 4 batches
    cut = tmp_path / "cut"
    with pytest.raises(Stop):
        floatify.fit(tiny_model(), loader(), checkpoint_dir=cut, on_epoch_end=stop_after(2), **kw)
    floatify.fit(tiny_model(), loader(), checkpoint_dir=cut, resume=True, **kw)
    resumed = list(csv.DictReader((cut / "summary.csv").open()))
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in resumed] == \
        [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


# ------------------------------------------------------------------------------------------ schedule, optimizer
def _lrs(cfg, steps_per_epoch):
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
    cfg = TrainConfig(epochs=2, lr=0.1, warmup_epochs=warmup_epochs)
    warm, total = int(warmup_epochs * 4), 8
    want = [0.1 * (s + 1) / warm if s < warm else 0.05 * (1 + math.cos(math.pi * (s - warm) / (total - warm)))
            for s in range(total)]
    assert _lrs(cfg, 4) == pytest.approx(want, abs=1e-12)


def test_fit_warmup_grad_clip_and_adamw_reach_the_optimizer(tmp_path):
    warm = floatify.fit(tiny_model(), loader(), warmup_epochs=1, **KW)  # 4 steps per epoch
    assert warm[0]["lr"] == pytest.approx(0.1) and warm[1]["lr"] == pytest.approx(0.0, abs=1e-12)
    plain = floatify.fit(tiny_model(), loader(), **KW)
    assert plain[0]["lr"] == pytest.approx(0.05)  # cosine half way
    before = tiny_model().state_dict()
    clipped = tiny_model()
    floatify.fit(clipped, loader(), grad_clip=1e-9, lr=0.1, momentum=0.0, weight_decay=0.0, **KW)
    moved = max((clipped.state_dict()[k] - v).abs().max().item() for k, v in before.items() if v.is_floating_point()
                and "running" not in k)
    assert moved < 1e-8  # 8 steps of lr 0.1 × gradient norm 1e-9
    floatify.fit(tiny_model(), loader(), optimizer="adamw", lr=1e-3, checkpoint_dir=tmp_path, **KW)
    opt_state = load_state(tmp_path / STATE_FILE)["optimizer"]
    assert all("exp_avg_sq" in s for s in opt_state["state"].values())  # AdamW's moments were checkpointed


def test_amp_is_a_no_op_on_cpu():
    assert weights_equal(_trained(amp=True, epochs=1)[0], _trained(epochs=1)[0])


# ---------------------------------------------------------------------------------------------- the CPU heap
@pytest.mark.parametrize("setting, calls", [
    ({}, []),  # off by default: a library leaves its host's allocator alone
    (dict(keep_freed_heap=False), []),
    (dict(keep_freed_heap=True), ["mallopt", "mallopt", "malloc_trim", "mallopt", "mallopt"]),
])
def test_fit_keeps_freed_heap_on_cpu_only_when_asked(monkeypatch, tmp_path, setting, calls):
    libc = RecordingLibc()
    use_libc(monkeypatch, libc)
    seen = []
    floatify.fit(tiny_model(), loader(), checkpoint_dir=tmp_path, **KW, **setting,
                 on_epoch_end=lambda e, r: seen.append(len(libc.calls)))
    assert [c[0] for c in libc.calls] == calls
    assert seen == [2 if calls else 0] * 2, "set once before the first epoch, reset after the last"
    libc.calls.clear()  # a finished run resumed: nothing left to train, nothing tuned
    assert len(floatify.fit(tiny_model(), loader(), checkpoint_dir=tmp_path, resume=True, **KW, **setting)) == 2
    assert libc.calls == []


def test_fit_resets_the_heap_when_training_stops_with_an_error(monkeypatch):
    libc = RecordingLibc()
    use_libc(monkeypatch, libc)
    with pytest.raises(Stop):
        floatify.fit(tiny_model(), loader(), keep_freed_heap=True, on_epoch_end=stop_after(1), **KW)
    assert [c[0] for c in libc.calls] == ["mallopt", "mallopt", "malloc_trim", "mallopt", "mallopt"]


# ----------------------------------------------------------------------------------- hostile data, divergence
def _data(x: torch.Tensor, y: torch.Tensor) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=8)


# what the loader yields -> the one-line error fit raises before a raw torch error (or a CUDA assert) would
HOSTILE_BATCHES = [
    ("labels out of range", lambda: _data(torch.rand(16, 3, 6, 6), torch.randint(0, 3, (16,)) + 5), ValueError,
     "a label 7 is outside the model's 3 classes \\[0, 2\\]"),
    ("negative labels", lambda: _data(torch.rand(16, 3, 6, 6), -torch.ones(16, dtype=torch.long)), ValueError,
     "a label -1 is outside"),
    ("float labels", lambda: _data(torch.rand(16, 3, 6, 6), torch.rand(16)), TypeError,
     "needs integer class labels \\(torch.long\\), got a batch of torch.float32 labels"),
    ("one-hot labels", lambda: _data(torch.rand(16, 3, 6, 6), torch.eye(3)[torch.randint(0, 3, (16,))].long()),
     ValueError, "labels \\(8, 3\\)"),
    ("1-D inputs", lambda: _data(torch.rand(16), torch.randint(0, 3, (16,))), ValueError,
     "needs a batch of N inputs \\(N, C, H, W\\) and N labels \\(N,\\), got inputs \\(8,\\)"),
    ("integer images", lambda: _data(torch.randint(0, 255, (16, 3, 6, 6)), torch.randint(0, 3, (16,))), TypeError,
     "needs floating-point inputs in \\[0, 1\\], got a batch of torch.int64"),
]


@pytest.mark.parametrize("name, data, error, message", HOSTILE_BATCHES, ids=[r[0] for r in HOSTILE_BATCHES])
def test_hostile_batches_are_one_clear_error_before_a_step(tmp_path, name, data, error, message):
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(error, match=message) as err:
        floatify.fit(model, data(), checkpoint_dir=tmp_path, **KW)
    assert "\n" not in str(err.value) and not list(tmp_path.iterdir())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # not one step was taken


def _nan_weights():
    model = tiny_model()
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = float("nan")
    return model


# a run that cannot train -> where it stopped and the likely cause, in one line; nothing non-finite is saved
DIVERGING = [
    ("lr 1e30", tiny_model, dict(lr=1e30), "the loss is nan at epoch 1, step 2 \\(lr 1e\\+30\\); likely causes: a "
                                           "learning rate too large"),
    ("NaN weights", _nan_weights, {}, "the loss is nan at epoch 1, step 1 .*the inputs, labels or initial weights"),
    ("alpha_init 1e30", lambda: tiny_model(floatify.FloatConfig(alpha_init=1e30)), {},
     "holds NaN or inf after epoch 1; likely causes: .* a huge alpha_init"),
]


@pytest.mark.parametrize("name, model, kw, message", DIVERGING, ids=[r[0] for r in DIVERGING])
def test_a_diverging_run_stops_at_once_and_saves_nothing(tmp_path, name, model, kw, message):
    from floatify.train_guards import DivergedError

    with pytest.raises(DivergedError, match=message) as err:
        floatify.fit(model(), loader(), checkpoint_dir=tmp_path, **{**KW, **kw})
    assert f"training stopped and nothing was saved to {tmp_path}" in str(err.value)
    assert "\n" not in str(err.value) and not list(tmp_path.iterdir())


def test_a_run_diverging_later_keeps_its_last_good_state(tmp_path):
    from floatify.train_guards import DivergedError

    model = tiny_model()

    def poison(epoch, record):  # reason: the weights go bad after epoch 1, as a too large lr would make them
        with torch.no_grad():
            model[0].weight.fill_(float("inf"))

    with pytest.raises(DivergedError, match=f"epoch 2, step 1 .*the last good state \\(epoch 1\\) is kept in "
                                            f"{tmp_path}"):
        floatify.fit(model, loader(), checkpoint_dir=tmp_path, on_epoch_end=poison, **KW)
    state = load_state(tmp_path / STATE_FILE)  # finite, else reading it would refuse it
    assert state["epoch"] == 0 and len(state["history"]) == 1
