"""Every Grafana panel query, and a check that each one returns data from a real Prometheus.

    python infra/grafana/panels.py --prometheus http://127.0.0.1:9090
    python infra/grafana/panels.py --prometheus http://127.0.0.1:9090 --var model=titanic

Each dashboard is checked for every value its template variables take in that Prometheus
(what Grafana would offer), or for the values given with --var; a dashboard whose variable
does not offer a given value is skipped, as Grafana would not show it. Exit status 1 when a
query fails or returns no series. Standard library only: it runs with any Python 3.11.
"""

import argparse
import itertools
import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

DASHBOARDS = Path(__file__).resolve().parent / "dashboards"
# Grafana's own variables, as the check expands them (a value given for the same name wins)
BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h", "__range_s": "3600"}
# ${name}, ${name:format}, [[name]] and $name
VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\[\[(\w+)\]\]|\$(\w+)")
LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(.+?)\s*,\s*)?(\w+)\s*\)\s*$")
# A PromQL lexer just good enough to list the metrics an expr reads (see metric_names)
STRINGS = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
BRACKETS = re.compile(r"\{[^{}]*\}|\[[^\[\]]*\]")  # label matchers, ranges, subqueries
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
NAME = re.compile(r"(?<![\w:.])[a-zA-Z_:][\w:]*(?![\w:])(?!\s*\()")  # not a call, not in a number
KEYWORDS = {"and", "or", "unless", "bool", "offset", "group_left", "group_right", "inf", "nan"}


Board = Mapping[str, Any]  # a dashboard's JSON


class Target(NamedTuple):
    dashboard: str  # the dashboard's uid
    panel: str
    ref_id: str
    expr: str


class Result(NamedTuple):
    target: Target
    query: str  # the expr with its variables expanded
    series: int
    error: str  # empty when the query ran

    @property
    def ok(self) -> bool:
        return not self.error and self.series > 0


def dashboards(folder: Path = DASHBOARDS) -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))]


def panels(dashboard: Board) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, and the panels a collapsed row holds."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panels(panel)


def targets(boards: Iterable[Board] | None = None) -> Iterator[Target]:
    for board in dashboards() if boards is None else boards:
        for panel in panels(board):
            for target in panel.get("targets", []):
                yield Target(board["uid"], panel["title"], target["refId"], target.get("expr", ""))


def expand(expr: str, values: Mapping[str, str]) -> str:
    """The expr with $model, ${model}, [[model]] and Grafana's $__ variables replaced."""
    known = BUILTINS | dict(values)

    def value(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        if name not in known:
            raise ValueError(f"no value for the variable ${name}")
        return known[name]

    return VARIABLE.sub(value, expr)


def metric_names(expr: str) -> set[str]:
    """The metric names an expanded expr selects (not functions, labels or keywords)."""
    bare = GROUPING.sub(" ", BRACKETS.sub(" ", STRINGS.sub('""', expr)))
    return {name for name in NAME.findall(bare) if name.lower() not in KEYWORDS}


def api(prometheus_url: str, path: str, **params: str) -> Any:
    """GET /api/v1/<path>: the `data` of a success, else ValueError with Prometheus's error."""
    url = f"{prometheus_url.rstrip('/')}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            body = json.load(response)
    except urllib.error.HTTPError as exc:  # 400 / 422: the answer still says why
        body = json.load(exc)
    if body.get("status") != "success":
        raise ValueError(f"{body.get('errorType', 'error')}: {body.get('error', body)}")
    return body["data"]


def query(prometheus_url: str, expr: str) -> Result:
    """`expr` as an instant query, unexpanded: its series count, or the error."""
    target = Target("", "", "", expr)
    try:
        data = api(prometheus_url, "query", query=expr)
    except (ValueError, OSError) as exc:
        return Result(target, expr, 0, str(exc))
    result = data["result"]
    series = len(result) if data["resultType"] in ("vector", "matrix") else 1
    return Result(target, expr, series, "")


def variable_values(prometheus_url: str, board: Board) -> dict[str, list[str]]:
    """What each query or custom variable of the dashboard offers in this Prometheus."""
    offered = {}
    for variable in board.get("templating", {}).get("list", []):
        spec = variable.get("query", "")
        spec = spec.get("query", "") if isinstance(spec, dict) else spec
        if variable["type"] == "custom":
            offered[variable["name"]] = [v.strip() for v in spec.split(",") if v.strip()]
        elif variable["type"] == "query":
            match = LABEL_VALUES.match(spec)
            if match is None:
                raise ValueError(f"{board['uid']}: ${variable['name']}: not label_values(): {spec}")
            selector, label = match.groups()
            params = {"match[]": selector} if selector else {}
            found = api(prometheus_url, f"label/{label}/values", **params)
            offered[variable["name"]] = sorted(found)
    return offered


def assignments(offered: Mapping[str, list[str]], given: Mapping[str, str]) -> list[dict[str, str]]:
    """Every combination of the variables' values (a given value fixes its variable)."""
    choices = []
    for name, options in offered.items():
        if name in given:
            options = [given[name]] if given[name] in options else []
        choices.append([(name, option) for option in options])
    return [dict(given) | dict(combination) for combination in itertools.product(*choices)]


def run(
    prometheus_url: str, values: Mapping[str, str], boards: Iterable[Board] | None = None
) -> list[Result]:
    """Every target of the dashboards, expanded with `values` and queried."""
    results = []
    for target in targets(boards):
        if not target.expr.strip():
            results.append(Result(target, "", 0, "the target has no expr"))
            continue
        try:
            expr = expand(target.expr, values)
        except ValueError as exc:
            results.append(Result(target, target.expr, 0, str(exc)))
            continue
        results.append(query(prometheus_url, expr)._replace(target=target))
    return results


def check(
    prometheus_url: str, values: Mapping[str, str], boards: Iterable[Board] | None = None
) -> list[Result]:
    """The targets that fail or return no series (an empty list: every panel has data)."""
    return [result for result in run(prometheus_url, values, boards) if not result.ok]


def describe(result: Result) -> str:
    return result.error or ("no series" if result.series == 0 else f"{result.series} series")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090", help="its base URL")
    parser.add_argument("--var", action="append", default=[], help="NAME=VALUE, repeatable")
    parser.add_argument("--dashboard", action="append", default=[], help="a uid (default: all)")
    args = parser.parse_args(argv)
    given = dict(item.split("=", 1) for item in args.var)
    boards = [b for b in dashboards() if not args.dashboard or b["uid"] in args.dashboard]
    if unknown := set(args.dashboard) - {b["uid"] for b in boards}:
        parser.error(f"no dashboard has the uid {', '.join(sorted(unknown))}")
    try:
        api(args.prometheus, "status/buildinfo")
    except OSError as exc:
        print(f"cannot reach Prometheus at {args.prometheus}: {exc}", file=sys.stderr)
        return 1
    problems = 0
    print(f"{'dashboard':<26} {'panel':<44} {'ref':<3} {'values':<24} result")
    for board in boards:
        offered = variable_values(args.prometheus, board)
        for name in [name for name, options in offered.items() if not options]:
            problems += 1
            print(f"{board['uid']:<26} FAIL the variable ${name} offers no value")
        combinations = assignments(offered, given)
        if not combinations and all(offered.values()):
            print(f"{board['uid']:<26} skipped: its variables offer none of {given}")
        for values in combinations:
            shown = ",".join(f"{k}={v}" for k, v in values.items())
            for result in run(args.prometheus, values, [board]):
                problems += not result.ok
                flag = "ok  " if result.ok else "FAIL"
                where = f"{board['uid']:<26} {result.target.panel[:44]:<44}"
                print(
                    f"{where} {result.target.ref_id:<3} {shown[:24]:<24} {flag} {describe(result)}"
                )
    print(f"{problems} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
