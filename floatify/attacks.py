"""Attacks on λ-conditioned models, built on torchattacks, with honest scoring of randomised models.

A model at λ > 0 is randomised (fresh weight noise per forward), so single-draw attacks and
single-draw verdicts overstate robustness. Here:

* the gradient comes from torchattacks (``FGSM``; ``EOTPGD`` one step at a time, which is plain PGD
  with one draw and EOT-PGD with several draws averaged per step);
* every iterate (and the clean point) is scored as expected accuracy over ``select_draws`` fresh noise
  draws, and per point the strongest iterate is kept;
* the kept points are re-scored with ``score_draws`` fresh, independent draws for the reported number
  (choosing the minimum of noisy estimates would otherwise bias the number);
* AutoAttack (torchattacks' re-implementation) runs only where the model is deterministic (λ = 0 or
  noise off): its outputs are the clean input for points it did not fool and it reseeds the global
  RNG, so re-scoring it on a randomised model would be meaningless.

Example:
    >>> import torch, floatify
    >>> from floatify.attacks import AttackSpec, attack_and_score
    >>> model = floatify.convert(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)))
    >>> x, y = torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 2, 0])
    >>> x_adv, correct = attack_and_score(model, AttackSpec("pgd", eps=8 / 255, steps=3), x, y, lam=0.5)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from floatify.context import lam as lam_context
from floatify.context import validate_lam

__all__ = ["AttackSpec", "DEFAULT_ATTACKS", "attack_and_score", "expected_correct", "parse_attack", "make_attack"]

KINDS = ("clean", "fgsm", "pgd", "eot-pgd", "autoattack")


@dataclass(frozen=True)
class AttackSpec:
    """One evaluation attack. ``eps``/``step_size`` are L∞ in pixel units (inputs in [0, 1])."""

    kind: str
    eps: float = 8 / 255
    steps: int = 10
    step_size: float | None = None  # default 2.5 * eps / steps (Madry et al.)
    eot_draws: int = 1  # noise draws averaged per gradient step (EOT); > 1 only for "eot-pgd"
    noise: bool = True  # False: attack and score the model with the weight noise off (same λ, same BN)
    random_start: bool = True
    label: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown attack '{self.kind}'; choose one of {', '.join(KINDS)}")
        if not (isinstance(self.eps, (int, float)) and 0 <= self.eps <= 1):
            raise ValueError(f"eps must be in [0, 1] (pixel units, inputs in [0, 1]), got {self.eps!r}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be a positive int, got {self.steps!r}")
        if not isinstance(self.eot_draws, int) or self.eot_draws < 1:
            raise ValueError(f"eot_draws must be a positive int, got {self.eot_draws!r}")
        if self.kind == "eot-pgd" and self.eot_draws < 2:
            raise ValueError("eot-pgd needs eot_draws >= 2 (with 1 draw it is plain pgd)")
        if not self.label:
            object.__setattr__(self, "label", self._default_label())

    @property
    def alpha(self) -> float:
        return self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps

    def _default_label(self) -> str:
        base = {"clean": "clean", "fgsm": "fgsm", "autoattack": "autoattack"}.get(self.kind)
        if base is None:
            base = f"pgd-{self.steps}" if self.kind == "pgd" else f"eot-pgd-{self.steps}x{self.eot_draws}"
        return base if self.noise else f"{base} (noise off)"

    def describe(self) -> str:
        eps = f"L∞ eps={self.eps:.4f} ({self.eps * 255:.1f}/255)"
        off = ", weight noise OFF during attack and scoring" if not self.noise else ""
        if self.kind == "clean":
            return f"no attack{off}"
        if self.kind == "fgsm":
            return f"FGSM (torchattacks), {eps}, gradient from 1 noise draw{off}"
        if self.kind == "autoattack":
            return f"torchattacks AutoAttack (10 iterations), {eps}, deterministic model only{off}"
        draws = f"{self.eot_draws} noise draws averaged per step" if self.eot_draws > 1 else "1 noise draw per step"
        start = "random start" if self.random_start else "no random start"
        name = "EOT-PGD" if self.kind == "eot-pgd" else "PGD"
        return (f"{name} (torchattacks EOTPGD stepping), {eps}, {self.steps} steps of {self.alpha:.4f}, "
                f"{draws}, {start}, strongest iterate per point kept{off}")


def default_attacks(eps: float = 8 / 255, steps: int = 10, eot_draws: int = 10) -> list[AttackSpec]:
    """clean, FGSM, PGD, EOT-PGD and PGD with the noise off — the evaluation set experts expect."""
    return [
        AttackSpec("clean", eps),
        AttackSpec("fgsm", eps),
        AttackSpec("pgd", eps, steps),
        AttackSpec("eot-pgd", eps, steps, eot_draws=eot_draws),
        AttackSpec("pgd", eps, steps, noise=False),
    ]


DEFAULT_ATTACKS = default_attacks()


def parse_attack(text: str, eps: float, steps: int, eot_draws: int) -> AttackSpec:
    """CLI form: ``clean``, ``fgsm``, ``pgd``, ``eot-pgd``, ``autoattack``, with suffix ``:nonoise``."""
    kind, _, flag = text.partition(":")
    if flag not in ("", "nonoise"):
        raise ValueError(f"unknown attack modifier ':{flag}' in '{text}' (only ':nonoise')")
    return AttackSpec(kind, eps, steps, eot_draws=eot_draws if kind == "eot-pgd" else 1, noise=flag != "nonoise")


@torch.no_grad()
def expected_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int,
                     per_draw: list | None = None) -> torch.Tensor:
    """Per point, the fraction of ``draws`` forward passes (fresh noise each) that classify it right.

    One noise draw is shared by the whole batch in a forward pass, so points are correlated within a
    draw; ``per_draw`` (if given) receives each draw's batch accuracy for an honest confidence interval.
    """
    hits = torch.zeros(len(y), device=y.device)
    for _ in range(draws):
        correct = (model(x).argmax(dim=1) == y).float()
        hits += correct
        if per_draw is not None:
            per_draw.append(correct.mean().item())
    return hits / draws


def make_attack(model: nn.Module, kind: str, eps: float, steps: int = 7, step_size: float | None = None,
                eot_draws: int = 1, random_start: bool = True):
    """A plain torchattacks attack object (used for training examples)."""
    import torchattacks

    alpha = step_size if step_size is not None else 2.5 * eps / steps
    if kind == "fgsm":
        return torchattacks.FGSM(model, eps=eps)
    if kind == "pgd":
        return torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=random_start)
    if kind == "eot-pgd":
        return torchattacks.EOTPGD(model, eps=eps, alpha=alpha, steps=steps, eot_iter=eot_draws,
                                   random_start=random_start)
    raise ValueError(f"unknown training attack '{kind}'; choose fgsm, pgd or eot-pgd")


def attack_and_score(
    model: nn.Module,
    spec: AttackSpec,
    x: torch.Tensor,
    y: torch.Tensor,
    lam: float,
    score_draws: int = 10,
    num_classes: int | None = None,
    per_draw: list | None = None,
    select_draws: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attack ``model`` at operating point ``lam`` and score honestly.

    Returns the kept adversarial points and, per point, the expected accuracy over ``score_draws``
    fresh noise draws (one draw when the model is deterministic: λ = 0 or noise off). ``per_draw``
    receives the batch accuracy of each final scoring draw.
    """
    import torchattacks

    lam = validate_lam(lam)
    randomised = lam > 0 and spec.noise
    draws = score_draws if randomised else 1
    with lam_context(lam, noise=spec.noise):
        if spec.kind == "clean":
            return x, expected_correct(model, x, y, draws, per_draw)
        if spec.kind == "autoattack":
            if randomised:
                raise ValueError(
                    "AutoAttack runs only on a deterministic model (λ = 0 or noise off): torchattacks' AutoAttack "
                    "returns the clean input for points it did not fool and reseeds the global RNG; use eot-pgd"
                )
            rng = torch.get_rng_state()
            attack = torchattacks.AutoAttack(model, norm="Linf", eps=spec.eps, n_classes=num_classes or 10, seed=0)
            x_adv = attack(x, y)
            torch.set_rng_state(rng)  # reason: AutoAttack reseeds the global RNG
            return x_adv, expected_correct(model, x_adv, y, 1, per_draw)

        # reason: choosing the strongest iterate needs only a rough score (cheap, a few draws); the kept
        # points are then re-scored with `score_draws` fresh draws, so the reported number stays unbiased.
        select = min(draws, select_draws)
        best = x.clone()
        best_score = expected_correct(model, x, y, select)
        if spec.kind == "fgsm":
            candidates = [torchattacks.FGSM(model, eps=spec.eps)(x, y)]
        else:
            candidates = _pgd_iterates(model, spec, x, y)
        for x_t in candidates:
            score = expected_correct(model, x_t, y, select)
            stronger = score < best_score
            best[stronger] = x_t[stronger]
            best_score = torch.minimum(best_score, score)
        # reason: the minimum over noisy estimates is biased; re-score the kept points with fresh draws
        if randomised:
            return best, expected_correct(model, best, y, draws, per_draw)
        if per_draw is not None:
            per_draw.append(best_score.mean().item())
        return best, best_score


def _pgd_iterates(model: nn.Module, spec: AttackSpec, x: torch.Tensor, y: torch.Tensor):
    """Yield every PGD iterate; each step is one torchattacks EOTPGD step, projected on the eps-ball of x."""
    import torchattacks

    step = torchattacks.EOTPGD(model, eps=spec.alpha, alpha=spec.alpha, steps=1, eot_iter=spec.eot_draws,
                               random_start=False)
    x_t = x.clone()
    if spec.random_start:
        x_t = (x_t + torch.empty_like(x_t).uniform_(-spec.eps, spec.eps)).clamp(0, 1)
    for _ in range(spec.steps):
        x_t = step(x_t, y)
        x_t = (x + (x_t - x).clamp(-spec.eps, spec.eps)).clamp(0, 1).detach()
        yield x_t
