"""Attacks on λ-conditioned models: what an attack is (:class:`AttackSpec`), the registry of attack kinds
(:data:`HANDLERS`), and running one with honest scoring of a randomised model (:func:`attack_and_score`).

A model at λ > 0 is randomised (fresh weight noise per forward), so single-draw attacks and verdicts overstate
robustness. Here every iterate is judged by its accuracy over the attack's own noise draws and, per point, the
strongest iterate is kept; the kept points are re-scored with ``score_draws`` fresh, independent draws for the
reported number (choosing the minimum of noisy estimates would otherwise bias it; :mod:`floatify.scoring`). A NaN or
infinite logit counts as wrong. AutoAttack (torchattacks') runs only where the model is deterministic (λ = 0 or noise
off): it returns the clean input for points it did not fool and reseeds the global RNG, so re-scoring it on a
randomised model would be meaningless.

The kinds: ``clean``, ``fgsm``, ``pgd``, ``eot-pgd`` (torchattacks' ``EOTPGD`` one step at a time), ``apgd-ce``,
``apgd-dlr`` (:mod:`floatify.apgd`, EOT over ``eot_draws``), ``transfer`` (from the noise-off model) and
``autoattack``; a new kind is one :class:`AttackHandler` and one :func:`register_attack`. The presets and the CLI's
attack lists are :mod:`floatify.attack_presets`; :func:`floatify.evaluate` adds the headline
(:mod:`floatify.headline`).

Example:
    >>> import torch, floatify
    >>> model = floatify.convert(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)))
    >>> x, y = torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 2, 0])
    >>> x_adv, correct = attack_and_score(model, AttackSpec("apgd-ce", steps=5, eot_draws=2), x, y, lam=0.5)
    >>> correct.shape, bool((x_adv - x).abs().max() <= 8 / 255 + 1e-6)
    (torch.Size([4]), True)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn as nn

from floatify.apgd import apgd
from floatify.compile import frozen_parameters
from floatify.config import check_int, check_real
from floatify.context import lam as at_lam
from floatify.context import validate_lam
from floatify.scoring import SCORE_DRAWS, expected_correct, strongest

__all__ = ["AttackSpec", "AttackHandler", "AttackRun", "HANDLERS", "attack_and_score", "attack_handler", "make_attack",
           "register_attack"]

@dataclass(frozen=True)
class AttackSpec:
    """One evaluation attack. ``eps``/``step_size`` are L∞ in pixel units (inputs in [0, 1]).

    ``kind`` names a registered :class:`AttackHandler` (:data:`HANDLERS`), which runs the attack and says what its
    column means. ``eot_draws``: noise draws averaged per gradient step on a randomised model (λ > 0, noise on); a
    deterministic model (λ = 0 or ``noise=False``) is attacked with one draw. ``restarts``: APGD random
    restarts (per point, the strongest over restarts is kept). ``transfer`` runs APGD-CE and APGD-DLR
    (``steps``, ``restarts``) on the noise-off model and scores their strongest points on the noisy one.

    Example:
        >>> from floatify.attacks import AttackSpec
        >>> AttackSpec("eot-pgd", steps=5, eot_draws=4).label, AttackSpec("fgsm", noise=False).label
        ('eot-pgd-5x4', 'fgsm (noise off)')
    """

    kind: str
    eps: float = 8 / 255
    steps: int = 10
    step_size: float | None = None  # PGD only; default 2.5 * eps / steps (Madry et al.); APGD adapts its own
    eot_draws: int = 1
    noise: bool = True  # False: attack and score the model with the weight noise off (same λ, same BN)
    random_start: bool = True
    restarts: int = 1
    label: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        handler = attack_handler(self.kind)
        check_real("eps", self.eps, low=0.0, high=1.0, meaning="L∞ budget in pixel units, inputs in [0, 1]")
        for name in ("steps", "eot_draws", "restarts"):
            check_int(name, getattr(self, name))
        handler.check(self)
        if not self.label:
            object.__setattr__(self, "label", handler.label(self) + ("" if self.noise else " (noise off)"))

    @property
    def handler(self) -> AttackHandler:
        """The registered :class:`AttackHandler` of this spec's ``kind``."""
        return HANDLERS[self.kind]

    @property
    def pgd_step(self) -> float:
        """The PGD step size in pixel units (``step_size`` or 2.5·eps/steps; not the noise scale α)."""
        return self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps

    def describe(self) -> str:
        """One line saying what the attack does: its budget, iterations, noise draws and noise setting."""
        return self.handler.describe(self)


@dataclass
class AttackRun:
    """One attack on one batch: what a handler needs, with the scoring every handler shares.

    Handlers run inside ``floatify.lam(run.lam, noise=run.spec.noise)``.
    """

    model: nn.Module
    spec: AttackSpec
    x: torch.Tensor
    y: torch.Tensor
    lam: float
    score_draws: int = SCORE_DRAWS
    num_classes: int | None = None
    per_draw: list | None = None  # receives the batch accuracy of each final scoring draw
    select_draws: int = 2  # noise draws for the rough score that picks the strongest iterate

    @property
    def randomised(self) -> bool:
        """Whether the attacked model is randomised (λ > 0 with the weight noise on)."""
        return self.lam > 0 and self.spec.noise

    @property
    def draws(self) -> int:
        """Fresh noise draws per point for the reported score (one on a deterministic model)."""
        return self.score_draws if self.randomised else 1

    def score(self, points: torch.Tensor) -> torch.Tensor:
        """Per point, the expected accuracy of ``points`` over :attr:`draws` fresh noise draws."""
        return expected_correct(self.model, points, self.y, self.draws, self.per_draw)

    def rescore(self, best: torch.Tensor, best_score: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The kept points with their reported score: fresh draws on a randomised model, else their own score.

        reason: the minimum over noisy estimates is biased; the kept points are re-scored with fresh draws.
        """
        if self.randomised:
            return best, self.score(best)
        if self.per_draw is not None:
            self.per_draw.append(best_score.mean().item())
        return best, best_score


def _eps_text(spec: AttackSpec) -> str:
    return f"L∞ eps={spec.eps:.4f} ({spec.eps * 255:.1f}/255)"


def _off_text(spec: AttackSpec) -> str:
    return ", weight noise OFF during attack and scoring" if not spec.noise else ""


def _restarts_text(spec: AttackSpec) -> str:
    return f"{spec.restarts} restart{'s' if spec.restarts > 1 else ''}"


class AttackHandler:
    """How one kind of attack runs and what its column means; one instance per kind in :data:`HANDLERS`.

    A new attack is one subclass (set ``kind``, override :meth:`attack` and :meth:`describe`) and one
    :func:`register_attack`. The class attributes are what :func:`floatify.evaluate` and
    :func:`~floatify.attack_presets.parse_attacks` ask of an attack, so no module compares kind names.
    """

    kind: ClassVar[str] = ""
    is_attack: ClassVar[bool] = True  # False: the no-attack column (no adversarial points, not counted as an attack)
    strong_defaults: ClassVar[bool] = False  # parse_attacks: the strong preset's steps/draws (else the quick one's)
    eot: ClassVar[bool] = False  # averages eot_draws noise draws per step on a randomised model
    min_eot_draws: ClassVar[int] = 1
    deterministic_only: ClassVar[bool] = False  # runs only where the model is deterministic (λ = 0 or noise off)
    randomised_only: ClassVar[bool] = False  # means something only on a randomised model (λ > 0, noise on)
    trains: ClassVar[bool] = False  # usable as a training attack (make_attack)

    def check(self, spec: AttackSpec) -> None:
        """Kind-specific validation of ``spec`` (a ValueError naming the fix); the common fields are checked."""

    def applies(self, spec: AttackSpec, lam: float) -> bool:
        """Whether the attack runs at ``lam`` (else its cell is n/a, as the report's note explains)."""
        randomised = lam > 0 and spec.noise
        return not (self.deterministic_only and randomised) and not (self.randomised_only and not randomised)

    def in_headline(self, spec: AttackSpec) -> bool:
        """Whether the headline's per-point worst case includes this attack: those on the noisy model."""
        return spec.noise

    def label(self, spec: AttackSpec) -> str:
        """The column label (before the ``(noise off)`` suffix): kind, steps, EOT draws, restarts."""
        draws = f"x{spec.eot_draws}" if spec.eot_draws > 1 and spec.noise else ""
        return f"{spec.kind}-{spec.steps}{draws}" + (f"r{spec.restarts}" if spec.restarts > 1 else "")

    def describe(self, spec: AttackSpec) -> str:
        raise NotImplementedError

    def attack(self, run: AttackRun) -> tuple[torch.Tensor, torch.Tensor]:
        """The kept adversarial points and, per point, their reported expected accuracy."""
        raise NotImplementedError

    def training_attack(self, model: nn.Module, eps: float, steps: int, step_size: float, eot_draws: int,
                        random_start: bool) -> Any:
        """A torchattacks attack object for training examples (handlers with ``trains``)."""
        raise NotImplementedError


HANDLERS: dict[str, AttackHandler] = {}
"""The attack kinds :class:`AttackSpec` accepts, in registration order: kind → handler."""


def register_attack(handler: AttackHandler) -> AttackHandler:
    """Make ``handler.kind`` an attack :class:`AttackSpec`, :func:`~floatify.attack_presets.parse_attacks` and
    evaluation accept.

    Example:
        >>> from floatify.attacks import HANDLERS, AttackHandler, AttackSpec, register_attack
        >>> class Flip(AttackHandler):  # a toy attack: every pixel eps towards the far end of [0, 1]
        ...     kind = "flip"
        ...     def describe(self, spec):
        ...         return f"every pixel moved by eps={spec.eps:.3f} away from its nearer end"
        ...     def attack(self, run):
        ...         x_adv = (run.x + run.spec.eps * (1 - 2 * (run.x > 0.5).float())).clamp(0, 1)
        ...         return x_adv, run.score(x_adv)
        >>> _ = register_attack(Flip())
        >>> AttackSpec("flip", steps=1).label
        'flip-1'
        >>> del HANDLERS["flip"]
    """
    if not isinstance(handler, AttackHandler) or not handler.kind:
        raise TypeError(f"register_attack expects an AttackHandler instance with a kind, got {handler!r}")
    if handler.kind in HANDLERS:
        raise ValueError(f"attack kind '{handler.kind}' is registered already; choose another kind")
    HANDLERS[handler.kind] = handler
    return handler


def attack_handler(kind: str) -> AttackHandler:
    """The handler registered for ``kind``, or a ValueError listing the kinds there are."""
    handler = HANDLERS.get(kind)
    if handler is None:
        raise ValueError(f"unknown attack '{kind}'; choose one of {', '.join(HANDLERS)}")
    return handler


class _Clean(AttackHandler):
    kind = "clean"
    is_attack = False

    def label(self, spec: AttackSpec) -> str:
        return "clean"

    def describe(self, spec: AttackSpec) -> str:
        return f"no attack{_off_text(spec)}"

    def attack(self, run: AttackRun) -> tuple[torch.Tensor, torch.Tensor]:
        return run.x, run.score(run.x)


class _StrongestIterate(AttackHandler):
    """An attack whose every iterate is a candidate: per point the strongest (the clean point included) is kept."""

    def iterates(self, run: AttackRun) -> Iterable[torch.Tensor]:
        raise NotImplementedError

    def attack(self, run: AttackRun) -> tuple[torch.Tensor, torch.Tensor]:
        # reason: choosing the strongest iterate needs only a rough score (cheap, a few draws); the kept
        # points are then re-scored with `score_draws` fresh draws, so the reported number stays unbiased.
        select = min(run.draws, run.select_draws)
        iterates = self.iterates(run)  # reason: FGSM's point is drawn before the clean score: seeded numbers stay
        best, best_score = run.x.clone(), expected_correct(run.model, run.x, run.y, select)
        for x_t in iterates:
            best, best_score = strongest([(best, best_score), (x_t, expected_correct(run.model, x_t, run.y, select))])
        return run.rescore(best, best_score)


class _FGSM(_StrongestIterate):
    kind = "fgsm"
    trains = True

    def label(self, spec: AttackSpec) -> str:
        return "fgsm"

    def describe(self, spec: AttackSpec) -> str:
        return f"FGSM (torchattacks), {_eps_text(spec)}, gradient from 1 noise draw{_off_text(spec)}"

    def iterates(self, run: AttackRun) -> Iterable[torch.Tensor]:
        return [self.training_attack(run.model, run.spec.eps, 1, run.spec.pgd_step, 1, False)(run.x, run.y)]

    def training_attack(self, model: nn.Module, eps: float, steps: int, step_size: float, eot_draws: int,
                        random_start: bool) -> Any:
        import torchattacks

        return torchattacks.FGSM(model, eps=eps)


class _PGD(_StrongestIterate):
    kind = "pgd"
    trains = True
    name = "PGD"

    def describe(self, spec: AttackSpec) -> str:
        start = "random start" if spec.random_start else "no random start"
        draws = f"{spec.eot_draws} noise draws averaged per step" if spec.eot_draws > 1 else "1 noise draw per step"
        return (f"{self.name} (torchattacks EOTPGD stepping, cross-entropy), {_eps_text(spec)}, {spec.steps} steps "
                f"of {spec.pgd_step:.4f}, {draws}, {start}, strongest iterate per point kept{_off_text(spec)}")

    def iterates(self, run: AttackRun) -> Iterable[torch.Tensor]:
        """Every PGD iterate; each step is one torchattacks EOTPGD step, projected on the eps-ball of x."""
        import torchattacks

        spec, x = run.spec, run.x
        one_step = torchattacks.EOTPGD(run.model, eps=spec.pgd_step, alpha=spec.pgd_step, steps=1,
                                       eot_iter=spec.eot_draws, random_start=False)
        x_t = x.clone()
        if spec.random_start:
            x_t = (x_t + torch.empty_like(x_t).uniform_(-spec.eps, spec.eps)).clamp(0, 1)
        for _ in range(spec.steps):
            x_t = one_step(x_t, run.y)
            x_t = (x + (x_t - x).clamp(-spec.eps, spec.eps)).clamp(0, 1).detach()
            yield x_t

    def training_attack(self, model: nn.Module, eps: float, steps: int, step_size: float, eot_draws: int,
                        random_start: bool) -> Any:
        import torchattacks

        return torchattacks.PGD(model, eps=eps, alpha=step_size, steps=steps, random_start=random_start)


class _EOTPGD(_PGD):
    kind = "eot-pgd"
    name = "EOT-PGD"
    eot = True
    min_eot_draws = 2

    def check(self, spec: AttackSpec) -> None:
        if spec.eot_draws < 2:
            raise ValueError("eot-pgd needs eot_draws >= 2 (with 1 draw it is plain pgd)")

    def training_attack(self, model: nn.Module, eps: float, steps: int, step_size: float, eot_draws: int,
                        random_start: bool) -> Any:
        import torchattacks

        return torchattacks.EOTPGD(model, eps=eps, alpha=step_size, steps=steps, eot_iter=eot_draws,
                                   random_start=random_start)


class _APGD(AttackHandler):
    strong_defaults = True
    eot = True

    def __init__(self, loss: str) -> None:
        self.loss = loss
        self.kind = f"apgd-{loss}"  # type: ignore[misc]  # reason: one class serves both losses, one kind each

    def describe(self, spec: AttackSpec) -> str:
        loss = "cross-entropy" if self.loss == "ce" else "DLR"
        draws = (f"gradient averaged over {spec.eot_draws} noise draws per iteration (EOT) on a randomised model"
                 if spec.eot_draws > 1 else "1 noise draw per iteration")
        return (f"APGD-{self.loss.upper()} ({loss} loss), {_eps_text(spec)}, {spec.steps} iterations, "
                f"step 2·eps halved at APGD's checkpoints, momentum 0.75, {draws}, {_restarts_text(spec)}, "
                f"strongest iterate per point kept{_off_text(spec)}")

    def attack(self, run: AttackRun) -> tuple[torch.Tensor, torch.Tensor]:
        spec = run.spec
        best, best_score = apgd(run.model, run.x, run.y, spec.eps, spec.steps, self.loss,
                                spec.eot_draws if run.randomised else 1, spec.restarts)
        return run.rescore(best, best_score)


class _Transfer(AttackHandler):
    kind = "transfer"
    strong_defaults = True
    randomised_only = True

    def check(self, spec: AttackSpec) -> None:
        if not spec.noise:
            raise ValueError("transfer scores noise-off points on the noisy model: it needs noise=True")

    def label(self, spec: AttackSpec) -> str:
        return f"transfer-{spec.steps}" + (f"r{spec.restarts}" if spec.restarts > 1 else "")

    def describe(self, spec: AttackSpec) -> str:
        return (f"transfer: APGD-CE and APGD-DLR ({spec.steps} iterations, {_restarts_text(spec)}) on the noise-off "
                f"model at the same λ, {_eps_text(spec)}, per point the stronger kept, scored on the noisy model")

    def attack(self, run: AttackRun) -> tuple[torch.Tensor, torch.Tensor]:
        spec = run.spec
        with at_lam(run.lam, noise=False):  # reason: the source is the deterministic, noise-off model
            best, _ = strongest([apgd(run.model, run.x, run.y, spec.eps, spec.steps, loss, 1, spec.restarts)
                                  for loss in ("ce", "dlr")])
        return best, run.score(best)


class _AutoAttack(AttackHandler):
    kind = "autoattack"
    deterministic_only = True

    def label(self, spec: AttackSpec) -> str:
        return "autoattack"

    def describe(self, spec: AttackSpec) -> str:
        return f"torchattacks AutoAttack (10 iterations), {_eps_text(spec)}, deterministic model only{_off_text(spec)}"

    def attack(self, run: AttackRun) -> tuple[torch.Tensor, torch.Tensor]:
        import torchattacks

        if run.randomised:
            raise ValueError(
                "AutoAttack runs only on a deterministic model (λ = 0 or noise off): torchattacks' AutoAttack "
                "returns the clean input for points it did not fool and reseeds the global RNG; use the "
                "'strong' preset (APGD with EOT)"
            )
        num_classes = run.num_classes
        if num_classes is None:  # reason: read it off the model rather than assume 10
            with torch.no_grad():
                num_classes = run.model(run.x[:1]).shape[1]
        rng = torch.get_rng_state()
        x_adv = torchattacks.AutoAttack(run.model, norm="Linf", eps=run.spec.eps, n_classes=num_classes,
                                        seed=0)(run.x, run.y)
        torch.set_rng_state(rng)  # reason: AutoAttack reseeds the global RNG
        return x_adv, expected_correct(run.model, x_adv, run.y, 1, run.per_draw)


for _handler in (_Clean(), _FGSM(), _PGD(), _EOTPGD(), _APGD("ce"), _APGD("dlr"), _Transfer(), _AutoAttack()):
    register_attack(_handler)


def make_attack(model: nn.Module, kind: str, eps: float, steps: int = 7, step_size: float | None = None,
                eot_draws: int = 1, random_start: bool = True) -> Any:
    """A plain torchattacks attack object (used for training examples): ``fgsm``, ``pgd`` or ``eot-pgd``.

    Example:
        >>> import torch
        >>> from floatify.attacks import make_attack
        >>> type(make_attack(torch.nn.Linear(4, 2), "pgd", eps=0.1, steps=3)).__name__
        'PGD'
    """
    handler = HANDLERS.get(kind)
    if handler is None or not handler.trains:
        names = [k for k, h in HANDLERS.items() if h.trains]
        raise ValueError(f"unknown training attack '{kind}'; choose {', '.join(names[:-1])} or {names[-1]}")
    pgd_step = step_size if step_size is not None else 2.5 * eps / steps
    return handler.training_attack(model, eps, steps, pgd_step, eot_draws, random_start)


def attack_and_score(
    model: nn.Module,
    spec: AttackSpec,
    x: torch.Tensor,
    y: torch.Tensor,
    lam: float,
    score_draws: int = SCORE_DRAWS,
    num_classes: int | None = None,
    per_draw: list | None = None,
    select_draws: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attack ``model`` at operating point ``lam`` and score honestly.

    Returns the kept adversarial points and, per point, the expected accuracy over ``score_draws``
    fresh noise draws (one draw when the model is deterministic: λ = 0 or noise off). ``per_draw``
    receives the batch accuracy of each final scoring draw.
    """
    lam = validate_lam(lam)
    run = AttackRun(model, spec, x, y, lam, score_draws, num_classes, per_draw, select_draws)
    # reason: an attack needs the input's gradient only; frozen, the noisy weights take the inference path (cached
    # std(W), one add, no autograd history): an eager APGD step at λ > 0 otherwise recomputed std(W) per forward
    with at_lam(lam, noise=spec.noise), frozen_parameters(list(model.parameters())):
        return spec.handler.attack(run)
