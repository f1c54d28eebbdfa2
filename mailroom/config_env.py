"""Which ``MAILROOM_*`` environment variables are settings, and which belong to the platform.

Platforms put variables of their own under our prefix. Kubernetes gives every pod service links for each
Service in its namespace (unless ``enableServiceLinks: false``): a Service ``mailroom-metrics`` yields
``MAILROOM_METRICS_SERVICE_HOST``, ``MAILROOM_METRICS_PORT=tcp://10.0.0.7:9100``,
``MAILROOM_METRICS_PORT_9100_TCP_ADDR`` ..., and one named ``mailroom`` yields ``MAILROOM_SERVICE_HOST``,
``MAILROOM_PORT`` .... Docker links add ``<ALIAS>_NAME`` and ``<ALIAS>_ENV_*``. None of these may stop
start-up, so a variable is a setting only when its first part (before any ``__``) names a field; the
rest are ignored, with one warning for a name that looks like a misspelt field. A variable that names a
field is always used, and a bad value is an error naming it, with one exception: ``<field>_PORT`` holding
``tcp://host:port`` is a link for a Service named after the field (``mailroom-http``), never a port number.

Pure: the caller passes the environment and the field names, and decides where warnings go.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass

# Kubernetes (pkg/kubelet/envvars) and Docker link variables, after the MAILROOM_ prefix. The Service's
# own name part is optional: a Service named just "mailroom" yields MAILROOM_SERVICE_HOST.
_LINK = re.compile(
    r"^(?:[A-Z0-9_]+_)?(?:"
    r"SERVICE_HOST|SERVICE_PORT(?:_[A-Z0-9_]+)?"
    r"|PORT(?:_\d+_(?:TCP|UDP|SCTP)(?:_(?:ADDR|PORT|PROTO))?)?"
    r"|NAME|ENV_[A-Z0-9_]+"
    r")$"
)
_LINK_URL = re.compile(r"^(?:tcp|udp|sctp)://[^\s/]+:\d+$")
MISSPELT_CUTOFF = 0.8  # difflib ratio: redis_ulr -> redis_url is 0.89, port -> http_port only 0.62


@dataclass(frozen=True)
class EnvOverride:
    """One setting from the environment: ``path`` into the config data, lower case."""

    env_name: str
    path: tuple[str, ...]
    value: str


@dataclass(frozen=True)
class EnvSettings:
    overrides: tuple[EnvOverride, ...]
    warnings: tuple[str, ...]

    def source_of(self, loc: tuple[str | int, ...]) -> str | None:
        """The variable that set the config value at ``loc`` (a validation error's location), if any."""
        where = tuple(str(part).lower() for part in loc)
        best: EnvOverride | None = None
        for override in self.overrides:
            if where[: len(override.path)] == override.path and (
                best is None or len(override.path) > len(best.path)
            ):
                best = override
        return best.env_name if best is not None else None


def is_platform_variable(rest: str) -> bool:
    """Whether ``MAILROOM_<rest>`` has the shape of a Kubernetes service link or a Docker link."""
    return _LINK.match(rest.upper()) is not None


def settings_from_env(
    environ: Mapping[str, str], fields: Collection[str], prefix: str, not_settings: Collection[str] = ()
) -> EnvSettings:
    """The ``prefix``-ed variables that are settings, and a warning per one that looks misspelt."""
    overrides: list[EnvOverride] = []
    warnings: list[str] = []
    for name, value in sorted(environ.items()):
        if not name.startswith(prefix) or name in not_settings:
            continue
        rest = name[len(prefix) :]
        path = tuple(rest.lower().split("__"))
        if path[0] in fields:
            if len(path) == 1 and rest.upper().endswith("_PORT") and _LINK_URL.match(value):
                warnings.append(
                    f"{name}={value} is a service link (a Service named {_service_name(prefix, rest)}), "
                    f"not the {path[0]} setting: ignored"
                )
                continue
            overrides.append(EnvOverride(name, path, value))
            continue
        if is_platform_variable(rest):
            continue
        close = difflib.get_close_matches(path[0], fields, n=1, cutoff=MISSPELT_CUTOFF)
        if close:
            suggestion = prefix + "__".join((close[0], *path[1:])).upper()
            warnings.append(f"{name} is not a setting (did you mean {suggestion}?): ignored")
    return EnvSettings(tuple(overrides), tuple(warnings))


def _service_name(prefix: str, rest: str) -> str:
    return (prefix + rest.removesuffix("_PORT")).lower().replace("_", "-")
