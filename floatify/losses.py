"""The FLOAT loss and λ sampling: what one training step optimises.

Per step, for a batch (x, y) and a sampled λ::

    x_adv = PGD(model at λ, x, y)        # torchattacks, BatchNorm in eval, weight noise ON
    loss  = (1 - λ)·CE(model_λ(x), y) + λ·CE(model_λ(x_adv), y)

Inputs are images in [0, 1]: normalisation belongs inside the model (:class:`floatify.models.Normalized`),
so eps is in pixel units. :func:`floatify.fit` (:mod:`floatify.train`) runs these in a training loop.

"Step" names four different things here; each name says which:

* a **training step** is one batch and one optimizer update. ``global_step`` counts them from 0 across
  epochs (the argument of :class:`LamSampler`, which picks the step's λ); ``steps_per_epoch`` is the
  number of batches in an epoch;
* ``steps`` (:func:`float_loss`, :class:`floatify.TrainConfig`, ``--steps``) is the number of **PGD iterations**
  of the training attack inside one training step;
* ``step_size`` is the **PGD step size** of one such iteration, L∞ in pixel units (None: 2.5·eps/steps;
  :attr:`floatify.attacks.AttackSpec.pgd_step` on the evaluation side). It is unrelated to α, the per-layer
  noise scale;
* ``noise_draw="step"`` is a **noise-draw mode**: one weight-noise draw held for the whole training step
  (the attack's iterations and the loss), as opposed to ``"forward"``, a fresh draw per forward pass.

The public keyword names (``steps``, ``step_size``, ``noise_draw="step"``) are stored in checkpoints and
the CLI, so they keep their spelling.

Example (your own loop):
    >>> import torch, floatify
    >>> model = floatify.convert(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)))
    >>> from floatify.summary import param_groups
    >>> from floatify.losses import LamSampler, float_step_loss
    >>> opt = torch.optim.SGD(param_groups(model, 5e-4), lr=0.1)
    >>> sampler = LamSampler("binary", seed=0)
    >>> x, y = torch.rand(8, 3, 2, 2), torch.randint(0, 3, (8,))
    >>> loss = float_step_loss(model, x, y, sampler(global_step=0), eps=8 / 255, steps=2)
    >>> loss.backward(); opt.step()
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from floatify.attacks import make_attack
from floatify.context import constant_weights, hold_noise, recompute_saved, validate_lam
from floatify.context import lam as at_lam
from floatify.layers.conditioned import ALPHA_SUFFIX

__all__ = ["LamSampler", "float_loss", "float_step_loss", "float_paired_loss", "STRATEGIES", "NOISE_DRAWS",
           "DEFAULT_STRATEGY", "DEFAULT_ADV_WEIGHT", "OAT_VALUES"]

STRATEGIES = ("paired", "binary", "oat", "uniform", "fixed")
NOISE_DRAWS = ("step", "forward")
# Chosen by benchmarks/tradeoff.py (the smallest gap to models trained at one λ, 3 seeds; RESULTS.md).
DEFAULT_STRATEGY = "paired"
DEFAULT_ADV_WEIGHT = 0.75
OAT_VALUES = (0.0, 0.1, 0.2, 0.3, 0.4, 1.0)


class LamSampler:
    """Which λ a training step uses, reproducibly and identically on every DDP rank.

    Strategies:
        ``"paired"``: every example is used twice per step: clean at λ = 0 and adversarially (PGD, noise at
            λ = 1) — the binary strategy's two ends on the whole batch rather than half of it each, with the
            adversarial term weighted ``adv_weight`` (:func:`float_paired_loss`). The PGD cost per step is plain
            PGD-AT's.
        ``"binary"``: the FLOAT reference code: each batch is split in two halves, one clean (λ = 0) and
            one adversarial with the noise at λ = 1; the loss is the mean of the two.
        ``"oat"``: OAT's discrete set {0, .1, .2, .3, .4, 1} with a fixed share ``zero_share`` of λ = 0
            (the rest uniform over the other values), one λ per batch.
        ``"uniform"``: λ = 0 with probability ``zero_share``, else λ ~ U(0, 1], one per batch. (reason: the
            clean BatchNorm only trains at exactly λ = 0; a pure U[0, 1] never hits it and λ = 0 stayed at
            chance accuracy in benchmarks/tradeoff.py.)

        ``"fixed"``: always ``values[0]``: a model dedicated to one operating point (the anchor a once-for-all
            model is compared with).

    ``sampler(global_step)`` returns the list of λ for that training step (one per equal batch chunk;
    ``global_step`` counts optimizer updates from 0 across epochs). It depends only on ``(seed, global_step)``,
    never on global RNG state, so every rank of a DDP job draws the same λ.

    Example:
        >>> from floatify.losses import LamSampler
        >>> LamSampler("binary")(global_step=0)
        [0.0, 1.0]
        >>> oat = LamSampler("oat", seed=3)
        >>> oat(7) == oat(7) and oat(7)[0] in (0.0, 0.1, 0.2, 0.3, 0.4, 1.0)
        True
    """

    def __init__(self, strategy: str = DEFAULT_STRATEGY, *, seed: int = 0, zero_share: float = 0.25,
                 values: Sequence[float] = OAT_VALUES):
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown λ-sampling strategy '{strategy}'; choose one of {', '.join(STRATEGIES)}")
        if not 0.0 <= zero_share <= 1.0:
            raise ValueError(f"zero_share must be in [0, 1], got {zero_share!r}")
        self.strategy, self.seed, self.zero_share = strategy, int(seed), float(zero_share)
        self.values = [validate_lam(v, "values") for v in values]
        self._nonzero = [v for v in self.values if v > 0]

    def __call__(self, global_step: int) -> list[float]:
        if self.strategy in ("binary", "paired"):
            return [0.0, 1.0]
        if self.strategy == "fixed":
            return [self.values[0]]
        rng = random.Random(self.seed * 1_000_003 + int(global_step))
        if self.strategy == "uniform":
            return [0.0] if rng.random() < self.zero_share else [1.0 - rng.random()]  # U(0, 1]
        if rng.random() < self.zero_share or not self._nonzero:
            return [0.0]
        return [rng.choice(self._nonzero)]

    def __repr__(self) -> str:
        return f"LamSampler({self.strategy!r}, seed={self.seed}, zero_share={self.zero_share})"


def float_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    lam: float,
    *,
    attack: str | Callable | None = "pgd",
    eps: float = 8 / 255,
    steps: int = 7,
    step_size: float | None = None,
    noise_draw: str = "step",
) -> torch.Tensor:
    """``(1 - λ)·CE(model_λ(x), y) + λ·CE(model_λ(x_adv), y)``, with x_adv from torchattacks at the same λ.

    ``attack`` is ``"pgd"`` (default), ``"fgsm"`` (fast), a ready torchattacks object, or any callable
    ``attack(x, y) -> x_adv``. The attack runs on the model at λ with the weight noise ON and BatchNorm
    in eval mode (torchattacks switches the model to eval and back); it uses ``torch.autograd.grad`` on
    the input only, so parameter gradients are untouched. No attack runs at λ = 0, and at λ = 1 the clean
    term (weight 0) is not computed.

    ``noise_draw``: ``"step"`` (default) draws the weight noise once for the call — the attack iterations
    and the loss see the same draw (:func:`floatify.context.hold_noise`); ``"forward"`` draws it afresh on every
    forward, like the FLOAT/PNI reference code, at about 1.4× the step time on CPU (benchmarks/RESULTS.md
    compares the two).

    Example:
        >>> import torch, floatify
        >>> model = floatify.convert(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)))
        >>> x, y = torch.rand(4, 3, 2, 2), torch.randint(0, 3, (4,))
        >>> clean = floatify.float_loss(model, x, y, 0.0)  # λ = 0: plain cross-entropy, no attack
        >>> bool(torch.equal(clean, torch.nn.functional.cross_entropy(model(x), y)))
        True
        >>> floatify.float_loss(model, x, y, 0.5, steps=2).backward()
    """
    lam = validate_lam(lam)
    if noise_draw not in NOISE_DRAWS:
        raise ValueError(f"noise_draw must be one of {', '.join(NOISE_DRAWS)}, got {noise_draw!r}")
    hold = hold_noise(recompute=False) if noise_draw == "step" and lam > 0.0 else contextlib.nullcontext()
    with at_lam(lam), hold:
        with recompute_saved():
            loss = F.cross_entropy(model(x), y) if lam < 1.0 else None
        if loss is not None and lam == 0.0:
            return _touch_unused(model, loss)
        if isinstance(attack, str):
            run_attack = make_attack(model, attack, eps, steps, step_size if attack != "fgsm" else None)
        elif attack is None:
            raise ValueError("attack is None but λ > 0: pass 'pgd', 'fgsm' or a torchattacks attack")
        else:
            run_attack = attack
        # reason: the attack needs input gradients only, so its noisy weights are constants, held as one set; where
        # the previous step's gradients are still alive the layers recompute them per read instead, and the hooks
        # keep the ones the attack saves for backward as recipes
        attack_recompute = recompute_saved if _gradients_alive(model) else contextlib.nullcontext
        with constant_weights(), attack_recompute():
            x_adv = run_attack(x, y).detach()
        with recompute_saved():
            adv_loss = F.cross_entropy(model(x_adv), y)
    total = adv_loss if loss is None else (1.0 - lam) * loss + lam * adv_loss
    return _touch_unused(model, total)


def float_step_loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, lams: Sequence[float], **kwargs
) -> torch.Tensor:
    """Mean :func:`float_loss` over equal batch chunks, one per λ in ``lams`` (a :class:`LamSampler` output).

    Example:
        >>> import torch, floatify
        >>> from floatify.losses import float_step_loss
        >>> model = floatify.convert(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)))
        >>> x, y = torch.rand(4, 3, 2, 2), torch.randint(0, 3, (4,))
        >>> loss = float_step_loss(model, x, y, [0.0, 1.0], steps=2)  # first half clean, second half adversarial
        >>> loss.shape
        torch.Size([])
    """
    if len(lams) == 1:
        return float_loss(model, x, y, lams[0], **kwargs)
    chunks = list(zip(torch.tensor_split(x, len(lams)), torch.tensor_split(y, len(lams))))
    losses = [float_loss(model, cx, cy, v, **kwargs) for (cx, cy), v in zip(chunks, lams) if len(cy)]
    return torch.stack(losses).mean()


def float_paired_loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, adv_weight: float = DEFAULT_ADV_WEIGHT, **kwargs
) -> torch.Tensor:
    """Strategy ``"paired"``: ``(1 - w)·CE(model_0(x), y) + w·CE(model_1(x_adv), y)`` on the whole batch.

    The clean term runs at λ = 0 (clean BatchNorm, no noise), the adversarial one at λ = 1 (adversarial
    BatchNorm, noise on, PGD at λ = 1); ``kwargs`` go to :func:`float_loss`. Intermediate λ are served by the
    interpolated BatchNorm and the noise scale (``bn_mix``, ``bn_curve`` in :class:`floatify.FloatConfig`).

    Example:
        >>> import torch, floatify
        >>> from floatify.losses import float_paired_loss
        >>> model = floatify.convert(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)))
        >>> x, y = torch.rand(4, 3, 2, 2), torch.randint(0, 3, (4,))
        >>> float_paired_loss(model, x, y, adv_weight=0.75, steps=2).backward()
    """
    if not 0.0 <= adv_weight <= 1.0:
        raise ValueError(f"adv_weight must be in [0, 1], got {adv_weight!r}")
    clean = float_loss(model, x, y, 0.0, **kwargs)
    adversarial = float_loss(model, x, y, 1.0, **kwargs)
    return (1.0 - adv_weight) * clean + adv_weight * adversarial


def _gradients_alive(model: nn.Module) -> bool:
    """True when a conditioned weight still has a gradient (``zero_grad`` runs after the forwards in this loop)."""
    params = dict(model.named_parameters(remove_duplicate=False))  # reason: a tied weight under each of its names
    weights = (params.get(name[: -len(ALPHA_SUFFIX)]) for name in params if name.endswith(ALPHA_SUFFIX))
    return any(w is not None and w.grad is not None for w in weights)


def _touch_unused(model: nn.Module, loss: torch.Tensor) -> torch.Tensor:
    """Under DDP, make every parameter part of the graph (with zero weight).

    reason: at λ = 0 no α and no adversarial BatchNorm is used (and at λ > 0 no clean BatchNorm);
    DDP without find_unused_parameters would fail waiting for their gradients.
    """
    if not isinstance(model, nn.parallel.DistributedDataParallel):
        return loss
    zero = sum(p.sum() for p in model.parameters() if p.requires_grad)
    return loss + 0.0 * zero
