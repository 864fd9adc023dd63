"""``evaluate(model, loader, config, **overrides)``: the accuracy–robustness trade-off across λ.

Per λ the report's headline is the robust accuracy under the **worst case per point over every attack
run on the noisy model** (clean input included), as AutoAttack counts an ensemble: a point counts as
robust only as far as it survives all of them. The worst inputs are re-scored with fresh draws; where a
member column is lower, the headline is that column (:func:`~floatify.headline.headline_score`), so it is never
above clean or any attack it is the worst of (:mod:`floatify.headline`). Single-attack columns stay as detail;
attacks on the noise-off model measure a different, deterministic model and stay out of the headline.

Example:
    >>> import torch, floatify
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> model = floatify.convert(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)))
    >>> data = DataLoader(TensorDataset(torch.rand(8, 3, 2, 2), torch.randint(0, 3, (8,))), batch_size=4)
    >>> report = floatify.evaluate(model, data, lams=[0, 1], attacks="quick", steps=2, progress=False)
    >>> report.headline
    'worst case (3 attacks)'
"""

from __future__ import annotations

import contextlib
import itertools
import math
import warnings
from collections.abc import Iterable, Iterator, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from floatify.attack_presets import PRESETS, parse_attacks
from floatify.attacks import AttackSpec, attack_and_score
from floatify.audit import AuditConfig, verdict
from floatify.audit_tap import SubsetTap
from floatify.config import check_choice, check_int, check_real, resolve
from floatify.context import validate_lam
from floatify.convert import FloatifyWarning
from floatify.eval_inputs import check_batch, check_classes, label_bound, notes_on, output_classes
from floatify.headline import Headline, headline_score, worst_case
from floatify.layers.noise import NOISE_SOURCES, get_noise_source
from floatify.layers.noise import noise_source as use_noise_source
from floatify.report import Report, Score
from floatify.scoring import SCORE_DRAWS

__all__ = ["evaluate", "EvalConfig", "DEFAULT_EPS"]

DEFAULT_EPS = 8 / 255
"""The library's attack budget when :attr:`EvalConfig.eps` is None (the CLI uses the training eps instead)."""


@dataclass(frozen=True)
class EvalConfig:
    """The evaluation settings and their defaults: :func:`evaluate`'s and the CLI's (one source).

    Every field can also be given to :func:`evaluate` as a keyword; it is validated the same way.

    Attributes:
        lams: operating points to evaluate (each in [0, 1]).
        attacks: a preset (``"strong"``: APGD-CE/DLR with EOT, transfer, noise-off APGD — what to report;
            ``"quick"``: FGSM/PGD/EOT-PGD, fast looks), a comma list of attack kinds (``"clean,apgd-ce"``,
            :func:`floatify.attack_presets.parse_attacks`) or a sequence of :class:`~floatify.attacks.AttackSpec`.
        eps: L∞ budget of a preset or list, in pixel units. None: 8/255 (:data:`DEFAULT_EPS`) in the library;
            the training eps on the command line. AttackSpecs carry their own eps.
        steps: attack iterations of a preset or list (None: the preset's).
        eot_draws: noise draws averaged per attack iteration on a randomised model (None: the preset's).
        score_draws: fresh noise draws per point when scoring a randomised model (λ > 0, noise on).
        limit: evaluate only the first N test points (None: all).
        batch_size: evaluation batch size where the batches are made here (the CLI's loader, or a Dataset
            given to :func:`evaluate`); large batches amortise the per-forward noise draw.
        noise_source: where the weight noise comes from (:mod:`floatify.layers.noise`): ``"bank"`` or
            ``"fresh"``; None: the active one (``"bank"`` unless inside ``noise_source(...)``).

    Example:
        >>> from floatify.evaluate import EvalConfig
        >>> EvalConfig(lams=[0, 1], attacks="quick", steps=3).attack_specs()[1][2].label
        'pgd-3'
    """

    lams: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    attacks: str | tuple[AttackSpec, ...] = "strong"
    eps: float | None = None
    steps: int | None = None
    eot_draws: int | None = None
    score_draws: int = SCORE_DRAWS
    limit: int | None = None
    batch_size: int = 512
    noise_source: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "lams", _checked_lams(self.lams))
        object.__setattr__(self, "attacks", _checked_attacks(self.attacks))
        check_real("eps", self.eps, low=0.0, high=1.0, optional=True, meaning="pixel units, inputs in [0, 1]")
        check_int("steps", self.steps, optional=True, meaning="attack iterations")
        check_int("eot_draws", self.eot_draws, optional=True, meaning="noise draws per attack iteration")
        check_int("score_draws", self.score_draws, meaning="noise draws per point")
        check_int("limit", self.limit, optional=True, meaning="test points")
        check_int("batch_size", self.batch_size)
        check_choice("noise_source", self.noise_source, NOISE_SOURCES, optional=True)
        given = [name for name in ("eps", "steps", "eot_draws") if getattr(self, name) is not None]
        if given and not isinstance(self.attacks, str):
            raise ValueError(f"{', '.join(given)} build the attacks of a preset or list; AttackSpecs carry their "
                             f"own: set {given[0]} on each AttackSpec, or pass attacks as a preset name")
        _check_labels(self.attack_specs()[1])

    def attack_specs(self) -> tuple[str, list[AttackSpec]]:
        """The preset's name (``"custom"`` for a list) and the attacks this config runs."""
        if not isinstance(self.attacks, str):
            return "custom", list(self.attacks)
        eps = self.eps if self.eps is not None else DEFAULT_EPS
        specs = parse_attacks(self.attacks, eps, self.steps, self.eot_draws)
        return (self.attacks if self.attacks in PRESETS else "custom"), specs


def _checked_lams(lams: object) -> tuple[float, ...]:
    if isinstance(lams, (str, bytes)) or not isinstance(lams, Iterable):
        raise TypeError(f"lams must be a sequence of operating points in [0, 1], got {lams!r}; e.g. lams=[0, 0.5, 1]")
    values = tuple(validate_lam(v) for v in lams)
    if not values:
        raise ValueError("lams must name at least one operating point, e.g. lams=[0, 0.5, 1]")
    twice = sorted({v for v in values if values.count(v) > 1})
    if twice:  # reason: a λ evaluated twice would count its points twice (n and the CI)
        raise ValueError(f"lams names λ={', '.join(f'{v:g}' for v in twice)} more than once "
                         f"({', '.join(f'{v:g}' for v in values)}); give each operating point once")
    return values


def _checked_attacks(attacks: object) -> str | tuple[AttackSpec, ...]:
    if isinstance(attacks, str):
        return attacks.strip()
    specs = tuple(attacks) if isinstance(attacks, Iterable) else ()
    if not specs or not all(isinstance(a, AttackSpec) for a in specs):
        raise ValueError("attacks must be a preset name or a non-empty list of floatify.attacks.AttackSpec")
    return specs


def _check_labels(attacks: list[AttackSpec]) -> None:
    labels = [a.label for a in attacks]
    if len(set(labels)) != len(labels):
        raise ValueError(f"attack labels must be unique, got {labels}; give repeated attacks a label=")
    headline = Headline.of(attacks)
    if headline is not None and headline.label in labels:
        raise ValueError(f"'{headline.label}' is reserved for the headline column; rename that attack")


@dataclass
class _Cell:
    """One cell of the report while it is measured: per-point correctness and each batch's per-draw accuracies."""

    applicable: bool = True
    correct: list[torch.Tensor] = field(default_factory=list)
    draws: list[tuple[int, list[float]]] = field(default_factory=list)

    def add(self, correct: torch.Tensor, batch_draws: list[float]) -> None:
        self.correct.append(correct.cpu())
        self.draws.append((len(correct), batch_draws))

    def score(self) -> Score | None:
        return _score(torch.cat(self.correct), self.draws) if self.applicable else None


@dataclass
class _Evaluation:
    """One :func:`evaluate` call in progress: what it runs and what it has measured so far."""

    model: nn.Module
    lams: tuple[float, ...]
    attacks: list[AttackSpec]
    headline: Headline | None
    score_draws: int
    num_classes: int | None
    cells: dict[float, dict[str, _Cell]]  # λ -> column label -> cell
    kept: dict[str, list[torch.Tensor]] | None  # "lam=v/label" -> adversarial inputs, when they are saved
    points: int = 0
    classes: tuple[int, str] | None = None  # the labels' bound and where it comes from (set on the first batch)
    labels: set[int] = field(default_factory=set)  # labels seen (two are enough to know it is not one class)
    tap: SubsetTap | None = None  # the audit's: receives each column's adversarial inputs for the audited points

    @classmethod
    def start(cls, model: nn.Module, config: EvalConfig, num_classes: int | None, keep: bool) -> _Evaluation:
        attacks = config.attack_specs()[1]
        headline = Headline.of(attacks)
        cells = {v: {a.label: _Cell(a.handler.applies(a, v)) for a in attacks} for v in config.lams}
        if headline is not None:
            for row in cells.values():
                row[headline.label] = _Cell()
        return cls(model, config.lams, attacks, headline, config.score_draws, num_classes, cells,
                   {} if keep else None)

    def keep(self, lam: float, name: str, points: torch.Tensor) -> None:
        if self.kept is not None:
            self.kept.setdefault(f"lam={lam:g}/{name}", []).append(points.detach().cpu())


def evaluate(
    model: nn.Module,
    loader: Iterable,
    config: EvalConfig | None = None,
    *,
    num_classes: int | None = None,
    save_adversarial: str | Path | None = None,
    max_batches: int | None = None,
    progress: bool = True,
    meta: dict | None = None,
    audit: bool | AuditConfig = False,
    **overrides: Any,
) -> Report:
    """Clean and robust accuracy of ``model`` at every λ of the config under every attack of it.

    Args:
        model: a converted model taking inputs in [0, 1] (a plain model is evaluated as a baseline: the
            report notes that λ has no effect, as a FloatifyWarning does).
        loader: yields ``(x, y)`` batches, ``x`` finite in [0, 1] (batch first), ``y`` integer class indices;
            or a map-style Dataset of ``(x, y)`` points, batched here by ``batch_size``. A batch that breaks
            this is a ValueError of one line before it is attacked.
        config: an :class:`EvalConfig` (default: every λ of ``EvalConfig.lams``, the strong preset at 8/255).
        num_classes: checks the labels (and saves AutoAttack a forward to read it off the model).
        save_adversarial: if given, a safetensors file receiving the kept adversarial inputs per (λ, attack).
        max_batches: evaluate only the first batches (quick looks; the report says so).
        progress: show a progress bar.
        meta: entries added to the report's settings.
        audit: True or a :class:`floatify.AuditConfig`: also audit the evaluation on its first test points
            (:mod:`floatify.audit`: budget sweep, unbounded and black-box attacks, convergence, ...) into
            ``report.audit``, and print its one-line verdict when ``progress``. It reuses the evaluation's attacks
            on those points; where it finds Square stronger than the white-box attacks, the headline takes Square
            on those points (a report note says so).
        **overrides: :class:`EvalConfig` fields replacing the config's (``lams=[0, 1]``, ``attacks="quick"``),
            validated as the config's; an unknown name is a TypeError listing the valid ones.
    """
    config = resolve(config, EvalConfig, overrides, "evaluate")
    check_int("max_batches", max_batches, optional=True)
    batches, n_batches = _batches(loader, config, max_batches)
    run = _Evaluation.start(model, config, num_classes, keep=save_adversarial is not None)
    tap = run.tap = SubsetTap.of(audit, model, config, loader, num_classes)
    with contextlib.nullcontext() if config.noise_source is None else use_noise_source(config.noise_source):
        _measure(run, batches if tap is None else tap.wrap(batches), n_batches, progress)
        info = _settings(run, config, max_batches, meta)  # reason: names the noise source the attacker faced
        checks = None if tap is None else tap.audit(run, config)  # reason: the same noise source as the attacks
        folded = [] if tap is None else tap.fold(run)  # reason: before the report, so its headline holds the fold
    if save_adversarial is not None:
        _save_adversarial(save_adversarial, run.kept or {})
    notes = notes_on(run.model, run.lams, run.labels)
    for note in notes:
        warnings.warn(note, FloatifyWarning, stacklevel=2)
    report = _report(run, info, notes + folded)
    if checks is not None:
        report.audit = checks
        if progress:
            print(verdict(checks))
    return report


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _length(loader: Iterable) -> int | None:
    """``len(loader)`` where it has one (a DataLoader over an IterableDataset raises TypeError)."""
    try:
        return len(loader) if isinstance(loader, Sized) else None
    except TypeError:
        return None


def _batches(data: Iterable, config: EvalConfig, max_batches: int | None) -> tuple[Iterable, int | None]:
    """The batches to evaluate (streamed, never held in memory as a whole) and how many there are, when known."""
    if isinstance(data, Dataset) and not isinstance(data, IterableDataset):
        data = DataLoader(data, batch_size=config.batch_size, shuffle=False)
    elif config.batch_size != EvalConfig.batch_size:
        raise ValueError(f"batch_size={config.batch_size} applies where evaluate batches a Dataset; this "
                         f"{type(data).__name__} makes its own batches: set the batch size where it is built")
    n_batches = _length(data)
    batches: Iterable = data
    if max_batches is not None:
        batches = itertools.islice(data, max_batches)
        n_batches = max_batches if n_batches is None else min(n_batches, max_batches)
    if config.limit is not None:
        batches = _first_points(batches, config.limit)
    return batches, n_batches


def _first_points(batches: Iterable, limit: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The batches up to ``limit`` points in all (the last one cut short)."""
    left = limit
    for x, y in batches:
        yield x[:left], y[:left]
        left -= len(y[:left])
        if left <= 0:
            return  # reason: the loader is not asked for a batch that would not be used


def _measure(run: _Evaluation, batches: Iterable, n_batches: int | None, progress: bool) -> None:
    """Attack and score every batch at every λ; the model is evaluated in eval mode and left as it was."""
    from tqdm.auto import tqdm

    device = _device_of(run.model)
    was_training = run.model.training
    run.model.eval()
    bar = tqdm(total=None if n_batches is None else n_batches * len(run.lams) * len(run.attacks), desc="evaluate",
               disable=not progress, leave=False)
    try:
        for x, y in batches:
            check_batch(x, y)
            if len(y) == 0:
                continue
            x, y = x.to(device), y.to(device).long()
            if run.classes is None:
                run.classes = label_bound(run.num_classes, output_classes(run.model, x))
            check_classes(y, *run.classes)
            run.labels.update(y.unique()[:2].tolist())
            run.points += len(y)
            for v in run.lams:
                _measure_at(run, x, y, v, bar)
    finally:
        bar.close()
        run.model.train(was_training)
    if run.points == 0:
        raise ValueError("the evaluation loader yielded no data")


def _measure_at(run: _Evaluation, x: torch.Tensor, y: torch.Tensor, lam: float, bar: Any) -> None:
    """Every attack on one batch at one λ, then the headline's per-point worst case over its members."""
    candidates = []
    for spec in run.attacks:
        bar.set_postfix_str(f"λ={lam:g} {spec.label}")
        cell = run.cells[lam][spec.label]
        if cell.applicable:  # reason: else not applicable at this λ (see the report note)
            batch_draws: list[float] = []
            x_adv, correct = attack_and_score(run.model, spec, x, y, lam, run.score_draws, run.num_classes,
                                              batch_draws)
            cell.add(correct, batch_draws)
            if spec.handler.in_headline(spec):
                candidates.append((x_adv, correct))
            if spec.handler.is_attack:
                run.keep(lam, spec.label, x_adv)
            if run.tap is not None:
                run.tap.keep(lam, spec.label, x_adv)
        bar.update()
    if run.headline is not None:
        worst, correct, batch_draws = worst_case(run.model, candidates, x, y, lam, run.score_draws)
        run.cells[lam][run.headline.label].add(correct, batch_draws)
        run.keep(lam, "worst-case", worst)
        if run.tap is not None:
            run.tap.keep(lam, run.headline.label, worst)


def _settings(run: _Evaluation, config: EvalConfig, max_batches: int | None, meta: dict | None) -> dict:
    """The report's settings: preset, draws, eps, points, the noise source, the limits and ``meta``."""
    info: dict[str, Any] = {"preset": config.attack_specs()[0], "score_draws": config.score_draws,
                            "eps": f"{run.attacks[0].eps:.5f}", "points": run.points,
                            "weight_noise": get_noise_source()}
    if max_batches is not None:
        info["max_batches"] = max_batches
    if config.limit is not None:
        info["limit"] = config.limit
    info.update(meta or {})
    return info


def _save_adversarial(path: str | Path, kept: dict[str, list[torch.Tensor]]) -> None:
    from safetensors.torch import save

    from floatify.io import atomic_write

    atomic_write(path, save({k: torch.cat(v).contiguous() for k, v in kept.items()}))


def _report(run: _Evaluation, info: dict, notes: list[str]) -> Report:
    scores = {str(float(v)): {label: cell.score() for label, cell in run.cells[v].items()} for v in run.lams}
    if run.headline is not None:
        for row in scores.values():
            members = [row[a.label] for a in run.headline.members]
            row[run.headline.label] = headline_score(row[run.headline.label], members)
    descriptions = {a.label: a.describe() for a in run.attacks}
    if run.headline is not None:
        descriptions = {run.headline.label: run.headline.describe(), **descriptions}
    clean = next((a.label for a in run.attacks if not a.handler.is_attack), None)
    return Report(list(run.lams), descriptions, scores, info, headline=None if run.headline is None
                  else run.headline.label, clean_label=clean, noise_off=[a.label for a in run.attacks if not a.noise],
                  notes=notes)


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
