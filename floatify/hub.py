"""Sharing a saved model through the Hugging Face Hub: :func:`push_to_hub` and the ``hf-hub:`` source of
:func:`floatify.load`.

The Hub holds exactly the folder :func:`floatify.save` writes. Downloads fetch only floatify's files (weights as
safetensors, config, report, picture, model card): pickle weights are never fetched or loaded. Offline
(``HF_HUB_OFFLINE=1``) the local cache answers.

Example:
    >>> import floatify
    >>> floatify.load("hf-hub:not-an-id")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    floatify.artifact_config.ArtifactError: 'hf-hub:not-an-id' is not a Hub id; write it as hf-hub:owner/name[@revision]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch.nn as nn

from floatify.artifact import (
    CARD_FILE,
    CONFIG_FILE,
    HUB_PREFIX,
    PLOT_FILE,
    REPORT_FILE,
    WEIGHTS_FILE,
    ArtifactError,
    save,
)
from floatify.artifact_config import first_line

__all__ = ["push_to_hub", "download"]


def download(repo: str) -> Path:
    """The local folder of Hub model ``owner/name[@revision]`` (downloaded, or from the cache when offline)."""
    repo_id, _, revision = repo.partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ArtifactError(f"'{HUB_PREFIX}{repo}' is not a Hub id; write it as hf-hub:owner/name[@revision]")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ArtifactError("loading from the Hub needs huggingface_hub: pip install huggingface_hub") from None
    patterns = [WEIGHTS_FILE, CONFIG_FILE, REPORT_FILE, PLOT_FILE, CARD_FILE]
    try:
        return Path(snapshot_download(repo_id, revision=revision or None, allow_patterns=patterns))
    except Exception as err:  # reason: huggingface_hub raises many types (offline, missing repo, auth, network)
        raise ArtifactError(f"cannot fetch {repo_id} from the Hugging Face Hub ({type(err).__name__}: "
                            f"{first_line(err)}); check the id and your connection, or log in for a private "
                            f"repo (offline, only models already in the local cache load)") from None


def push_to_hub(model: nn.Module, repo_id: str, report=None, *, arch: str | dict | None = None,
                training: dict | None = None, private: bool | None = None, token: str | None = None,
                commit_message: str = "Upload floatify model") -> str:
    """Upload the folder :func:`save` writes to the Hugging Face Hub repository ``repo_id`` (created if missing).

    Returns the commit URL. Load it back with ``floatify.load("hf-hub:" + repo_id)``.
    """
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise ArtifactError("pushing to the Hub needs huggingface_hub: pip install huggingface_hub") from None
    with tempfile.TemporaryDirectory() as tmp:
        folder = save(model, Path(tmp) / "model", report, arch=arch, training=training)
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        # reason: files of an earlier push that this one lacks (its report, its picture) would describe another model
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message,
                                 delete_patterns=["*"])
    return str(getattr(info, "commit_url", info))
