"""The enqueue client's command packer: the same bytes on the wire either way, and a big argument is
sent as the very object it was given, not copied."""

from __future__ import annotations

from redis._parsers import Encoder
from redis.connection import PythonRespSerializer

from mailroom.redis_client import CommandPacker


def test_small_and_big_commands_pack_to_the_same_protocol_bytes() -> None:
    reference = PythonRespSerializer(6000, Encoder("utf-8", "strict", False).encode)
    for args in (
        ("SET", "k", "v", "EX", 5),
        (b"SET", b"k", 1.5),
        ("CONFIG GET", "maxmemory"),
        (b"CLIENT SETNAME", "x"),
        ("HSET", "k", "f", memoryview(b"view"), bytearray(b"array")),
        ("EVALSHA", "abc", 0, b"x" * (CommandPacker.BIG + 1), "tail"),
    ):
        assert b"".join(CommandPacker().pack(*args)) == b"".join(reference.pack(*args))


def test_a_big_argument_is_not_copied() -> None:
    big = b"y" * (CommandPacker.BIG + 1)
    chunks = CommandPacker().pack("HSET", "job", "data", big)
    assert any(chunk is big for chunk in chunks)
