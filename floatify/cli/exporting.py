"""``floatify export SOURCE --out FILE``: the saved dial as one program whose λ is a run-time input.

``FILE`` is a ``torch.export`` program (``.pt2``; load it with ``torch.export.load(FILE).module()`` and call it
with ``(images, torch.tensor(λ))``), or with ``--onnx`` an ONNX model (inputs ``x`` and ``lam``; needs
``pip install 'floatify[onnx]'``). A frozen model exports as the plain model it is: images in, no λ input.

Example:
    >>> from floatify.cli.exporting import default_suffix
    >>> default_suffix(onnx=False), default_suffix(onnx=True)
    ('.pt2', '.onnx')
"""

from __future__ import annotations

from pathlib import Path

from floatify.cli.options import CliError, checked_out, parse_path

__all__ = ["add_export_parser", "run_export", "default_suffix"]


def default_suffix(onnx: bool) -> str:
    return ".onnx" if onnx else ".pt2"


def add_export_parser(sub) -> None:
    x = sub.add_parser("export", help="export a saved dial with λ as a run-time input (torch.export or ONNX)",
                       description="Load a saved dial and write it as one program that takes (images, λ): a "
                                   "torch.export program (.pt2) or, with --onnx, an ONNX model.")
    x.add_argument("source", help="a run folder, a floatify.save folder or hf-hub:owner/name[@revision]")
    x.add_argument("--out", type=parse_path, required=True, help="the file to write (.pt2, or .onnx with --onnx)")
    x.add_argument("--onnx", action="store_true", help="write ONNX instead of a torch.export program")
    x.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    x.add_argument("--image-size", type=int, default=None,
                   help="input resolution of the example the program is traced with (default: the model's)")


def _check(args) -> None:
    if args.out.suffix != default_suffix(args.onnx):
        raise CliError(f"--out {args.out} should end in {default_suffix(args.onnx)} "
                       f"({'ONNX' if args.onnx else 'a torch.export program'}); rename it")
    checked_out(args.out.parent, "--out's folder")
    if not args.out.parent.is_dir():
        raise CliError(f"the folder of --out, {args.out.parent}, does not exist; create it first")
    if args.out.is_dir():
        raise CliError(f"--out {args.out} is a folder; name a file")
    if args.out.exists() and not args.overwrite:
        raise CliError(f"{args.out} exists; pass --overwrite to replace it or choose another --out")
    if args.image_size is not None and args.image_size < 8:
        raise CliError(f"--image-size must be at least 8, got {args.image_size}")
    if args.onnx:
        try:
            import onnx  # noqa: F401
            import onnxscript  # noqa: F401
        except ImportError as err:
            raise CliError(f"--onnx needs the ONNX extra ({err.name} is missing): pip install 'floatify[onnx]'") \
                from None


def run_export(args) -> None:
    import io

    import torch

    import floatify
    from floatify.artifact import read_config, resolve_source
    from floatify.io import atomic_path, atomic_write

    _check(args)
    folder = resolve_source(args.source)  # reason: once: a Hub branch could move between two downloads
    config = read_config(folder)
    size = config["preprocessing"].get("input_size") or (config.get("training") or {}).get("image_size")
    size = args.image_size or (size[-1] if isinstance(size, list) else size)
    if not size:
        raise CliError(f"{args.source} does not record its input size; pass --image-size")
    model = floatify.load(folder)
    example = torch.rand(2, 3, size, size)
    frozen = config["frozen"] is not None
    if not args.onnx:
        program = _plain_program(model, example) if frozen else floatify.export(model, example)
        buffer = io.BytesIO()  # reason: torch.export.save wants a .pt2 name; the atomic temporary has another
        torch.export.save(program, buffer)
        atomic_write(args.out, buffer.getvalue())
    else:
        with atomic_path(args.out) as tmp:
            if frozen:  # reason: a frozen model is a plain one at a fixed λ: exported as it is, images only
                _plain_onnx(model, example, tmp)
            else:
                floatify.export_onnx(model, example, tmp)
    inputs = (f"images N×3×{size}×{size} in [0, 1]" + ("; frozen at λ = " + f"{config['frozen']['lam']:g}" if frozen
                                                        else ", λ a 0-d float tensor"))
    usage = ("run it with onnxruntime" if args.onnx else
             f"torch.export.load(path).module()({'x' if frozen else 'x, torch.tensor(0.5)'})")
    print(f"wrote {args.out}: inputs ({inputs}); {usage}")


def _plain_program(model, example):
    import torch

    with torch.no_grad():
        return torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))


def _plain_onnx(model, example, path: Path) -> None:
    import torch

    program = torch.onnx.export(model, (example,), dynamo=True, verbose=False,
                                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    assert program is not None  # reason: dynamo=True always returns the program
    program.save(str(path))
