"""floatify.hub: the Hub holds exactly the saved folder; hf-hub: sources load from the local cache offline."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import floatify
from floatify.artifact import ArtifactError
from floatify.layers.noise import noise_source
from floatify.models import create_model

X = torch.rand(2, 3, 32, 32)


def _logits(model, lam: float) -> torch.Tensor:
    torch.manual_seed(1)
    with noise_source("fresh"), floatify.lam(lam):
        return model(X)


def _hub_cache(tmp_path: Path, folder: Path, repo: str = "owner/dial") -> Path:
    """The layout huggingface_hub's cache uses: models--owner--name/{refs/main, snapshots/<commit>/files}."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = tmp_path / "hub" / ("models--" + repo.replace("/", "--"))
    shutil.copytree(folder, repo_dir / "snapshots" / commit)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    return tmp_path / "hub"


def test_load_from_the_hub_cache_offline(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    model = floatify.convert(create_model("resnet10t", 10)).eval()
    cache = _hub_cache(tmp_path, floatify.save(model, tmp_path / "m"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    again = floatify.load("hf-hub:owner/dial")
    assert torch.equal(_logits(model, 0.0), _logits(again, 0.0))
    pinned = floatify.load("hf-hub:owner/dial@0123456789abcdef0123456789abcdef01234567")  # a revision
    assert torch.equal(_logits(model, 0.0), _logits(pinned, 0.0))
    with pytest.raises(ArtifactError, match="cannot fetch owner/missing"):
        floatify.load("hf-hub:owner/missing")


def test_push_to_hub_uploads_exactly_the_saved_folder(tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    calls: dict = {}

    def create_repo(self, repo_id, **kwargs):
        calls["repo"] = repo_id

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        calls["files"] = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
        calls["delete_patterns"] = kwargs.get("delete_patterns")
        return "https://huggingface.co/owner/dial/commit/abc"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    model = floatify.convert(create_model("resnet10t", 10)).eval()
    url = floatify.push_to_hub(model, "owner/dial")
    saved = floatify.save(model, tmp_path / "m")
    assert calls["repo"] == "owner/dial" and url.endswith("/commit/abc")
    assert calls["files"] == {p.name: p.read_bytes() for p in saved.iterdir()}
    assert calls["delete_patterns"] == ["*"], "files of an earlier push must not outlive this one"
