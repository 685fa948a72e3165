"""The handlers' CPU pool: results in order, errors surface, one pool per process."""
from __future__ import annotations

import os
import threading
import warnings

import pytest

from transforms.models.cpu import cpu_map, cpu_pool


def test_cpu_map_keeps_the_order_and_uses_the_pool() -> None:
    threads: set[str] = set()

    def square(value: int) -> int:
        threads.add(threading.current_thread().name)
        return value * value

    assert cpu_map(square, range(50)) == [v * v for v in range(50)]
    assert cpu_map(square, []) == []
    assert any(name.startswith("counterfactory-cpu") for name in threads)


def test_cpu_map_raises_what_a_task_raised() -> None:
    def fail_on_three(value: int) -> int:
        if value == 3:
            raise ValueError("three")
        return value

    with pytest.raises(ValueError, match="three"):
        cpu_map(fail_on_three, range(6))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_gets_its_own_pool() -> None:
    parent = cpu_pool()
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Python 3.12: fork of a threaded process
        pid = os.fork()
    if pid == 0:  # child: the parent's pool threads do not exist here
        ok = cpu_pool() is not parent and cpu_map(abs, [-1, -2]) == [1, 2]
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"
    assert cpu_pool() is parent
