"""RQ's floor: a job that does nothing, run by a plain ``rq worker``."""


def noop() -> None:
    return None
