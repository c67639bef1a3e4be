"""Ids (domain.new_id, owned_id): URL-safe, never repeated, and a forked process never repeats its parent's."""

from __future__ import annotations

import os
import re

from playgate.domain import RANDOM_POOL_BYTES, id_owner, new_id, owned_id


def test_ids_are_hex_and_never_repeat_across_many_pools() -> None:
    count = 3 * RANDOM_POOL_BYTES  # ids from a dozen pools of random bytes
    ids = [new_id() for _ in range(count)]
    assert len(set(ids)) == count
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)


def test_an_owned_id_names_its_user() -> None:
    made = owned_id("user:42")
    assert id_owner(made) == "user:42"
    assert re.fullmatch(r"[0-9a-f]+-[0-9a-f]{24}", made)


def test_a_forked_child_makes_ids_of_its_own() -> None:
    new_id()  # the parent holds a pool with bytes left in it
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: send 10 ids, then leave at once
        os.close(read_end)
        os.write(write_end, " ".join(new_id() for _ in range(10)).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        child = set(pipe.read().split())
    os.waitpid(pid, 0)
    parent = {new_id() for _ in range(10)}
    assert len(child) == 10
    assert not child & parent
