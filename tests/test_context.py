import asyncio
import contextvars
import math
import threading

import pytest
import torch

import floatify


def test_default_and_nesting_restore_outer_value_even_on_error():
    assert floatify.get_lam() == 0.0
    with floatify.lam(0.3):
        assert floatify.get_lam() == 0.3
        with pytest.raises(RuntimeError):
            with floatify.lam(1):
                assert floatify.get_lam() == 1.0
                raise RuntimeError("boom")
        assert floatify.get_lam() == 0.3
    assert floatify.get_lam() == 0.0


@pytest.mark.parametrize(
    "bad, error",
    [
        (-0.1, ValueError),
        (1.0001, ValueError),
        (math.nan, ValueError),
        (math.inf, ValueError),
        ("0.5", TypeError),
        (None, TypeError),
        (True, TypeError),
        (torch.tensor([0.1, 0.2]), TypeError),
        (torch.tensor(2.0), ValueError),
    ],
)
def test_invalid_lam_is_rejected_with_a_clear_error(bad, error):
    with pytest.raises(error, match="lam"):
        with floatify.lam(bad):
            pass
    assert floatify.get_lam() == 0.0


def test_scalar_tensor_and_int_are_accepted():
    with floatify.lam(torch.tensor(0.5)):
        assert floatify.get_lam() == 0.5
    with floatify.lam(1):
        assert floatify.get_lam() == 1.0


def test_threads_see_their_own_lam_and_new_threads_start_at_zero():
    seen = {}
    barrier = threading.Barrier(2)

    def worker(value):
        with floatify.lam(value):
            barrier.wait()
            seen[value] = floatify.get_lam()

    threads = [threading.Thread(target=worker, args=(v,)) for v in (0.2, 0.8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {0.2: 0.2, 0.8: 0.8}

    inside = {}
    with floatify.lam(0.7):
        t = threading.Thread(target=lambda: inside.setdefault("plain", floatify.get_lam()))
        t.start()
        t.join()
        ctx = contextvars.copy_context()
        t = threading.Thread(target=lambda: ctx.run(lambda: inside.setdefault("copied", floatify.get_lam())))
        t.start()
        t.join()
    assert inside == {"plain": 0.0, "copied": 0.7}


def test_asyncio_tasks_see_their_own_lam():
    async def task(value):
        with floatify.lam(value):
            await asyncio.sleep(0.01)
            return floatify.get_lam()

    async def main():
        return await asyncio.gather(task(0.1), task(0.9), task(0.0))

    assert asyncio.run(main()) == [0.1, 0.9, 0.0]
