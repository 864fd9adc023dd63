"""How an evaluation hands its audit what it already measured, and takes back a stronger attack into its headline.

:class:`SubsetTap` keeps the first :attr:`~floatify.audit.AuditConfig.subset` points of an evaluation as they pass,
and, at the audited λ, each column's adversarial inputs for them (:func:`floatify.evaluate` calls :meth:`SubsetTap.
keep` beside every attack). :meth:`SubsetTap.audit` runs :func:`floatify.audit_checks.audit` with the evaluation's
per-point scores and inputs, so the audit re-attacks nothing the evaluation already did. :meth:`SubsetTap.fold`
then lowers the headline's per-point worst case on those points where the black-box check found an attack the
headline lacks (Square, or a transfer attack the evaluation did not run) stronger than the white-box ensemble.

Example:
    >>> import torch, floatify
    >>> from torch.utils.data import TensorDataset
    >>> model = floatify.convert(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)))
    >>> data = TensorDataset(torch.rand(8, 3, 2, 2), torch.randint(0, 3, (8,)))
    >>> report = floatify.evaluate(model, data, lams=[0], attacks="clean,apgd-ce", steps=2, progress=False,
    ...                            audit=floatify.AuditConfig(subset=8, steps=2, square_queries=5))
    >>> report.audit[0].numbers["x1_attacks"]  # the budget sweep's eps × 1: the evaluation's own column
    ['apgd-ce-2x10']
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from floatify.audit import AuditCheck, AuditConfig, audit_lams
from floatify.audit_checks import audit
from floatify.context import lam as at_lam
from floatify.headline import worst_case

if TYPE_CHECKING:
    from floatify.evaluate import EvalConfig

__all__ = ["SubsetTap"]


class SubsetTap:
    """Passes batches through and keeps the first ``subset`` points (the audited ones); checks the class count.

    :func:`floatify.evaluate` with ``audit=`` makes one (:meth:`of`), hands it every column's adversarial inputs
    (:meth:`keep`), runs the audit with :meth:`audit` and folds a stronger black-box attack into the headline
    with :meth:`fold`.
    """

    def __init__(self, model: nn.Module, config: AuditConfig, lams: Iterable[float] = ()) -> None:
        self.model, self.config, self.subset = model, config, config.subset
        self.lams = set(lams)  # the audited λ: adversarial inputs are kept there only
        self.xs: list[torch.Tensor] = []
        self.ys: list[torch.Tensor] = []
        self.kept = 0
        self.take = 0  # how many points of the batch being evaluated are audited ones
        self.points: dict[float, dict[str, list[torch.Tensor]]] = {}  # λ -> label -> adversarial inputs
        self.stronger: dict[float, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}  # λ -> attacks to fold

    def wrap(self, batches: Iterable) -> Iterator:
        for x, y in batches:
            self.take = 0
            if self.kept < self.subset and len(y):
                if not self.xs:
                    self._check_classes(x[:1])
                self.take = min(self.subset - self.kept, len(y))
                self.xs.append(x[:self.take].detach())
                self.ys.append(y[:self.take].detach())
                self.kept += self.take
            yield x, y

    def keep(self, lam: float, label: str, points: torch.Tensor) -> None:
        """The adversarial inputs of column ``label`` at ``lam`` for the batch being evaluated (its audited points)."""
        if self.take and lam in self.lams:
            self.points.setdefault(lam, {}).setdefault(label, []).append(points[:self.take].detach())

    def _check_classes(self, x: torch.Tensor) -> None:
        device = next((p.device for p in self.model.parameters()), x.device)
        with torch.no_grad(), at_lam(0.0):
            classes = self.model(x.to(device)).shape[-1]
        if classes < 2:
            raise ValueError(f"the audit needs a classifier with at least 2 classes, this model has {classes}: "
                             f"chance level and an attack's success are undefined; audit a multi-class model")

    @classmethod
    def of(cls, audit_arg: object, model: nn.Module, eval_config: EvalConfig, loader: object,
           num_classes: int | None) -> SubsetTap | None:
        """The tap for ``evaluate(..., audit=audit_arg)`` (None when it is False), every setting checked first."""
        if audit_arg is False or audit_arg is None:
            return None
        if audit_arg is True:
            audit_arg = AuditConfig()
        if not isinstance(audit_arg, AuditConfig):
            raise TypeError(f"audit must be True, False or a floatify.AuditConfig, got {type(audit_arg).__name__}")
        if num_classes is not None and num_classes < 2:
            raise ValueError(f"the audit needs a classifier with at least 2 classes, got num_classes={num_classes}")
        specs = eval_config.attack_specs()[1]
        audit_arg.check_sweep(specs[0].eps)
        lams = audit_lams(eval_config.lams, audit_arg)
        dataset = loader if hasattr(loader, "__getitem__") else getattr(loader, "dataset", None)
        try:
            known = len(dataset) if dataset is not None else None  # type: ignore[arg-type]
        except TypeError:  # reason: an IterableDataset has no length; checked after the evaluation instead
            known = None
        if known is not None:
            audit_arg.check_points(min(known, eval_config.limit or known))
        return cls(model, audit_arg, lams)

    def audit(self, run: Any, eval_config: EvalConfig) -> list[AuditCheck]:
        """The checks on the kept points, with the evaluation ``run``'s per-point scores and inputs of them."""
        self.config.check_points(self.kept)
        lams = audit_lams(eval_config.lams, self.config)
        device = next((p.device for p in self.model.parameters()), self.xs[0].device)
        evaluated = {lam: {label: torch.cat(cell.correct)[:self.subset].to(device) for label, cell
                           in run.cells[lam].items() if cell.applicable and cell.correct} for lam in lams}
        adversarial = {lam: {label: torch.cat(parts).to(device) for label, parts in row.items()}
                       for lam, row in self.points.items()}
        preset, specs = eval_config.attack_specs()
        return audit(self.model, self.x.to(device), self.y.to(device), specs, evaluated, self.config,
                     preset=preset, score_draws=eval_config.score_draws, num_classes=run.num_classes,
                     adversarial=adversarial, fold=None if run.headline is None else self.stronger)

    @property
    def x(self) -> torch.Tensor:
        return torch.cat(self.xs)

    @property
    def y(self) -> torch.Tensor:
        return torch.cat(self.ys)

    def fold(self, run: Any) -> list[str]:
        """The stronger black-box attacks the audit found, folded into the headline's worst case on the audited
        points (:func:`~floatify.headline.worst_case`, as the evaluation measures it); one report note per λ."""
        if run.headline is None:
            return []
        was_training = run.model.training
        run.model.eval()  # reason: scored as the evaluation scores, in eval mode (BatchNorm's running statistics)
        try:
            return [note for lam, found in sorted(self.stronger.items()) for note in self._fold_at(run, lam, found)]
        finally:
            run.model.train(was_training)

    def _fold_at(self, run: Any, lam: float, found: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> list[str]:
        """The fold at one λ: the headline cell's scores of the audited points lowered, and its note."""
        cell = run.cells[lam][run.headline.label]
        before = torch.cat(cell.correct)
        old_points = torch.cat(self.points[lam][run.headline.label])
        x, y = self.x.to(old_points.device), self.y.to(old_points.device)
        old = before[:self.kept].to(old_points.device)
        worst, score, _ = worst_case(run.model, [(old_points, old), *found.values()], x, y, lam, run.score_draws)
        # reason: the fold only ever lowers the headline: fresh draws can land a re-scored worst case above the
        # number it replaces by noise alone (exact at λ = 0, where nothing is re-scored)
        if score.mean().item() >= old.mean().item():
            return []
        before[:self.kept] = score.to(before.device)
        # reason: the per-draw batch accuracies (the CI's noise term) stay: a batch's draw-to-draw spread is its
        # shared noise draw's, barely moved by the inputs of some of its points
        cell.correct = [before]
        if run.kept is not None:
            saved = torch.cat(run.kept[f"lam={lam:g}/worst-case"])
            saved[:self.kept] = worst.detach().cpu()
            run.kept[f"lam={lam:g}/worst-case"] = [saved]
        names = " and ".join(sorted(found))
        return [f"the headline at λ={lam:g} includes the audit's {names} on the first {self.kept} points (the audit's "
                f"subset), where it beat the white-box attacks; the other points were not attacked with it: audit "
                f"every test point (--audit-subset) to cover them"]
