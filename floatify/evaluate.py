"""``evaluate(model, loader, lams, attacks)``: the accuracy–robustness trade-off across λ.

Per λ the report's headline is the robust accuracy under the **worst case per point over every attack
run on the noisy model** (clean input included), as AutoAttack counts an ensemble: a point counts as
robust only as far as it survives all of them. Single-attack columns stay as detail; attacks on the
noise-off model measure a different, deterministic model and stay out of the headline.

Example:
    >>> import torch, floatify
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> model = floatify.convert(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)))
    >>> data = DataLoader(TensorDataset(torch.rand(8, 3, 2, 2), torch.randint(0, 3, (8,))), batch_size=4)
    >>> report = floatify.evaluate(model, data, lams=[0, 1], attacks="quick", progress=False)
    >>> report.headline
    'worst case (3 attacks)'
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from floatify.attacks import PRESETS, SCORE_DRAWS, AttackSpec, attack_and_score, expected_correct, strongest
from floatify.context import operating_point, validate_lam
from floatify.layers.noise import get_noise_source
from floatify.layers.noise import noise_source as use_noise_source
from floatify.report import Report, Score

__all__ = ["evaluate", "EvalConfig"]


@dataclass(frozen=True)
class EvalConfig:
    """The evaluation settings and their defaults: :func:`evaluate`'s and the CLI's (one source).

    Attributes:
        lams: operating points to evaluate.
        attacks: a preset (``"strong"``, ``"quick"``) or, on the command line, a comma list of attacks.
        eps: L∞ budget of the attacks in pixel units (None: the training eps).
        steps: attack iterations (None: the preset's).
        eot_draws: noise draws averaged per attack iteration on a randomised model (None: the preset's).
        score_draws: fresh noise draws per point when scoring a randomised model.
        limit: evaluate only the first N test points (None: all).
        batch_size: evaluation batch size; large batches amortise the per-forward noise draw.
        noise_source: where the weight noise comes from (:mod:`floatify.layers.noise`): ``"bank"`` or
            ``"fresh"``; None: the active one (``"bank"`` unless inside ``noise_source(...)``).
    """

    lams: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    attacks: str = "strong"
    eps: float | None = None
    steps: int | None = None
    eot_draws: int | None = None
    score_draws: int = SCORE_DRAWS
    limit: int | None = None
    batch_size: int = 512
    noise_source: str | None = None


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _length(loader: Iterable) -> int | None:
    """``len(loader)`` where it has one (a DataLoader over an IterableDataset raises TypeError)."""
    try:
        return len(loader) if isinstance(loader, Sized) else None
    except TypeError:
        return None


def _in_headline(spec: AttackSpec) -> bool:
    return spec.noise


def evaluate(
    model: nn.Module,
    loader: Iterable,
    lams: Sequence[float] = EvalConfig.lams,
    attacks: Sequence[AttackSpec] | str | None = None,
    *,
    eps: float = 8 / 255,
    score_draws: int = EvalConfig.score_draws,
    num_classes: int | None = None,
    save_adversarial: str | Path | None = None,
    max_batches: int | None = None,
    progress: bool = True,
    meta: dict | None = None,
    noise_source: str | None = EvalConfig.noise_source,
) -> Report:
    """Clean and robust accuracy of ``model`` at every λ in ``lams`` under every attack.

    Args:
        model: a converted model taking inputs in [0, 1].
        loader: yields ``(x, y)`` batches, ``x`` in [0, 1].
        lams: operating points to evaluate.
        attacks: a preset name (``"strong"``: APGD-CE/DLR with EOT, transfer, noise-off APGD — what to
            report; ``"quick"``: FGSM/PGD/EOT-PGD, fast looks) built at ``eps``, or a list of
            :class:`~floatify.attacks.AttackSpec`. Default: ``"strong"``.
        eps: the L∞ budget of a preset (pixel units).
        score_draws: noise draws per point when scoring a randomised model (λ > 0, noise on).
        save_adversarial: if given, a safetensors file receiving the kept adversarial inputs per (λ, attack).
        max_batches: evaluate only the first batches (quick looks; the report says so).
        noise_source: ``"bank"`` or ``"fresh"`` (:mod:`floatify.layers.noise`), for the attacks and the scoring;
            None: the active one. The report names it (``weight_noise``).
    """
    if noise_source is not None:
        with use_noise_source(noise_source):
            return evaluate(model, loader, lams, attacks, eps=eps, score_draws=score_draws, num_classes=num_classes,
                            save_adversarial=save_adversarial, max_batches=max_batches, progress=progress, meta=meta)
    lams = [validate_lam(v) for v in lams]
    if not lams:
        raise ValueError("lams must name at least one operating point")
    preset = "custom"
    if attacks is None:
        attacks = EvalConfig.attacks
    if isinstance(attacks, str):
        if attacks not in PRESETS:
            raise ValueError(f"unknown attack preset '{attacks}'; choose one of {', '.join(PRESETS)}")
        preset, attacks = attacks, PRESETS[attacks](eps)
    attacks = list(attacks)
    if not attacks or not all(isinstance(a, AttackSpec) for a in attacks):
        raise ValueError("attacks must be a preset name or a non-empty list of floatify.attacks.AttackSpec")
    labels = [a.label for a in attacks]
    if len(set(labels)) != len(labels):
        raise ValueError(f"attack labels must be unique, got {labels}")
    if not isinstance(score_draws, int) or isinstance(score_draws, bool) or score_draws < 1:
        raise ValueError(f"score_draws must be a positive int, got {score_draws!r}")
    ensemble = [a for a in attacks if _in_headline(a)]
    headline = f"worst case ({sum(a.kind != 'clean' for a in ensemble)} attacks)" if any(
        a.kind != "clean" for a in ensemble) else None
    if headline in labels:
        raise ValueError(f"'{headline}' is reserved for the headline column; rename that attack")
    device = _device_of(model)
    was_training = model.training
    model.eval()
    keys = labels + ([headline] if headline else [])
    correct: dict[tuple[float, str], list[torch.Tensor] | None] = {(v, k): [] for v in lams for k in keys}
    draws: dict[tuple[float, str], list[tuple[int, list[float]]]] = {k: [] for k in correct}
    kept: dict[str, list[torch.Tensor]] = {}
    # reason: the loader is streamed, never held in memory as a whole (a test set need not fit)
    batches: Iterable = loader if max_batches is None else itertools.islice(loader, max_batches)
    n_batches = _length(loader)
    if max_batches is not None:
        n_batches = max_batches if n_batches is None else min(n_batches, max_batches)
    from tqdm.auto import tqdm

    bar = tqdm(total=None if n_batches is None else n_batches * len(lams) * len(attacks), desc="evaluate",
               disable=not progress, leave=False)
    points = 0
    try:
        for x, y in batches:
            if len(y) == 0:
                continue
            x, y = x.to(device), y.to(device)
            _check_batch(x, y, num_classes)
            points += len(y)
            for v in lams:
                candidates = []
                for spec in attacks:
                    bar.set_postfix_str(f"λ={v:g} {spec.label}")
                    if (spec.kind == "autoattack" and v > 0 and spec.noise) or (spec.kind == "transfer" and v == 0):
                        correct[(v, spec.label)] = None  # reason: not applicable at this λ (see the report note)
                        bar.update()
                        continue
                    batch_draws: list[float] = []
                    x_adv, c = attack_and_score(model, spec, x, y, v, score_draws, num_classes, batch_draws)
                    correct[(v, spec.label)].append(c.cpu())  # type: ignore[union-attr]  # reason: None only when n/a
                    draws[(v, spec.label)].append((len(y), batch_draws))
                    if _in_headline(spec):
                        candidates.append((x_adv, c))
                    if save_adversarial is not None and spec.kind != "clean":
                        kept.setdefault(f"lam={v:g}/{spec.label}", []).append(x_adv.detach().cpu())
                    bar.update()
                if headline:
                    x_worst, c = _worst_case(model, candidates, x, y, v, score_draws, draws[(v, headline)])
                    correct[(v, headline)].append(c.cpu())  # type: ignore[union-attr]
                    if save_adversarial is not None:
                        kept.setdefault(f"lam={v:g}/worst-case", []).append(x_worst.detach().cpu())
    finally:
        bar.close()
        model.train(was_training)
    if points == 0:
        raise ValueError("the evaluation loader yielded no data")
    scores: dict[str, dict[str, Score | None]] = {}
    for v in lams:
        row = {}
        for key in keys:
            parts = correct[(v, key)]
            row[key] = None if parts is None else _score(torch.cat(parts), draws[(v, key)])
        scores[str(float(v))] = row
    info = {"preset": preset, "score_draws": score_draws, "eps": f"{attacks[0].eps:.5f}",
            "points": points, "weight_noise": get_noise_source()}  # reason: the attacker faced this noise source
    if max_batches is not None:
        info["max_batches"] = max_batches
    info.update(meta or {})
    descriptions = {a.label: a.describe() for a in attacks}
    if headline:
        names = ", ".join(a.label for a in ensemble if a.kind != "clean")
        descriptions = {headline: f"per point, the worst case over {names} (and the clean input), re-scored with "
                                  f"fresh noise draws: the headline robust accuracy", **descriptions}
    if save_adversarial is not None:
        from safetensors.torch import save

        from floatify.io import atomic_write

        atomic_write(save_adversarial, save({k: torch.cat(v).contiguous() for k, v in kept.items()}))
    clean = next((a.label for a in attacks if a.kind == "clean"), None)
    return Report(lams, descriptions, scores, info, headline=headline, clean_label=clean,
                  noise_off=[a.label for a in attacks if not a.noise])


def _check_batch(x: torch.Tensor, y: torch.Tensor, num_classes: int | None) -> None:
    if not torch.is_floating_point(x):
        raise ValueError(f"inputs must be float images in [0, 1], got dtype {x.dtype}")
    lo, hi = x.min().item(), x.max().item()
    if lo < 0 or hi > 1:
        raise ValueError(f"inputs must be images in [0, 1] (eps is in pixel units), got values in [{lo:.3g}, {hi:.3g}]"
                         "; put normalisation inside the model (floatify.models.Normalized)")
    if num_classes is not None and (y.min().item() < 0 or y.max().item() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes - 1}], got [{y.min().item()}, {y.max().item()}]")


def _worst_case(model, candidates, x, y, lam, score_draws, per_draw_log) -> tuple[torch.Tensor, torch.Tensor]:
    """Per point the candidate with the lowest score; a randomised model re-scores it with fresh draws.

    reason: the minimum over several noisy estimates is biased low (and picking by it is a selection);
    scoring the selected points afresh gives the expected accuracy of a fixed set of adversarial inputs.
    """
    if not any(torch.equal(c[0], x) for c in candidates):
        with operating_point(lam):
            candidates = [(x, expected_correct(model, x, y, score_draws if lam > 0 else 1)), *candidates]
    worst, worst_score = strongest(candidates)
    batch_draws: list[float] = []
    if lam > 0:
        with operating_point(lam):
            worst_score = expected_correct(model, worst, y, score_draws, batch_draws)
    else:
        batch_draws.append(worst_score.mean().item())
    per_draw_log.append((len(y), batch_draws))
    return worst, worst_score


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
