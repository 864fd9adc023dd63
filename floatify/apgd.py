"""APGD (Croce & Hein 2020) with EOT for λ-conditioned models: the attack behind the ``strong`` preset.

:mod:`floatify.attacks` registers it as the ``apgd-ce``/``apgd-dlr`` kinds (and the ``transfer`` attack's source);
this module is the algorithm itself: :func:`apgd`, its losses and the per-point correctness every score uses.

Example:
    >>> import torch
    >>> from floatify.apgd import apgd
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    >>> x, y = torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 2, 0])
    >>> x_adv, accuracy = apgd(model, x, y, eps=8 / 255, steps=5)
    >>> bool((x_adv - x).abs().max() <= 8 / 255 + 1e-6), accuracy.shape
    (True, torch.Size([4]))
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["apgd", "correct_predictions", "dlr_loss"]


def correct_predictions(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per point, 1.0 where the prediction is right.

    reason: argmax of a NaN row is 0, which would score a broken model as correct on class 0; a row with a
    non-finite logit counts as wrong.

    Example:
        >>> import torch
        >>> from floatify.apgd import correct_predictions
        >>> correct_predictions(torch.tensor([[2.0, 1.0], [float("nan"), 0.0], [0.0, 3.0]]), torch.tensor([0, 0, 0]))
        tensor([1., 0., 0.])
    """
    return ((logits.argmax(dim=1) == y) & torch.isfinite(logits).all(dim=1)).float()


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Croce & Hein's difference-of-logits-ratio loss, per point (needs at least 3 classes).

    reason: torchattacks' ``APGD.dlr_loss`` computes exactly this; it is reused rather than re-written.

    Example:
        >>> import torch
        >>> from floatify.apgd import dlr_loss
        >>> dlr_loss(torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 4.0]]), torch.tensor([0, 0]))  # -(z_y - z_other) / range
        tensor([-0.6667,  1.0000])
    """
    import torchattacks

    if logits.shape[1] < 3:
        raise ValueError(f"the DLR loss needs at least 3 classes, the model has {logits.shape[1]}; use apgd-ce")
    return torchattacks.APGD.dlr_loss(None, logits, y)


def _eot_gradient(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, loss_fn, draws: int):
    """Mean over ``draws`` forwards (fresh noise each) of the input gradient, per-point loss and correctness."""
    grad = torch.zeros_like(x_adv)
    loss = torch.zeros(len(y), device=x_adv.device)
    correct = torch.zeros(len(y), device=x_adv.device)
    for _ in range(draws):
        x_in = x_adv.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(x_in)
            per_point = loss_fn(logits, y)
            grad += torch.autograd.grad(per_point.sum(), x_in)[0]
        loss += per_point.detach()
        correct += correct_predictions(logits.detach(), y)
    # reason: a non-finite gradient (a NaN model) would poison the sign step; treat it as no information
    grad = torch.nan_to_num(grad / draws, nan=0.0, posinf=0.0, neginf=0.0)
    return grad, torch.nan_to_num(loss / draws, nan=0.0), correct / draws


def apgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, loss: str = "ce",
         eot_draws: int = 1, restarts: int = 1, rho: float = 0.75) -> tuple[torch.Tensor, torch.Tensor]:
    """L∞ APGD with EOT; returns per point the strongest iterate (the clean point included) and its accuracy
    over the attack's own draws (the caller re-scores randomised models with fresh draws).

    reason: torchattacks' ``APGD`` picks its returned point from the last single noisy forward and returns
    the clean input for points it did not fool, which overstates a randomised model; this loop follows the
    same algorithm (Croce & Hein 2020, Alg. 1: step 2·eps, momentum 0.75, checkpoints at which the step is
    halved and the iterate reset to the best one) but averages loss, gradient and correctness over the
    draws and keeps, per point, the iterate with the lowest averaged accuracy (ties: highest loss).

    Example:
        >>> import torch, floatify
        >>> from floatify.apgd import apgd
        >>> model = floatify.convert(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)))
        >>> x, y = torch.rand(6, 3, 2, 2), torch.tensor([0, 1, 2, 0, 1, 2])
        >>> with floatify.lam(1.0):  # a randomised model: the gradient averaged over 4 noise draws per iteration
        ...     x_adv, accuracy = apgd(model, x, y, eps=0.1, steps=5, loss="dlr", eot_draws=4, restarts=2)
        >>> bool(((x_adv - x).abs() <= 0.1 + 1e-6).all()), bool(((accuracy >= 0) & (accuracy <= 1)).all())
        (True, True)
    """
    loss_fn = {"ce": lambda z, t: F.cross_entropy(z, t, reduction="none"), "dlr": dlr_loss}[loss]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            clean_logits = model(x)
        keep_x, keep_acc = x.clone(), correct_predictions(clean_logits, y)
        keep_loss = torch.nan_to_num(loss_fn(clean_logits, y), nan=0.0)
        for _ in range(restarts):
            for x_t, acc_t, loss_t in _apgd_run(model, x, y, eps, steps, loss_fn, eot_draws, rho):
                better = (acc_t < keep_acc) | ((acc_t == keep_acc) & (loss_t > keep_loss))
                keep_x[better] = x_t[better]
                keep_acc = torch.where(better, acc_t, keep_acc)
                keep_loss = torch.where(better, loss_t, keep_loss)
    finally:
        model.train(was_training)
    return keep_x.detach(), keep_acc


def _apgd_run(model, x, y, eps, steps, loss_fn, draws, rho):
    """Yield (iterate, accuracy over its draws, loss over its draws) for every APGD iterate of one run."""
    n = len(y)
    shape = (n,) + (1,) * (x.dim() - 1)
    period = max(int(0.22 * steps), 1)
    period_min, period_decrease = max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)

    def project(z):
        return torch.min(torch.max(z, x - eps), x + eps).clamp(0.0, 1.0)

    t = 2 * torch.rand_like(x) - 1  # reason: AutoAttack's start, a random corner-ish point of the ball
    x_adv = project(x + eps * t / t.reshape(n, -1).abs().amax(dim=1).clamp_min(1e-12).reshape(shape))
    grad, loss, acc = _eot_gradient(model, x_adv, y, loss_fn, draws)
    yield x_adv, acc, loss
    apgd_step = torch.full(shape, 2.0 * eps, device=x.device)  # per point, halved at checkpoints
    x_best, grad_best, loss_best = x_adv.clone(), grad.clone(), loss.clone()
    x_prev = x_adv.clone()
    increases = torch.zeros(n, device=x.device)
    loss_best_at_check = loss_best.clone()
    reduced_at_check = torch.ones(n, dtype=torch.bool, device=x.device)
    since_check, next_check = 0, period
    for i in range(steps):
        with torch.no_grad():
            momentum = 0.75 if i > 0 else 1.0
            z = project(x_adv + apgd_step * torch.sign(grad))
            x_new = project(x_adv + momentum * (z - x_adv) + (1 - momentum) * (x_adv - x_prev))
            x_prev, x_adv = x_adv, x_new
        grad, loss_new, acc = _eot_gradient(model, x_adv, y, loss_fn, draws)
        yield x_adv, acc, loss_new
        with torch.no_grad():
            increases += (loss_new > loss).float()
            loss = loss_new
            improved = loss_new > loss_best
            x_best[improved], grad_best[improved] = x_adv[improved], grad[improved]
            loss_best = torch.where(improved, loss_new, loss_best)
            since_check += 1
            if since_check == next_check:
                oscillating = increases <= next_check * rho  # reason: condition 1 of APGD's checkpoints
                stalled = ~reduced_at_check & (loss_best_at_check >= loss_best)  # condition 2
                reduce = oscillating | stalled
                reduced_at_check, loss_best_at_check = reduce.clone(), loss_best.clone()
                if reduce.any():
                    apgd_step[reduce] /= 2.0
                    x_adv[reduce], grad[reduce] = x_best[reduce], grad_best[reduce]
                    x_prev[reduce] = x_best[reduce]
                increases.zero_()
                since_check = 0
                next_check = max(next_check - period_decrease, period_min)
