"""DNS checks for a domain sending and receiving through the provider (dnspython).

    MX      <domain>                       exactly the provider's inbound hosts (mxa/mxb.mailgun.org)
    SPF     <domain> TXT "v=spf1 ..."      one SPF record, with include:<provider>
    DKIM    <selector>._domainkey.<domain> a TXT record with a public key (p=...)
    CNAME   email.<domain>                 (with tracking) -> the provider's tracking host

Each check is OK, MISSING or WRONG, with the value found. The resolver can be pointed at any
nameserver and port (tests run a DNS server on loopback).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

import dns.exception
import dns.resolver

from mailroom.config import DomainCheckConfig

TRACKING_WARNING = (
    "warning: {host} exists (the click/open tracking CNAME). Register {host} with the provider as a "
    "sending domain too, or someone else could claim it there and receive mail for it."
)


class Status(StrEnum):
    OK = "OK"
    MISSING = "MISSING"
    WRONG = "WRONG"


@dataclass(frozen=True)
class Check:
    record: str  # MX, SPF, DKIM, CNAME
    name: str  # the DNS name looked up
    status: Status
    expected: str
    found: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status.value
        data["found"] = list(self.found)
        return data


class DnsError(Exception):
    """The nameserver could not be asked (timeout, SERVFAIL, refused)."""


def resolver(config: DomainCheckConfig, nameserver: str | None = None, port: int | None = None) -> Any:
    ns = nameserver or config.nameserver
    if ns is None:
        res = dns.resolver.Resolver()
    else:
        res = dns.resolver.Resolver(configure=False)
        res.nameservers = [ns]
    res.port = port or config.port
    res.lifetime = config.timeout
    res.timeout = config.timeout
    return res


def _lookup(res: Any, name: str, rdtype: str) -> list[Any]:
    try:
        return list(res.resolve(name, rdtype, raise_on_no_answer=False) or [])
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except dns.exception.DNSException as exc:
        raise DnsError(f"{rdtype} {name}: {type(exc).__name__}: {exc}") from exc


def _host(value: Any) -> str:
    return str(value).rstrip(".").lower()


def _txt(rdata: Any) -> str:
    return b"".join(rdata.strings).decode("utf-8", "replace")


def check_mx(res: Any, domain: str, config: DomainCheckConfig) -> Check:
    found = tuple(sorted(_host(r.exchange) for r in _lookup(res, domain, "MX")))
    expected = tuple(sorted(h.lower().rstrip(".") for h in config.mx_hosts))
    return Check("MX", domain, _status(found, set(found) == set(expected)), ", ".join(expected), found)


def check_spf(res: Any, domain: str, config: DomainCheckConfig) -> Check:
    found = tuple(t for t in map(_txt, _lookup(res, domain, "TXT")) if t.lower().startswith("v=spf1"))
    mechanism = f"include:{config.spf_include.lower()}"
    good = len(found) == 1 and mechanism in found[0].lower().split()  # two SPF records are a permerror
    return Check("SPF", domain, _status(found, good), f"v=spf1 ... {mechanism} ...", found)


def check_dkim(res: Any, domain: str, config: DomainCheckConfig) -> Check:
    name = f"{config.dkim_selector}._domainkey.{domain}"
    found = tuple(map(_txt, _lookup(res, name, "TXT")))
    tags = [dict(_tag(t) for t in record.split(";") if "=" in t) for record in found]
    good = len(found) == 1 and bool(tags[0].get("p")) and tags[0].get("v", "DKIM1") == "DKIM1"
    return Check("DKIM", name, _status(found, good), "v=DKIM1; k=rsa; p=<public key>", found)


def check_tracking(res: Any, domain: str, config: DomainCheckConfig) -> Check:
    name = f"{config.tracking_host}.{domain}"
    found = tuple(_host(r.target) for r in _lookup(res, name, "CNAME"))
    target = config.tracking_target.lower().rstrip(".")
    return Check("CNAME", name, _status(found, found == (target,)), target, found)


def _tag(text: str) -> tuple[str, str]:
    key, _, value = text.partition("=")
    return key.strip(), "".join(value.split())


def _status(found: tuple[str, ...], good: bool) -> Status:
    if not found:
        return Status.MISSING
    return Status.OK if good else Status.WRONG


def check_domain(
    domain: str,
    config: DomainCheckConfig,
    *,
    tracking: bool = False,
    nameserver: str | None = None,
    port: int | None = None,
) -> list[Check]:
    """Every check for ``domain``; DnsError if the nameserver cannot be asked."""
    domain = domain.strip().rstrip(".").lower()
    res = resolver(config, nameserver, port)
    checks = [check_mx(res, domain, config), check_spf(res, domain, config), check_dkim(res, domain, config)]
    if tracking:
        checks.append(check_tracking(res, domain, config))
    return checks
