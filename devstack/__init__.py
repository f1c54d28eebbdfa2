"""Private, real servers on free loopback ports for tests, the benchmark and the local demo."""

from devstack.dovecot import Dovecot, ImapAccount, TLSFiles
from devstack.mailbox import append_messages, count, make_message, recreate_folder, uidvalidity
from devstack.ports import DevstackError, free_port
from devstack.redis_server import RedisServer

__all__ = [
    "DevstackError",
    "Dovecot",
    "ImapAccount",
    "RedisServer",
    "TLSFiles",
    "append_messages",
    "count",
    "free_port",
    "make_message",
    "recreate_folder",
    "uidvalidity",
]
