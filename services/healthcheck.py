"""The containers' healthcheck: exit 0 when HEALTHCHECK_URL (or the URL given) answers 2xx.

    python -m services.healthcheck [URL]

The images are slim (no curl or wget); Docker's HEALTHCHECK, compose's healthchecks and
nothing else call this. Kubernetes probes the same routes over HTTP itself.
"""

import os
import sys
import urllib.error
import urllib.request


def check(url: str, timeout_s: float = 4.0) -> str | None:
    """None when `url` answers 2xx, else why not."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return None if 200 <= response.status < 300 else f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return str(getattr(exc, "reason", exc))


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    url = args[0] if args else os.environ.get("HEALTHCHECK_URL", "")
    if not url:
        sys.exit("usage: python -m services.healthcheck URL (or set HEALTHCHECK_URL)")
    if (problem := check(url)) is not None:
        sys.exit(f"unhealthy: {url}: {problem}")


if __name__ == "__main__":
    main()
