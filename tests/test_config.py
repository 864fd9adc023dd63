"""floatify.config: the one shape of the verbs' configs (validation, overrides by replace)."""

from __future__ import annotations

import dataclasses

import pytest

from floatify.config import check_bool, check_choice, check_int, check_real, resolve


@dataclasses.dataclass(frozen=True)
class Toy:
    steps: int = 3
    name: str = "a"

    def __post_init__(self) -> None:
        check_int("steps", self.steps)
        check_choice("name", self.name, ("a", "b"))


@pytest.mark.parametrize("config, overrides, expected", [
    (None, {}, Toy()),
    (None, dict(steps=5), Toy(steps=5)),
    (Toy(name="b"), dict(steps=5), Toy(steps=5, name="b")),
    (Toy(steps=7), {}, Toy(steps=7)),
])
def test_resolve_applies_overrides_to_the_config_or_the_defaults(config, overrides, expected):
    assert resolve(config, Toy, overrides, "toy") == expected


@pytest.mark.parametrize("config, overrides, error, message", [
    (None, dict(step=5), TypeError, "toy\\(\\) got an unknown option 'step'; valid options: steps, name$"),
    (None, dict(step=5, nam="b"), TypeError, "unknown options 'step', 'nam'; valid options: steps, name$"),
    (None, dict(steps=0), ValueError, "steps must be an int >= 1, got 0"),  # validated as the constructor does
    (Toy(), dict(name="c"), ValueError, "name must be one of a, b, got 'c'"),
    ({"steps": 3}, {}, TypeError, "toy\\(\\) takes a floatify.Toy as config, got dict; pass settings as keywords"),
])
def test_resolve_refuses_unknown_keys_bad_values_and_foreign_configs(config, overrides, error, message):
    with pytest.raises(error, match=message):
        resolve(config, Toy, overrides, "toy")


@pytest.mark.parametrize("check, args, kwargs, error, message", [
    (check_bool, ("flag", 1), {}, TypeError, "flag must be True or False, got 1"),
    (check_int, ("n", True), {}, TypeError, "n must be an int >= 1, got True"),
    (check_int, ("n", 1.0), dict(optional=True), TypeError, "n must be an int >= 1 or None, got 1.0"),
    (check_int, ("n", -1), dict(minimum=0, meaning="points"), ValueError, "n \\(points\\) must be an int >= 0, got -1"),
    (check_real, ("x", float("inf")), dict(low=0.0), ValueError, "x must be a finite number >= 0, got inf"),
    (check_real, ("x", 1.5), dict(low=0.0, high=1.0), ValueError, "x must be a number in \\[0, 1\\], got 1.5"),
    (check_real, ("x", "1"), dict(low=0.0, high=1.0), TypeError, "x must be a number in \\[0, 1\\], got '1'"),
    (check_choice, ("kind", None), dict(choices=("a",)), ValueError, "kind must be one of a, got None"),
])
def test_checks_name_the_field_what_it_must_be_and_what_it_got(check, args, kwargs, error, message):
    with pytest.raises(error, match=message):
        check(*args, **kwargs)


@pytest.mark.parametrize("check, args, kwargs", [
    (check_bool, ("flag", False), {}),
    (check_int, ("n", 0), dict(minimum=0)),
    (check_int, ("n", None), dict(optional=True)),
    (check_real, ("x", 1), dict(low=0.0, high=1.0)),
    (check_real, ("x", None), dict(low=0.0, optional=True)),
    (check_choice, ("kind", None), dict(choices=("a",), optional=True)),
])
def test_checks_pass_valid_values(check, args, kwargs):
    assert check(*args, **kwargs) is None
