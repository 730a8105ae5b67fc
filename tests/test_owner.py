"""Process identity for job claims and temp files: a dead writer's leftovers are told from live work."""

from __future__ import annotations

from svdaemon.owner import current_owner, file_tag, owner_is_alive, tagged_writer_is_dead

from doubles import from_exited_process


def test_owner_liveness():
    me = current_owner()
    host, pid, token = me.rsplit(":", 2)
    assert owner_is_alive(me)
    assert not owner_is_alive(from_exited_process("current_owner()"))
    if token != "?":
        assert not owner_is_alive(f"{host}:{pid}:{int(token) + 1}")  # same pid, another process: reused
    assert not owner_is_alive(f"{host}:999999999:0")
    assert owner_is_alive(f"another-host.example:{pid}:0")  # cannot be checked from here: left alone
    assert not owner_is_alive("not an owner")


def test_a_file_tag_names_a_dead_writer_only_when_it_surely_exited():
    assert not tagged_writer_is_dead(f".svdaemon-{file_tag()}-k3j2.tmp")
    assert tagged_writer_is_dead(f".svdaemon-{from_exited_process('file_tag()')}-k3j2.tmp")
    pid, start, _ = file_tag().split(".")
    assert not tagged_writer_is_dead(f".svdaemon-{pid}.{start}.00000000-k3j2.tmp")  # another host
    assert not tagged_writer_is_dead(".svdaemon-k3j2.tmp")  # untagged: left to the age rule
