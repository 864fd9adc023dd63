"""``evaluate(model, loader, lams, attacks)``: the accuracy–robustness trade-off across λ.

Example:
    >>> import torch, floatify
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> model = floatify.convert(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)))
    >>> data = DataLoader(TensorDataset(torch.rand(8, 3, 2, 2), torch.randint(0, 3, (8,))), batch_size=4)
    >>> report = floatify.evaluate(model, data, lams=[0, 1], progress=False)
    >>> print(report.to_markdown())  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
import torch.nn as nn

from floatify.attacks import AttackSpec, attack_and_score, default_attacks
from floatify.context import validate_lam
from floatify.report import Report, Score

__all__ = ["evaluate"]


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def evaluate(
    model: nn.Module,
    loader: Iterable,
    lams: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    attacks: Sequence[AttackSpec] | None = None,
    *,
    score_draws: int = 10,
    num_classes: int | None = None,
    save_adversarial: str | Path | None = None,
    max_batches: int | None = None,
    progress: bool = True,
    meta: dict | None = None,
) -> Report:
    """Clean and robust accuracy of ``model`` at every λ in ``lams`` under every attack.

    Args:
        model: a converted model taking inputs in [0, 1].
        loader: yields ``(x, y)`` batches.
        lams: operating points to evaluate.
        attacks: :class:`~floatify.attacks.AttackSpec` list (default: clean, FGSM, PGD-10, EOT-PGD-10×10,
            PGD-10 with the noise off; L∞ eps 8/255).
        score_draws: noise draws per point when scoring a randomised model (λ > 0, noise on).
        save_adversarial: if given, a safetensors file receiving the kept adversarial inputs per (λ, attack).
        max_batches: evaluate only the first batches (quick looks; the report says so).
    """
    lams = [validate_lam(v) for v in lams]
    if not lams:
        raise ValueError("lams must name at least one operating point")
    attacks = list(attacks) if attacks is not None else default_attacks()
    labels = [a.label for a in attacks]
    if len(set(labels)) != len(labels):
        raise ValueError(f"attack labels must be unique, got {labels}")
    if not isinstance(score_draws, int) or score_draws < 1:
        raise ValueError(f"score_draws must be a positive int, got {score_draws!r}")
    device = _device_of(model)
    was_training = model.training
    model.eval()
    correct: dict[tuple[float, str], list[torch.Tensor]] = {(v, a.label): [] for v in lams for a in attacks}
    draws: dict[tuple[float, str], list[tuple[int, list[float]]]] = {k: [] for k in correct}
    kept: dict[str, list[torch.Tensor]] = {}
    batches = list(loader) if max_batches is None else [b for _, b in zip(range(max_batches), loader)]
    from tqdm.auto import tqdm

    bar = tqdm(total=len(batches) * len(lams) * len(attacks), desc="evaluate", disable=not progress, leave=False)
    try:
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            for v in lams:
                for spec in attacks:
                    bar.set_postfix_str(f"λ={v:g} {spec.label}")
                    if spec.kind == "autoattack" and v > 0 and spec.noise:
                        correct[(v, spec.label)] = None  # reason: not applicable to a randomised model
                        bar.update()
                        continue
                    batch_draws: list[float] = []
                    x_adv, c = attack_and_score(model, spec, x, y, v, score_draws, num_classes, batch_draws)
                    correct[(v, spec.label)].append(c.cpu())
                    draws[(v, spec.label)].append((len(y), batch_draws))
                    if save_adversarial is not None and spec.kind != "clean":
                        kept.setdefault(f"lam={v:g}/{spec.label}", []).append(x_adv.detach().cpu())
                    bar.update()
    finally:
        bar.close()
        model.train(was_training)
    scores: dict[str, dict[str, Score | None]] = {}
    for v in lams:
        row = {}
        for spec in attacks:
            parts = correct[(v, spec.label)]
            row[spec.label] = None if parts is None else _score(torch.cat(parts), draws[(v, spec.label)])
        scores[str(float(v))] = row
    info = {"score_draws": score_draws, "eps": f"{attacks[0].eps:.5f}", "points": int(sum(len(b[1]) for b in batches))}
    if max_batches is not None:
        info["max_batches"] = max_batches
    info.update(meta or {})
    if save_adversarial is not None:
        from safetensors.torch import save_file

        save_file({k: torch.cat(v).contiguous() for k, v in kept.items()}, str(save_adversarial))
    return Report(lams, {a.label: a.describe() for a in attacks}, scores, info)


def _score(per_point: torch.Tensor, batches: list[tuple[int, list[float]]]) -> Score:
    """Mean ± 95% CI half-width from two variance sources.

    Points: the spread of the per-point expected accuracies over the n test points. Noise draws: one
    draw is shared by a whole batch, so the draw-to-draw spread of each batch's accuracy adds a term
    (weighted by the batch's share of the points); ignoring it would make the interval too narrow.
    """
    n = per_point.numel()
    mean = per_point.mean().item()
    var_points = per_point.var(unbiased=True).item() / n if n > 1 else 0.0
    var_draws = 0.0
    for size, accs in batches:
        if len(accs) > 1:
            var_draws += (size / n) ** 2 * torch.tensor(accs).var(unbiased=True).item() / len(accs)
    return Score(mean, 1.96 * math.sqrt(var_points + var_draws), n)
