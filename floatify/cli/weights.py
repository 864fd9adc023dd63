r"""The weights a training run starts from: random, ``--initial-checkpoint`` or timm's ``--pretrained`` (local only).

Everything here raises before the run folder is written: a file that does not fit names the first keys and shapes
that do not, and nothing is downloaded (``--pretrained`` reads the Hugging Face cache or ``--pretrained-file``).

Example:
    >>> from floatify.cli.weights import one_line
    >>> one_line(ValueError("first\n  second"))
    'first second'
"""

from __future__ import annotations

import contextlib
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from floatify.cli.options import CliError

__all__ = ["plain_model", "pretrained_is_local", "hub_offline", "one_line"]


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """No Hugging Face Hub request inside the block (``HF_HUB_OFFLINE=1``, also for an already imported hub)."""
    import importlib

    old_env = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        hub: Any = importlib.import_module("huggingface_hub.constants")
    except ImportError:
        hub = None
    old_flag = getattr(hub, "HF_HUB_OFFLINE", False)
    if hub is not None:
        hub.HF_HUB_OFFLINE = True  # reason: read from the environment at import, checked before every request
    try:
        yield
    finally:
        if hub is not None:
            hub.HF_HUB_OFFLINE = old_flag
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env


def one_line(err: BaseException, limit: int = 400) -> str:
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__
    return text if len(text) <= limit else text[:limit] + " ..."


_NOT_LOCAL_HINT = "pass --initial-checkpoint PATH (the weights of the plain model) or --pretrained-file PATH instead"


def pretrained_is_local(model: str) -> tuple[bool, str]:
    """Whether timm finds the pretrained weights of ``model`` without the network, and where it would look."""
    import torch
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(model)
    if cfg is None or not (cfg.hf_hub_id or isinstance(cfg.url, str)):
        raise CliError(f"--pretrained: timm has no pretrained weights for {model}; {_NOT_LOCAL_HINT}")
    if cfg.hf_hub_id:  # reason: timm prefers the Hub when huggingface_hub is installed (a timm dependency)
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = cfg.hf_hub_id.partition("@")
        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        found = [try_to_load_from_cache(repo, name, revision=revision or None) for name in names]
        return any(isinstance(f, str) for f in found), cfg.hf_hub_id
    from urllib.parse import urlparse

    url = str(cfg.url)
    return (Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)).is_file(), url


def plain_model(args, num_classes: int):
    """The unconverted model with its initial weights: random, --initial-checkpoint or --pretrained[-file].

    Raises before anything is written: a file that does not fit names the first keys/shapes that do not.
    """
    import timm

    from floatify.checkpoint import load_initial_checkpoint
    from floatify.models import create_model

    if not args.pretrained:
        model = create_model(args.model, num_classes)
        if args.initial_checkpoint is not None:
            load_initial_checkpoint(model, args.initial_checkpoint)
        return model
    if not timm.is_model(args.model):
        import torchvision

        if args.model in torchvision.models.list_models(module=torchvision.models):
            raise CliError(f"--pretrained: {args.model} is a torchvision model and floatify loads pretrained weights "
                           f"of timm models only; pass its weights file with --initial-checkpoint PATH instead")
        return create_model(args.model, num_classes)  # reason: says the name is unknown, with close matches
    kwargs: dict = {}
    source = "--pretrained"
    if args.pretrained_file is not None:
        source = f"--pretrained-file {args.pretrained_file}"
        if not args.pretrained_file.is_file():
            what = "is a directory" if args.pretrained_file.is_dir() else "does not exist"
            raise CliError(f"{source} {what}; pass the file holding timm's pretrained weights of {args.model}")
        kwargs["pretrained_cfg_overlay"] = {"file": str(args.pretrained_file)}
    else:
        local, where = pretrained_is_local(args.model)
        if not local:
            raise CliError(f"--pretrained: the pretrained weights of {args.model} ({where}) are not available "
                           f"locally and floatify does not download them; {_NOT_LOCAL_HINT}")
    from safetensors import SafetensorError

    with hub_offline():
        try:
            model = create_model(args.model, num_classes, pretrained=True, **kwargs)
        except (RuntimeError, OSError, KeyError, ValueError, EOFError, pickle.UnpicklingError, SafetensorError) as err:
            hint = (f"check that it holds timm's weights of {args.model}, or pass the plain model's weights with "
                    f"--initial-checkpoint PATH" if args.pretrained_file is not None else _NOT_LOCAL_HINT)
            raise CliError(f"{source}: the weights do not fit {args.model} with {num_classes} classes or cannot be "
                           f"read ({one_line(err)}); {hint}") from None
    from floatify.io import first_non_finite

    bad = first_non_finite(dict(model.state_dict()))  # reason: timm reads the file itself; checked once loaded
    if bad is not None:
        raise CliError(f"{source}: the weights hold non-finite values (NaN or inf) in '{bad}'; training cannot "
                       f"start from them: pass weights of a model that did not diverge")
    return model
