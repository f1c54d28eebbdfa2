"""`mailroom domain check` against a real authoritative DNS server on loopback (dnslib, UDP and TCP)
serving a good zone and a bad one; never the internet."""

from __future__ import annotations

import json
from collections.abc import Iterator

import dns.resolver
import pytest
from click.testing import CliRunner

from mailroom.cli import cli
from mailroom.config import DomainCheckConfig
from mailroom.provider.domain import Status, check_domain
from tests.provider_servers import dns_server

pytestmark = pytest.mark.integration

DKIM_KEY = "MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQC1TaNgLlSyQMNWVLNLvyY/neDgaL2oqQE8T5illKqCgDtFHc8eHVAU"

GOOD = f"""
example.com.                 300 IN MX    10 mxa.mailgun.org.
example.com.                 300 IN MX    10 mxb.mailgun.org.
example.com.                 300 IN TXT   "v=spf1 include:mailgun.org ~all"
example.com.                 300 IN TXT   "google-site-verification=abc"
smtp._domainkey.example.com. 300 IN TXT   "k=rsa; p={DKIM_KEY}"
email.example.com.           300 IN CNAME mailgun.org.
"""

BAD = """
bad.example.                 300 IN MX    10 mx.other-provider.example.
bad.example.                 300 IN MX    20 mxa.mailgun.org.
bad.example.                 300 IN TXT   "v=spf1 include:_spf.other.example -all"
email.bad.example.           300 IN CNAME tracking.other.example.
"""


@pytest.fixture(scope="module")
def nameserver() -> Iterator[int]:
    with dns_server(GOOD + BAD) as port:
        yield port


def run(port: int, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(
        cli, ["domain", "check", *args, "--nameserver", "127.0.0.1", "--port", str(port)]
    )
    return result.exit_code, result.stdout, result.stderr


def test_good_zone_passes(nameserver: int) -> None:
    code, out, err = run(nameserver, "example.com", "--tracking")
    assert code == 0, out + err
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == ["MX", "SPF", "DKIM", "CNAME"]
    assert all(line.split()[2] == "OK" for line in lines)
    assert "mxa.mailgun.org, mxb.mailgun.org" in lines[0]
    assert "Register email.example.com with the provider as a sending domain" in err


def test_bad_zone_fails_with_one_line_per_record(nameserver: int) -> None:
    code, out, err = run(nameserver, "bad.example", "--tracking")
    assert code == 1
    statuses = {line.split()[0]: line.split()[2] for line in out.splitlines() if not line.startswith(" ")}
    assert statuses == {"MX": "WRONG", "SPF": "WRONG", "DKIM": "MISSING", "CNAME": "WRONG"}
    assert "mx.other-provider.example" in out
    assert "Register email.bad.example" in err  # the CNAME exists, so the warning is printed


def test_json_and_tcp(nameserver: int) -> None:
    code, out, _ = run(nameserver, "example.com", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["ok"] is True and data["warning"] is None
    assert [c["record"] for c in data["checks"]] == ["MX", "SPF", "DKIM"]
    # The same answers over TCP (the server listens on both).
    config = DomainCheckConfig(nameserver="127.0.0.1", port=nameserver)
    res = dns.resolver.Resolver(configure=False)
    res.nameservers, res.port = ["127.0.0.1"], nameserver
    answer = res.resolve("example.com", "MX", tcp=True)
    assert sorted(str(r.exchange) for r in answer) == ["mxa.mailgun.org.", "mxb.mailgun.org."]
    assert all(c.status is Status.OK for c in check_domain("Example.COM.", config))


def test_missing_domain(nameserver: int) -> None:
    code, out, _ = run(nameserver, "nothing.example", "--json")
    assert code == 1
    assert {c["status"] for c in json.loads(out)["checks"]} == {"MISSING"}
