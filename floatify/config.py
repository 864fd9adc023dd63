"""One shape for the verbs' configs: frozen dataclasses validated in ``__post_init__``, overrides by ``replace``.

``convert(model, FloatConfig | None, **overrides)``, ``fit(model, loader, TrainConfig | None, **overrides)`` and
``evaluate(model, loader, EvalConfig | None, **overrides)`` all resolve their settings with :func:`resolve`: the
config given (or the defaults) with the overrides applied through :func:`dataclasses.replace`, so an override is
validated exactly as a field given to the constructor, and an unknown one is a TypeError naming the valid keys.
The ``check_*`` helpers are the validations the configs share; each raises one line naming the field, what it
must be and what it got.

Example:
    >>> import floatify
    >>> from floatify.config import resolve
    >>> resolve(None, floatify.FloatConfig, {"alpha_init": 0.5}, "convert").alpha_init
    0.5
    >>> resolve(None, floatify.FloatConfig, {"alpha": 0.5}, "convert")
    Traceback (most recent call last):
    ...
    TypeError: convert() got an unknown option 'alpha'; valid options: alpha_init, dual_bn, bn_mix, bn_curve
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Collection, Mapping
from typing import Any, TypeVar

__all__ = ["resolve", "check_bool", "check_int", "check_real", "check_choice"]

C = TypeVar("C")


def resolve(config: C | None, cls: type[C], overrides: Mapping[str, Any], verb: str) -> C:
    """``config`` (None: ``cls()``) with ``overrides`` applied by :func:`dataclasses.replace` (validated again).

    Example:
        >>> import floatify
        >>> from floatify.config import resolve
        >>> resolve(floatify.FloatConfig(dual_bn=False), floatify.FloatConfig, {}, "convert").dual_bn
        False
    """
    if config is None:
        config = cls()
    if not isinstance(config, cls):
        raise TypeError(f"{verb}() takes a floatify.{cls.__name__} as config, got {type(config).__name__}; pass "
                        f"settings as keywords ({verb}(..., {_field_names(cls)[0]}=...)) or as a {cls.__name__}")
    unknown = [key for key in overrides if key not in _field_names(cls)]
    if unknown:
        plural = "s" if len(unknown) > 1 else ""
        raise TypeError(f"{verb}() got an unknown option{plural} {', '.join(repr(k) for k in unknown)}; valid "
                        f"options: {', '.join(_field_names(cls))}")
    return dataclasses.replace(config, **overrides) if overrides else config  # type: ignore[type-var]


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def check_bool(name: str, value: object) -> None:
    """A TypeError unless ``value`` is True or False.

    Example:
        >>> from floatify.config import check_bool
        >>> check_bool("dual_bn", "yes")
        Traceback (most recent call last):
        ...
        TypeError: dual_bn must be True or False, got 'yes'
    """
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")


def check_int(name: str, value: object, *, minimum: int = 1, optional: bool = False, meaning: str = "") -> None:
    """A TypeError unless ``value`` is an int (None too when ``optional``), a ValueError below ``minimum``.

    Example:
        >>> from floatify.config import check_int
        >>> check_int("score_draws", 0, meaning="noise draws per point")
        Traceback (most recent call last):
        ...
        ValueError: score_draws (noise draws per point) must be an int >= 1, got 0
    """
    if optional and value is None:
        return
    what = f"{name} ({meaning})" if meaning else name
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int >= {minimum}{' or None' if optional else ''}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{what} must be an int >= {minimum}, got {value!r}")


def check_real(name: str, value: object, *, low: float, high: float = math.inf, optional: bool = False,
               meaning: str = "") -> None:
    """A TypeError unless ``value`` is a real number (None too when ``optional``), a ValueError outside [low, high].

    Example:
        >>> from floatify.config import check_real
        >>> check_real("eps", 2.0, low=0, high=1, meaning="pixel units, inputs in [0, 1]")
        Traceback (most recent call last):
        ...
        ValueError: eps (pixel units, inputs in [0, 1]) must be a number in [0, 1], got 2.0
    """
    if optional and value is None:
        return
    what = f"{name} ({meaning})" if meaning else name
    span = f"in [{low:g}, {high:g}]" if math.isfinite(high) else f">= {low:g}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a number {span}{' or None' if optional else ''}, got {value!r}")
    if not (math.isfinite(value) and low <= float(value) <= high):
        finite = "" if math.isfinite(high) else " finite"  # reason: no upper bound: say that inf is refused too
        raise ValueError(f"{what} must be a{finite} number {span}, got {value!r}")


def check_choice(name: str, value: object, choices: Collection[str], *, optional: bool = False) -> None:
    """A ValueError unless ``value`` is one of ``choices`` (None too when ``optional``).

    Example:
        >>> from floatify.config import check_choice
        >>> check_choice("bn_mix", "average", ("interpolate", "switch"))
        Traceback (most recent call last):
        ...
        ValueError: bn_mix must be one of interpolate, switch, got 'average'
    """
    if optional and value is None:
        return
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}{' (or None)' if optional else ''}, "
                         f"got {value!r}")
