"""The Redis client every part of mailroom uses: timeouts, Sentinel URLs, and the command packer.

Only the connection lives here; :mod:`mailroom.queue` writes jobs over it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

import hiredis
import redis
from redis._parsers import Encoder
from redis.connection import HiredisRespSerializer, PythonRespSerializer
from redis.exceptions import DataError
from redis.sentinel import Sentinel
from redis.utils import HIREDIS_AVAILABLE

SENTINEL_SCHEME = "redis+sentinel://"
_TIMEOUTS: dict[str, Any] = {"socket_timeout": 10, "socket_connect_timeout": 5}


class CommandPacker:
    """How this client turns a command into bytes: hiredis's packer, the fastest for the thousands of small
    arguments of an enqueue script, except for a command with a big argument (a large message's job
    data). hiredis copies every argument into one buffer and that into a bytes object; redis-py's own
    packer sends a big argument as it is, so a 25 MiB message is not held twice more while it is sent.
    """

    BIG = 1024 * 1024

    def __init__(self) -> None:
        self._small = HiredisRespSerializer() if HIREDIS_AVAILABLE else None
        self._big = PythonRespSerializer(6000, Encoder("utf-8", "strict", False).encode)  # type: ignore[no-untyped-call]

    def pack(self, *args: Any) -> list[bytes | memoryview]:
        if self._small is None:
            return self._big.pack(*args)  # type: ignore[no-untyped-call,no-any-return]
        plain = True  # only str, bytes, int and float: hiredis takes them as they are
        for arg in args:
            kind = arg.__class__
            if kind is bytes:
                if len(arg) > self.BIG:
                    return self._big.pack(*args)  # type: ignore[no-untyped-call,no-any-return]
            elif kind is not str and kind is not int and kind is not float:
                plain = False
        name = args[0]
        if plain and (b" " if name.__class__ is bytes else " ") not in name:  # else redis-py splits it
            try:
                return [hiredis.pack_command(args)]
            except TypeError as exc:
                raise DataError(str(exc)) from exc
        return self._small.pack(*args)  # type: ignore[no-any-return]


def connect(url: str) -> redis.Redis:
    """A Redis client with timeouts, so an unreachable server is an error, not a hang.

    ``redis+sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT...]/SERVICE[/DB]`` asks the Sentinels for the
    current master of SERVICE (redis-py's Sentinel; the password is the master's).
    """
    if url.startswith(SENTINEL_SCHEME):
        return _sentinel_master(url)
    return redis.Redis.from_url(
        url, **_TIMEOUTS, health_check_interval=30, retry_on_timeout=False, command_packer=CommandPacker()
    )


def _sentinel_master(url: str) -> redis.Redis:
    rest = url[len(SENTINEL_SCHEME) :]
    userinfo, _, rest = rest.rpartition("@")
    hosts, _, path = rest.partition("/")
    service, _, db = path.strip("/").partition("/")
    if not hosts or not service:
        raise ValueError("a Sentinel URL looks like redis+sentinel://host:26379,host2:26379/mymaster/0")
    nodes = []
    for node in hosts.split(","):
        host, _, port = node.rpartition(":") if ":" in node else (node, "", "26379")
        nodes.append((host.strip("[]"), int(port)))
    password = unquote(userinfo.partition(":")[2]) if userinfo else None
    sentinel = Sentinel(nodes, **_TIMEOUTS)  # type: ignore[no-untyped-call]
    master: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        service, db=int(db or 0), password=password, command_packer=CommandPacker(), **_TIMEOUTS
    )
    return master
