"""``python -m mailroom.healthcheck``: the container image's HEALTHCHECK (Docker, Compose).

Asks this container's own ``/healthz`` on ``http_port`` (the same liveness Kubernetes probes) and exits
0 when it answers 200, 1 otherwise, with one line saying what it saw. Without ``http_port`` there is
nothing to ask: it says so and exits 0, so an image run without the health server is not marked
unhealthy forever.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

from mailroom.config import load_settings
from mailroom.errors import ConfigError

TIMEOUT_SECONDS = 4.0  # under the Dockerfile's --timeout=5s


def probe(port: int, timeout: float = TIMEOUT_SECONDS) -> tuple[bool, str]:
    """Whether http://127.0.0.1:<port>/healthz answers 200, and a line saying what happened."""
    url = f"http://127.0.0.1:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200, f"{url}: {response.status}"
    except urllib.error.HTTPError as exc:
        return False, f"{url}: {exc.code}"
    except OSError as exc:
        return False, f"{url}: {exc}"


def main() -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"healthcheck: config error: {exc.problems[0]}", file=sys.stderr)
        return 1
    if settings.http_port is None:
        print("healthcheck: no http_port configured, nothing to probe")
        return 0
    ok, detail = probe(settings.http_port)
    print(f"healthcheck: {detail}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
