"""The run state of fit: what resuming reads, what it refuses, summary.csv and the RNG helpers."""

from __future__ import annotations

import json
import random

import pytest
import torch
import torch.nn as nn

import floatify
from floatify.checkpoint import CheckpointError, load_state, save_state
from floatify.layers.dual_bn import set_bn_mix
from floatify.run_state import (
    OLD_STATE_FILE,
    STATE_FILE,
    STATE_KEYS,
    conversion_settings,
    preserved_rng,
    read_state_tag,
    save_run_state,
    summary_csv,
)

from tiny_training import Stop, loader, stop_after, tiny_model

KW = dict(epochs=2, steps=1, progress=False)


def _interrupted_run(folder, **kw):
    """A run stopped after its first epoch (its state written), as a kill would leave it."""
    with pytest.raises(Stop):
        floatify.fit(tiny_model(), loader(), checkpoint_dir=folder, on_epoch_end=stop_after(1), **{**KW, **kw})


# ------------------------------------------------------------------------------------------- damaged states
def _write(path, data):
    path.write_bytes(data)


def _truncate(path):
    path.write_bytes(path.read_bytes()[:200])


def _checkpoint_instead(path):
    floatify.checkpoint.save_checkpoint(path, tiny_model(), {})


def _edit(change):
    def damage(path):
        state = load_state(path)
        change(state)
        save_state(path, state)

    return damage


@pytest.mark.parametrize("damage, message", [
    (lambda p: _write(p, b""), "truncated or corrupted"),
    (lambda p: _write(p, b"\x00garbage" * 50), "truncated or corrupted"),
    (_truncate, "truncated or corrupted"),
    (_checkpoint_instead, "not a floatify state file"),
    (lambda p: save_state(p, {"epoch": 0}), "incomplete"),
    (lambda p: save_state(p, [1, 2]), "incomplete"),
    (_edit(lambda s: s.pop("conversion")), "written by an older floatify \\(no conversion\\)"),
    (_edit(lambda s: s["config"].pop("noise_draw")), "written by an older floatify \\(no setting noise_draw\\)"),
    (_edit(lambda s: s.update(config="sgd")), "corrupted \\(config is not an object\\)"),
    (_edit(lambda s: s.update(model={"0.weight": "not a tensor"})), "does not fit this model"),
    (_edit(lambda s: s.update(optimizer={})), "corrupted or from another run"),
    # a state edited by hand is untrusted input: every field a resume trains from or returns is checked
    (_edit(lambda s: s.update(epoch=-5)), "'epoch' is -5, not an int in \\[0, 1\\]"),
    (_edit(lambda s: s.update(epoch=1e30)), "'epoch' is 1e\\+30, not an int"),
    (_edit(lambda s: s.update(epoch=2)), "'epoch' is 2, not an int in \\[0, 1\\]"),
    (_edit(lambda s: s.update(epoch=True)), "'epoch' is True"),
    (_edit(lambda s: s.update(epoch="1")), "'epoch' is '1'"),
    (_edit(lambda s: s["config"].update(epochs="2")), "config 'epochs' is '2'"),
    (_edit(lambda s: s.update(history=[1, 2, "x"])), "'history' holds 3 records, not one per epoch trained \\(2\\)"),
    (_edit(lambda s: s.update(history="garbage")), "'history' holds str records"),
    (_edit(lambda s: s["history"].__setitem__(1, "x")), "'history' record 2 is a str"),
    (_edit(lambda s: s["history"][0].update(epoch=7)), "'history' record 1 has epoch 7, expected 1"),
    (_edit(lambda s: s["history"][1].update(loss=float("nan"))), "'history' record 2 has loss nan"),
    (_edit(lambda s: s["history"][0].update(lam_counts=[1])), "'history' record 1 has no lam_counts"),
    (_edit(lambda s: s["history"][0].update(note="hi")), "'history' record 1 has a non-number note"),
    (_edit(lambda s: s["model"]["1.weight"].fill_(float("nan"))),
     "non-finite values \\(NaN or inf\\) in 'model.1.weight'"),
    (_edit(lambda s: next(iter(s["optimizer"]["state"].values()))["momentum_buffer"].fill_(float("inf"))),
     "non-finite values \\(NaN or inf\\) in 'optimizer.state.0.momentum_buffer'"),
])
def test_a_damaged_or_old_train_state_is_one_clear_error(tmp_path, damage, message):
    floatify.fit(tiny_model(), loader(), checkpoint_dir=tmp_path, **KW)
    damage(tmp_path / STATE_FILE)
    with pytest.raises(CheckpointError, match=message) as err:
        floatify.fit(tiny_model(), loader(), checkpoint_dir=tmp_path, resume=True, **KW)
    assert STATE_FILE in str(err.value) and "start afresh" in str(err.value)
    assert len(str(err.value).splitlines()) == 1


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # unpickling this creates the marker file


@pytest.mark.parametrize("content", ["code", "tensors"])
def test_an_old_pickle_state_is_refused_unread(tmp_path, content):
    marker = tmp_path / "pwned"
    state = {"model": _Evil(str(marker))} if content == "code" else {"model": {"w": torch.zeros(2)}, "epoch": 0}
    torch.save(state, tmp_path / OLD_STATE_FILE)
    with pytest.raises(CheckpointError, match="train_state.pt was written by an older floatify.*start afresh"):
        floatify.fit(tiny_model(), loader(), checkpoint_dir=tmp_path, resume=True, **KW)
    assert not marker.exists()


def test_a_train_state_that_is_a_directory_is_one_clear_error(tmp_path):
    floatify.fit(tiny_model(), loader(), checkpoint_dir=tmp_path, **KW)
    (tmp_path / STATE_FILE).unlink()
    (tmp_path / STATE_FILE).mkdir()
    with pytest.raises(CheckpointError, match="is a directory, not the file floatify writes; move it away") as err:
        floatify.fit(tiny_model(), loader(), checkpoint_dir=tmp_path, resume=True, **KW)
    assert "model.safetensors" not in str(err.value)  # the hint for a checkpoint folder does not apply here


def test_a_resume_rewrites_history_json_from_the_checked_state(tmp_path):
    history = floatify.fit(tiny_model(), loader(), checkpoint_dir=tmp_path, **KW)
    (tmp_path / "history.json").write_text("garbage{")
    (tmp_path / "summary.csv").write_text("garbage")
    assert floatify.fit(tiny_model(), loader(), checkpoint_dir=tmp_path, resume=True, **KW) == history
    assert json.loads((tmp_path / "history.json").read_text()) == history
    assert (tmp_path / "summary.csv").read_text() == summary_csv(history)


def test_resume_without_a_state_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"no .*{STATE_FILE}"):
        floatify.fit(tiny_model(), loader(), checkpoint_dir=tmp_path, resume=True, **KW)
    with pytest.raises(FileNotFoundError, match="needs checkpoint_dir"):
        floatify.fit(tiny_model(), loader(), resume=True, **KW)


# ----------------------------------------------------------------------------------------- another run
def _other_model():
    torch.manual_seed(0)
    return floatify.convert(nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                          nn.Linear(5, 3)))


@pytest.mark.parametrize("model, data, tag, message", [
    (_other_model, loader, None, "does not fit this model"),
    (lambda: floatify.sparsify(tiny_model(), 0.5), loader, None, "does not fit this model"),
    (lambda: tiny_model(floatify.FloatConfig(dual_bn=False)), loader, None, "does not fit this model"),
    (tiny_model, lambda: loader(bs=4), None, "training data changed .*batch_size 8 -> 4"),
    (tiny_model, lambda: loader(n=24), None, "training data changed .*dataset_size 32 -> 24"),
    (tiny_model, loader, {"density": 0.5}, "run's settings changed .*density"),
    (lambda: tiny_model(floatify.FloatConfig(bn_curve=1.0)), loader, None, "conversion settings changed .*bn_curve"),
    (lambda: tiny_model(floatify.FloatConfig(bn_mix="switch")), loader, None, "conversion settings changed .*bn_mix"),
    (lambda: tiny_model(floatify.FloatConfig(alpha_init=0.1)), loader, None,
     "conversion settings changed .*alpha_init"),
])
def test_resume_with_other_model_data_conversion_or_tag_is_refused(tmp_path, model, data, tag, message):
    _interrupted_run(tmp_path)
    with pytest.raises(ValueError, match=message):
        floatify.fit(model(), data(), checkpoint_dir=tmp_path, resume=True, tag=tag, **KW)


def test_the_tag_is_stored_and_compared(tmp_path):
    _interrupted_run(tmp_path, tag={"model": "tiny", "density": None})
    assert read_state_tag(tmp_path) == {"model": "tiny", "density": None}
    with pytest.raises(ValueError, match="run's settings changed .*model"):
        floatify.fit(tiny_model(), loader(), checkpoint_dir=tmp_path, resume=True, tag=None, **KW)
    history = floatify.fit(tiny_model(), loader(), checkpoint_dir=tmp_path, resume=True,
                           tag={"model": "tiny", "density": None}, **KW)
    assert [r["epoch"] for r in history] == [1, 2]


def test_a_tag_setting_the_stored_run_lacks_is_named_as_an_older_state(tmp_path):
    _interrupted_run(tmp_path, tag={"model": "tiny"})
    new = {"model": "tiny", "mean": (0.5, 0.5, 0.5), "std": None}  # None: the default, as if never recorded
    with pytest.raises(CheckpointError, match="records no mean \\(written by an older floatify, or with another "
                                              "tag\\); start afresh"):
        floatify.fit(tiny_model(), loader(), checkpoint_dir=tmp_path, resume=True, tag=new, **KW)
    history = floatify.fit(tiny_model(), loader(), checkpoint_dir=tmp_path, resume=True,
                           tag={"model": "tiny", "std": None}, **KW)
    assert [r["epoch"] for r in history] == [1, 2]


# ------------------------------------------------------------------------------------------ conversion
def _mixed_curves():
    model = tiny_model(floatify.FloatConfig(bn_curve=0.5))
    set_bn_mix(model[1], "interpolate", 2.0)
    return model


@pytest.mark.parametrize("make, expected", [
    (tiny_model, {"alpha_init": 0.25, "bn_mix": "interpolate", "bn_curve": 0.7}),
    (lambda: tiny_model(floatify.FloatConfig(alpha_init=0.5, bn_mix="switch", bn_curve=1.5)),
     {"alpha_init": 0.5, "bn_mix": "switch", "bn_curve": 1.5}),
    (lambda: tiny_model(floatify.FloatConfig(dual_bn=False)), {"alpha_init": 0.25, "bn_mix": None, "bn_curve": None}),
    (lambda: floatify.convert(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Linear(2, 2), nn.BatchNorm1d(2))),
     {"alpha_init": 0.25, "bn_mix": "interpolate", "bn_curve": 0.7}),
])
def test_conversion_settings_read_off_the_model(make, expected):
    assert conversion_settings(make()) == expected


def test_conversion_settings_name_layers_that_differ():
    model = floatify.convert(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Linear(2, 2), nn.BatchNorm1d(2)))
    set_bn_mix(model[3], "switch", 2.0)
    assert conversion_settings(model) == {"alpha_init": 0.25, "bn_mix": {"1": "interpolate", "3": "switch"},
                                          "bn_curve": {"1": 0.7, "3": 2.0}}


# ----------------------------------------------------------------------------------------- summary.csv
@pytest.mark.parametrize("history, expected", [
    ([], "epoch,loss,lr,seconds\n"),
    ([{"epoch": 1, "loss": 0.5, "lam_counts": {"1.00": 2, "0.00": 2}, "seconds": 3.0, "lr": 0.1}],
     "epoch,loss,lr,seconds,lam_0.00,lam_1.00\n1,0.5,0.1,3.0,2,2\n"),
    ([{"epoch": 1, "loss": 0.5, "lr": 0.1, "seconds": 3.0, "lam_counts": {"0.40": 1, "0.00": 3}},
      {"epoch": 2, "loss": 0.4, "lr": 0.0, "seconds": 2.0, "lam_counts": {"1.00": 4}, "eval_clean_lam0": 0.75}],
     "epoch,loss,lr,seconds,eval_clean_lam0,lam_0.00,lam_0.40,lam_1.00\n1,0.5,0.1,3.0,,3,1,0\n"
     "2,0.4,0.0,2.0,0.75,0,0,4\n"),
])
def test_summary_csv_has_one_row_per_epoch_and_a_column_per_lam(history, expected):
    assert summary_csv(history) == expected


# ------------------------------------------------------------------------------------------------ helpers
def test_preserved_rng_puts_the_global_rngs_back_even_after_an_error():
    torch.manual_seed(5)
    random.seed(5)
    expected = (torch.rand(3), random.random())
    torch.manual_seed(5)
    random.seed(5)
    with pytest.raises(KeyError), preserved_rng():
        torch.rand(100), random.random()
        raise KeyError
    got = (torch.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and got[1] == expected[1]


def test_save_run_state_names_what_a_state_lacks(tmp_path):
    with pytest.raises(ValueError, match="a run state needs .*conversion"):
        save_run_state(tmp_path, {k: None for k in STATE_KEYS if k != "conversion"})
