"""The Helm chart as `helm template` renders it: probes, hardening, shutdown timing, settings,
TLS, authentication and authorization (failing closed without them).

scripts/check_chart.py lints the chart and validates every manifest against Kubernetes' schemas;
these tests assert what the chart promises, rendering through that script's helm.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shlex
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import Settings, describe
from gateway.security.policy import OPERATIONS, Policy
from gateway.server.metrics import Metrics
from tests.certs import CA
from tests.helpers import GatewayThread, load_script

ROOT = Path(__file__).resolve().parent.parent


chart = load_script("check_chart")
CI = chart.CHART / "ci"
ALL_VALUES = CI / "all-values.yaml"
#: The baseline: plaintext behind a mesh, every caller allowed everything.
MINIMAL = CI / "minimal-values.yaml"
#: TLS, mutual TLS, bearer tokens and an inline policy.
TLS_VALUES = CI / "tls-values.yaml"
#: Variables the chart always sets itself, whatever the values say.
CHART_OWNED = {
    "GATEWAY_LISTEN_ADDRESS",
    "GATEWAY_METRICS_ADDRESS",
    "GATEWAY_EMBEDDED_S3",
    "GATEWAY_HEALTH",
    "GATEWAY_PLAINTEXT",
    "GATEWAY_ALLOW_ALL",
}
#: Variables the chart sets from tls, auth and authorization, when those are configured: never
#: from config, nor extraEnv.
CHART_OWNED_SECURITY = {
    "GATEWAY_TLS_CERT_FILE",
    "GATEWAY_TLS_KEY_FILE",
    "GATEWAY_TLS_CLIENT_CA_FILE",
    "GATEWAY_HEALTH_ADDRESS",
    "GATEWAY_AUTH_TOKENS_FILE",
    "GATEWAY_POLICY_FILE",
    "GATEWAY_WRITE_TOKEN_KEYS_FILE",
}
#: Each file variable and the volume that carries its file.
SECURITY_FILES = {
    "GATEWAY_TLS_CERT_FILE": "tls",
    "GATEWAY_TLS_KEY_FILE": "tls",
    "GATEWAY_TLS_CLIENT_CA_FILE": "client-ca",
    "GATEWAY_AUTH_TOKENS_FILE": "tokens",
    "GATEWAY_POLICY_FILE": "policy",
}
#: Settings the chart does not expose: the embedded S3 is always off in a cluster.
NOT_EXPOSED = {"GATEWAY_EMBEDDED_BUCKET"}
#: Each ci/*-values.yaml of one toggle, and the kind it adds.
TOGGLES = {
    "hpa-values.yaml": "HorizontalPodAutoscaler",
    "pdb-values.yaml": "PodDisruptionBudget",
    "servicemonitor-values.yaml": "ServiceMonitor",
    "prometheusrule-values.yaml": "PrometheusRule",
    "networkpolicy-values.yaml": "NetworkPolicy",
    "reaper-values.yaml": "CronJob",
    "grpcroute-values.yaml": "GRPCRoute",
}

Manifests = list[dict[str, Any]]


@pytest.fixture(scope="module")
def minimal() -> Manifests:
    return chart.render([MINIMAL])


@pytest.fixture(scope="module")
def everything() -> Manifests:
    return chart.render([ALL_VALUES])


@pytest.fixture(scope="module")
def secured() -> Manifests:
    return chart.render([TLS_VALUES])


@pytest.fixture(params=["minimal", "everything", "secured"])
def rendered(request: pytest.FixtureRequest) -> Manifests:
    return request.getfixturevalue(request.param)


def render(set_values: dict[str, Any] | None = None, *files: Path) -> Manifests:
    """The chart with minimal-values.yaml, then ``files``, then ``set_values``."""
    return chart.render([MINIMAL, *files], set_values=set_values)


def refused(set_values: dict[str, Any], *files: Path) -> str:
    """The error of rendering ``files`` with ``set_values``, which must fail."""
    with pytest.raises(chart.CheckError) as failure:
        chart.render(files, set_values=set_values)
    return str(failure.value)


def only(manifests: Manifests, kind: str) -> dict[str, Any]:
    found = chart.find(manifests, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def pod_spec(manifests: Manifests) -> dict[str, Any]:
    spec: dict[str, Any] = only(manifests, "Deployment")["spec"]["template"]["spec"]
    return spec


def container(manifests: Manifests) -> dict[str, Any]:
    (gateway,) = pod_spec(manifests)["containers"]
    return gateway


def env(manifests: Manifests) -> dict[str, str | None]:
    """The container's environment; None for a variable taken from valueFrom."""
    return {var["name"]: var.get("value") for var in container(manifests)["env"]}


def gateway_variables() -> set[str]:
    return {variable for variable, _, _ in describe()}


def test_probes_are_native_grpc_on_the_numeric_grpc_port(rendered: Manifests) -> None:
    """On the gRPC port, or with TLS (which gRPC probes cannot speak) on the health port."""
    gateway = container(rendered)
    ports = {port["name"]: port["containerPort"] for port in gateway["ports"]}
    tls = "GATEWAY_TLS_CERT_FILE" in env(rendered)
    assert ("health" in ports) == tls
    for name in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = gateway[name]
        assert not {"httpGet", "tcpSocket", "exec"} & set(probe), name
        assert isinstance(probe["grpc"]["port"], int), name
        assert probe["grpc"]["port"] == ports["health" if tls else "grpc"], name
        assert "service" not in probe["grpc"], f"{name} must ask for the overall health"


def test_pod_and_container_are_hardened(minimal: Manifests) -> None:
    pod = pod_spec(minimal)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    context = container(minimal)["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] == 10001
    assert context["allowPrivilegeEscalation"] is False
    assert context["privileged"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    mounts = {m["name"]: m["mountPath"] for m in container(minimal)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["tmp"] == "/tmp" and "emptyDir" in volumes["tmp"]


def test_termination_grace_exceeds_drain_delay_plus_shutdown_grace(rendered: Manifests) -> None:
    variables = env(rendered)
    shutdown = float(variables["GATEWAY_DRAIN_DELAY"] or 0) + float(
        variables["GATEWAY_SHUTDOWN_GRACE"] or 0
    )
    assert pod_spec(rendered)["terminationGracePeriodSeconds"] > shutdown


def test_termination_grace_is_computed_from_the_drain_settings() -> None:
    manifests = render({"config.drainDelay": 2.5, "config.shutdownGrace": 100})
    assert pod_spec(manifests)["terminationGracePeriodSeconds"] == math.ceil(102.5) + 10


def test_a_termination_grace_too_short_for_the_drain_is_refused() -> None:
    with pytest.raises(chart.CheckError, match=r"must exceed config\.drainDelay"):
        render({"terminationGracePeriodSeconds": 35})


def test_embedded_s3_is_forced_off(rendered: Manifests) -> None:
    assert env(rendered)["GATEWAY_EMBEDDED_S3"] == "off"
    assert env(rendered)["GATEWAY_HEALTH"] == "true"


def test_extra_env_cannot_override_a_variable_the_chart_sets() -> None:
    # Security variables are refused even where the chart leaves them unset (minimal-values).
    names = ["GATEWAY_EMBEDDED_S3", "GATEWAY_SHUTDOWN_GRACE", *sorted(CHART_OWNED)]
    for name in names + sorted(CHART_OWNED_SECURITY):
        with pytest.raises(chart.CheckError, match=f"extraEnv sets {name}"):
            render({"extraEnv[0].name": name, "extraEnv[0].value": "1"})


def test_config_keys_are_not_free_form() -> None:
    with pytest.raises(chart.CheckError, match="additional properties 'shutdownGracePeriod'"):
        render({"config.shutdownGracePeriod": 10})


def test_addresses_follow_the_service_ports(everything: Manifests) -> None:
    variables = env(everything)
    assert variables["GATEWAY_LISTEN_ADDRESS"] == "0.0.0.0:8443"
    assert variables["GATEWAY_METRICS_ADDRESS"] == "0.0.0.0:9090"
    (service,) = [s for s in chart.find(everything, "Service") if "clusterIP" not in s["spec"]]
    ports = {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]}
    assert ports == {"grpc": (8443, "grpc"), "metrics": (9090, "metrics")}


def test_metrics_off_empties_the_address_and_drops_the_port() -> None:
    manifests = render({"metrics.enabled": False})
    assert env(manifests)["GATEWAY_METRICS_ADDRESS"] == ""
    assert [p["name"] for p in container(manifests)["ports"]] == ["grpc"]
    assert [p["name"] for p in only(manifests, "Service")["spec"]["ports"]] == ["grpc"]
    with pytest.raises(chart.CheckError, match=r"serviceMonitor\.enabled needs metrics\.enabled"):
        render({"metrics.enabled": False, "serviceMonitor.enabled": True})


def test_each_config_key_renders_its_variable(everything: Manifests) -> None:
    config = yaml.safe_load(ALL_VALUES.read_text())["config"]
    variables = env(everything)
    for key, value in config.items():
        name = "GATEWAY_" + re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", key).upper()
        expected = str(value).lower() if isinstance(value, bool) else str(value)
        assert variables.get(name) == expected, key
    assert variables["GATEWAY_MAX_PART_SIZE"] == "5368709120"  # not 5.36870912e+09


def test_unset_config_keys_render_nothing(minimal: Manifests) -> None:
    rendered = {name for name in env(minimal) if name.startswith("GATEWAY_")}
    defaults = {"GATEWAY_DRAIN_DELAY", "GATEWAY_SHUTDOWN_GRACE", "GATEWAY_MAX_BUFFER_BYTES"}
    # The generated write token key file (resumableWrites.enabled).
    defaults.add("GATEWAY_WRITE_TOKEN_KEYS_FILE")
    assert rendered == CHART_OWNED | defaults
    assert env(minimal)["GATEWAY_PLAINTEXT"] == "true"
    assert env(minimal)["GATEWAY_ALLOW_ALL"] == "true"


def test_every_gateway_setting_is_configurable(everything: Manifests, secured: Manifests) -> None:
    """By config (all-values.yaml), or by tls, auth and authorization (tls-values.yaml: mutual TLS
    and tokens)."""
    missing = gateway_variables() - NOT_EXPOSED - set(env(everything)) - set(env(secured))
    assert not missing, f"add these settings to the chart's config: {sorted(missing)}"


def test_security_settings_are_not_config_keys() -> None:
    config = yaml.safe_load((chart.CHART / "values.yaml").read_text())["config"]
    for key in config:
        name = "GATEWAY_" + re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", key).upper()
        assert name not in CHART_OWNED | CHART_OWNED_SECURITY, key


def test_the_chart_sets_only_gateway_settings(everything: Manifests, secured: Manifests) -> None:
    rendered = {name for name in {**env(everything), **env(secured)} if name.startswith("GATEWAY_")}
    unknown = rendered - gateway_variables()
    assert not unknown, f"the gateway has no such settings: {sorted(unknown)}"


@pytest.mark.parametrize(("values_file", "kind"), sorted(TOGGLES.items()))
def test_each_toggle_renders_its_object(minimal: Manifests, values_file: str, kind: str) -> None:
    assert not chart.find(minimal, kind)
    assert only(chart.render([CI / values_file]), kind)


def test_headless_service_for_client_side_load_balancing(minimal: Manifests) -> None:
    manifests = chart.render([CI / "headless-values.yaml"])
    services = {s["metadata"]["name"]: s for s in chart.find(manifests, "Service")}
    headless = services["gateway-s3-upload-gateway-headless"]
    main = services["gateway-s3-upload-gateway"]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"] == main["spec"]["selector"]
    assert [p["name"] for p in headless["spec"]["ports"]] == ["grpc"]  # never scraped twice
    assert len(chart.find(minimal, "Service")) == 1


def test_existing_secret_is_loaded_with_env_from(minimal: Manifests) -> None:
    manifests = chart.render([CI / "existingsecret-values.yaml"])
    assert container(manifests)["envFrom"] == [{"secretRef": {"name": "s3-upload-gateway-aws"}}]
    assert "envFrom" not in container(minimal)


def test_service_account_carries_the_irsa_role(everything: Manifests) -> None:
    account = only(everything, "ServiceAccount")
    assert account["metadata"]["annotations"] == {
        "eks.amazonaws.com/role-arn": "arn:aws:iam::111122223333:role/s3-upload-gateway"
    }
    assert pod_spec(everything)["serviceAccountName"] == account["metadata"]["name"]


def test_replicas_are_left_to_the_autoscaler(minimal: Manifests, everything: Manifests) -> None:
    assert only(minimal, "Deployment")["spec"]["replicas"] == 2
    assert "replicas" not in only(everything, "Deployment")["spec"]
    target = only(everything, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert target["name"] == only(everything, "Deployment")["metadata"]["name"]


def test_the_autoscaler_scales_on_cpu_memory_and_streams_per_pod() -> None:
    hpa = only(chart.render([CI / "hpa-values.yaml"]), "HorizontalPodAutoscaler")["spec"]
    cpu, memory, streams = hpa["metrics"]
    assert cpu["resource"]["target"]["averageUtilization"] == 60
    assert memory["resource"]["target"]["averageUtilization"] == 80
    assert streams == {
        "type": "Pods",
        "pods": {
            "metric": {"name": "s3gateway_inflight_streams"},
            "target": {"type": "AverageValue", "averageValue": "20"},
        },
    }
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 12)


def test_network_policy_admits_only_the_listed_peers() -> None:
    policy = only(chart.render([CI / "networkpolicy-values.yaml"]), "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    grpc, metrics = policy["ingress"]
    assert grpc["ports"] == [{"port": "grpc", "protocol": "TCP"}]
    assert grpc["from"][0]["podSelector"] == {"matchLabels": {"app": "uploader"}}
    assert metrics["ports"] == [{"port": "metrics", "protocol": "TCP"}]


def test_reaper_runs_reap_uploads_per_bucket_through_the_service() -> None:
    manifests = chart.render([CI / "reaper-values.yaml"])
    job = only(manifests, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]
    first, second = job["spec"]["containers"]
    assert first["command"] == ["s3-upload-gateway"]
    assert first["args"] == [
        "reap-uploads",
        "--endpoint-url",
        "gateway-s3-upload-gateway:50051",
        "--write-token-keys-file",
        "/etc/s3-upload-gateway/write-keys/write-keys.yaml",
        "--bucket",
        "uploads",
        "--older-than",
        "1d12h",
        "--prefix",
        "incoming/",
    ]
    assert second["args"][6] == "uploads--euw1-az1--x-s3"
    # It holds the gateway's write token keys, to know expired resumable writes.
    (volume,) = job["spec"]["volumes"]
    assert volume["secret"]["secretName"] == "gateway-s3-upload-gateway-write-keys"
    assert first["volumeMounts"] == [
        {"name": "write-keys", "mountPath": "/etc/s3-upload-gateway/write-keys", "readOnly": True}
    ]
    assert first["securityContext"]["readOnlyRootFilesystem"] is True
    # The reaper's pods are no backends of the Service, nor counted by the Deployment.
    selector = only(manifests, "Service")["spec"]["selector"]
    assert not selector.items() <= job["metadata"]["labels"].items()


def test_without_resumable_writes_the_reaper_holds_no_keys() -> None:
    manifests = render({"resumableWrites.enabled": False}, CI / "reaper-values.yaml")
    job = only(manifests, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]
    assert "--write-token-keys-file" not in job["spec"]["containers"][0]["args"]
    assert "volumes" not in job["spec"]


def test_reaper_needs_buckets() -> None:
    with pytest.raises(chart.CheckError, match=r"reaper\.enabled needs reaper\.buckets"):
        render({"reaper.enabled": True})


def test_network_policy_admits_the_reaper(everything: Manifests) -> None:
    grpc_rule = only(everything, "NetworkPolicy")["spec"]["ingress"][0]
    reaper_labels = only(everything, "CronJob")["spec"]["jobTemplate"]["spec"]["template"][
        "metadata"
    ]["labels"]
    selectors = [
        peer["podSelector"]["matchLabels"] for peer in grpc_rule["from"] if "podSelector" in peer
    ]
    assert any(labels.items() <= reaper_labels.items() for labels in selectors)


def test_topology_spread_constraints_select_the_gateway(everything: Manifests) -> None:
    (constraint,) = pod_spec(everything)["topologySpreadConstraints"]
    selector = only(everything, "Deployment")["spec"]["selector"]
    assert constraint["labelSelector"] == selector


def test_prometheus_rule_with_the_gateway_defaults_is_the_alerts_file() -> None:
    assert chart.alerts_sync_problems() == []


def admitted_streams(config: dict[str, Any]) -> int:
    """The UploadPart streams one gateway process admits, by gateway/server/admission.py's rule,
    with the gateway's defaults for the settings ``config`` leaves null or out."""
    settings = Settings()
    window = config.get("streamWindow") or settings.stream_window
    message = config.get("maxMessageSize") or settings.max_message_size
    budget = config.get("maxBufferBytes") or settings.max_buffer_bytes
    return min(config.get("maxStreams") or settings.max_streams, budget // (window + message))


def inflight_alert(manifests: Manifests) -> dict[str, Any]:
    (rule,) = [
        rule
        for group in only(manifests, "PrometheusRule")["spec"]["groups"]
        for rule in group["rules"]
        if rule.get("alert") == "S3UploadGatewayInflightStreamsHigh"
    ]
    return rule


@pytest.mark.parametrize(
    ("values_file", "set_values", "admitted"),
    [
        # values.yaml: a 256 MiB buffer budget for the 512Mi memory limit.
        ("prometheusrule-values.yaml", {}, 50),
        # 512 MiB / (2 MiB + 4 MiB + 64 KiB).
        ("all-values.yaml", {}, 84),
        # The gateway's defaults: 1 GiB / (1 MiB + 4 MiB + 64 KiB); deploy/prometheus/alerts.yaml.
        ("minimal-values.yaml", chart.GATEWAY_DEFAULTS, 202),
        # Bounded by maxStreams.
        ("prometheusrule-values.yaml", {"config.maxStreams": 30}, 30),
        ("prometheusrule-values.yaml", {"prometheusRule.inflightStreamsRatio": 0.5}, 50),
    ],
)
def test_the_inflight_streams_threshold_follows_the_buffer_budget(
    values_file: str, set_values: dict[str, Any], admitted: int
) -> None:
    """It fires at prometheusRule.inflightStreamsRatio of what a process admits, which the
    settings the chart configures decide: never above what can be reached."""
    manifests = chart.render([CI / values_file], set_values=set_values)
    values = yaml.safe_load((chart.CHART / "values.yaml").read_text())
    config = {
        **values["config"],
        **yaml.safe_load((CI / values_file).read_text()).get("config", {}),
    }
    for key, value in set_values.items():
        if key.startswith("config."):
            config[key.removeprefix("config.")] = value
    assert admitted_streams(config) == admitted
    ratio = set_values.get("prometheusRule.inflightStreamsRatio", 0.8)
    rule = inflight_alert(manifests)
    assert rule["expr"].split()[-2:] == [">", str(math.floor(admitted * ratio))]
    assert f"it admits {admitted} and refuses more" in rule["annotations"]["description"]


def test_gateway_defaults_in_the_chart_are_the_gateway_s() -> None:
    """_helpers.tpl's gatewayDefaults, which the thresholds use for settings left null."""
    template = (chart.CHART / "templates" / "_helpers.tpl").read_text()
    block = template.split('define "s3-upload-gateway.gatewayDefaults" -}}', 1)[1]
    defaults = yaml.safe_load(block.split("{{- end }}", 1)[0])
    settings = Settings()
    assert defaults == {
        "maxBufferBytes": settings.max_buffer_bytes,
        "streamWindow": settings.stream_window,
        "maxMessageSize": settings.max_message_size,
        "maxStreams": settings.max_streams,
    }


def test_standard_labels(rendered: Manifests) -> None:
    for manifest in rendered:
        labels = manifest["metadata"]["labels"]
        for label in ("name", "instance", "version", "managed-by"):
            assert f"app.kubernetes.io/{label}" in labels, manifest["kind"]


# --------------------------------------------------------------------------- security


def test_the_defaults_fail_closed() -> None:
    """Neither TLS nor plaintext, neither a policy nor allowAll: the gateway would refuse to
    start, so the chart refuses to render, naming both fixes."""
    message = refused({})
    for expected in chart.DEFAULTS_REFUSED:
        assert expected in message
    assert chart.defaults_problems() == []


def test_tls_or_plaintext_is_required() -> None:
    message = refused({"authorization.allowAll": True})
    assert "set tls.enabled=true with tls.secretName, or plaintext=true behind a mesh" in message
    assert chart.DEFAULTS_REFUSED[1] not in message


def test_a_policy_or_allow_all_is_required() -> None:
    message = refused({"plaintext": True})
    assert (
        "set authorization.policy (or existingConfigMap), or authorization.allowAll=true" in message
    )
    assert chart.DEFAULTS_REFUSED[0] not in message


@pytest.mark.parametrize(
    "policy",
    [
        {"authorization.policy": {"version": 1, "principals": {}}},
        {"authorization.existingConfigMap": "gateway-policy"},
    ],
)
def test_allow_all_contradicts_a_policy(policy: dict[str, Any]) -> None:
    message = refused({"plaintext": True, "authorization.allowAll": True, **policy})
    assert "authorization.allowAll=true contradicts authorization.policy" in message


def test_inline_and_existing_policies_exclude_each_other() -> None:
    message = refused(
        {
            "plaintext": True,
            "authorization.policy": {"version": 1, "principals": {}},
            "authorization.existingConfigMap": "gateway-policy",
        }
    )
    assert "set authorization.policy or authorization.existingConfigMap, not both" in message


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"tls.enabled": True}, "tls.enabled needs tls.secretName"),
        ({"tls.enabled": True, "tls.secretName": "tls", "plaintext": True}, "contradict"),
        (
            {"plaintext": True, "tls.clientCA.secretName": "client-ca"},
            "tls.clientCA.secretName needs tls.enabled",
        ),
        (
            {"tls.enabled": True, "tls.secretName": "tls", "probes.healthPort": 50051},
            "probes.healthPort (50051) must differ",
        ),
    ],
)
def test_inconsistent_tls_is_refused(values: dict[str, Any], expected: str) -> None:
    assert expected in refused({"authorization.allowAll": True, **values})


def reaper_pod(manifests: Manifests) -> dict[str, Any]:
    spec: dict[str, Any] = only(manifests, "CronJob")["spec"]["jobTemplate"]["spec"]["template"][
        "spec"
    ]
    return spec


def test_the_reaper_presents_its_certificate_and_token(secured: Manifests) -> None:
    """With mutual TLS and tokens, each reap-uploads presents reaper.clientCert and sends the token
    of reaper.token, both files of Secret volumes (no subPath: never a stale rotated file)."""
    job = reaper_pod(secured)
    first, second = job["containers"]
    assert first["args"][:15] == [
        "reap-uploads",
        "--endpoint-url",
        "https://gateway-s3-upload-gateway:50051",
        "--ca-bundle",
        "/etc/s3-upload-gateway/ca/ca.crt",
        "--client-cert",
        "/etc/s3-upload-gateway/client-cert/tls.crt",
        "--client-key",
        "/etc/s3-upload-gateway/client-cert/tls.key",
        "--token-file",
        "/etc/s3-upload-gateway/token/reaper-token",
        "--write-token-keys-file",
        "/etc/s3-upload-gateway/write-keys/write-keys.yaml",
        "--bucket",
        "ingest-eu",
    ]
    assert second["args"][:14] == first["args"][:14] and second["args"][14] == "archive"
    expected_mounts = [
        {"name": "gateway-ca", "mountPath": "/etc/s3-upload-gateway/ca", "readOnly": True},
        {
            "name": "client-cert",
            "mountPath": "/etc/s3-upload-gateway/client-cert",
            "readOnly": True,
        },
        {"name": "token", "mountPath": "/etc/s3-upload-gateway/token", "readOnly": True},
        {"name": "write-keys", "mountPath": "/etc/s3-upload-gateway/write-keys", "readOnly": True},
    ]
    assert first["volumeMounts"] == second["volumeMounts"] == expected_mounts
    volumes = {v["name"]: v for v in job["volumes"]}
    assert set(volumes) == {"gateway-ca", "client-cert", "token", "write-keys"}
    assert volumes["client-cert"]["secret"] == {
        "secretName": "s3-upload-gateway-reaper-cert",
        "items": [{"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}],
        "defaultMode": 0o440,
    }
    assert volumes["token"]["secret"] == {
        "secretName": "s3-upload-gateway-reaper-token",
        "items": [{"key": "reaper-token", "path": "reaper-token"}],
        "defaultMode": 0o440,
    }
    # The token is read from its file: never on the command line, nor in the environment.
    assert "env" not in first and "envFrom" not in first


def test_the_policy_of_tls_values_grants_the_reaper_its_work() -> None:
    """The reaper's principal is its token's: tls-values.yaml's policy must let it reap."""
    values = yaml.safe_load(TLS_VALUES.read_text())
    (grant,) = values["authorization"]["policy"]["principals"]["reaper"]
    assert set(grant["operations"]) == {"ListMultipartUploads", "AbortMultipartUpload"}


def test_the_reaper_sends_its_token_over_plaintext_behind_a_mesh() -> None:
    manifests = render(
        {
            "auth.tokens.existingSecret": "tokens",
            "reaper.enabled": True,
            "reaper.buckets": ["uploads"],
            "reaper.token.existingSecret": "reaper-token",
        }
    )
    job = reaper_pod(manifests)
    (reaper,) = job["containers"]
    assert reaper["args"][1:5] == [
        "--endpoint-url",
        "gateway-s3-upload-gateway:50051",
        "--token-file",
        "/etc/s3-upload-gateway/token/token",
    ]
    assert reaper["volumeMounts"] == [
        {"name": "token", "mountPath": "/etc/s3-upload-gateway/token", "readOnly": True},
        {"name": "write-keys", "mountPath": "/etc/s3-upload-gateway/write-keys", "readOnly": True},
    ]
    volume, _ = job["volumes"]
    assert volume["secret"]["items"] == [{"key": "token", "path": "token"}]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            {"reaper.clientCert.secretName": ""},
            "reaper.enabled with tls.clientCA needs reaper.clientCert.secretName",
        ),
        (
            {"reaper.token.existingSecret": ""},
            "reaper.enabled with auth.tokens needs reaper.token.existingSecret",
        ),
        (
            {"tls.clientCA.secretName": ""},
            "reaper.clientCert.secretName needs tls.clientCA",
        ),
        (
            {"auth.tokens.existingSecret": ""},
            "reaper.token.existingSecret needs auth.tokens",
        ),
    ],
)
def test_the_reaper_needs_the_credentials_the_gateway_requires(
    values: dict[str, Any], expected: str
) -> None:
    assert expected in refused(values, TLS_VALUES)


def test_a_reaper_without_any_credential_lists_every_missing_one() -> None:
    message = refused(
        {"reaper.clientCert.secretName": "", "reaper.token.existingSecret": ""}, TLS_VALUES
    )
    assert "needs reaper.clientCert.secretName" in message
    assert "needs reaper.token.existingSecret" in message


def test_a_disabled_reaper_needs_no_credentials() -> None:
    manifests = chart.render(
        [TLS_VALUES],
        set_values={
            "reaper.enabled": False,
            "reaper.clientCert.secretName": "",
            "reaper.token.existingSecret": "",
        },
    )
    assert not chart.find(manifests, "CronJob")


def test_security_files_are_volumes_never_sub_path(secured: Manifests) -> None:
    """The gateway re-reads rotated certificates, tokens and the policy from disk; a subPath
    mount never sees a Secret's or ConfigMap's update."""
    variables = env(secured)
    mounts = {m["name"]: m for m in container(secured)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(secured)["volumes"]}
    for variable, volume in SECURITY_FILES.items():
        path = Path(variables[variable] or "")
        mount = mounts[volume]
        assert "subPath" not in mount and "subPathExpr" not in mount, volume
        assert mount["readOnly"] is True
        assert str(path.parent) == mount["mountPath"], variable
        source = volumes[volume].get("secret") or volumes[volume]["configMap"]
        assert {"key": path.name, "path": path.name} in source["items"], variable
    assert volumes["tls"]["secret"]["secretName"] == "s3-upload-gateway-tls"
    assert [i["key"] for i in volumes["tls"]["secret"]["items"]] == ["tls.crt", "tls.key"]
    assert volumes["client-ca"]["secret"]["secretName"] == "s3-upload-gateway-client-ca"
    assert variables["GATEWAY_TLS_CLIENT_CA_FILE"] == "/etc/s3-upload-gateway/client-ca/ca.pem"
    assert variables["GATEWAY_PLAINTEXT"] == "false"
    assert variables["GATEWAY_ALLOW_ALL"] == "false"


def test_no_manifest_mounts_a_sub_path(rendered: Manifests) -> None:
    text = yaml.safe_dump_all(rendered)
    assert "subPath" not in text


def test_tls_moves_the_probes_to_a_plaintext_health_port(secured: Manifests) -> None:
    gateway = container(secured)
    ports = {port["name"]: port["containerPort"] for port in gateway["ports"]}
    assert ports["health"] == 8081 != ports["grpc"]
    assert env(secured)["GATEWAY_HEALTH_ADDRESS"] == "0.0.0.0:8081"
    for name in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert gateway[name]["grpc"] == {"port": 8081}, name
    # Not in the Service: the kubelet probes the pod directly.
    assert "health" not in [p["name"] for p in only(secured, "Service")["spec"]["ports"]]


def test_without_tls_there_is_no_health_port(minimal: Manifests) -> None:
    assert "GATEWAY_HEALTH_ADDRESS" not in env(minimal)
    assert "health" not in [p["name"] for p in container(minimal)["ports"]]


def test_network_policy_admits_the_health_port_from_anywhere(secured: Manifests) -> None:
    rules = only(secured, "NetworkPolicy")["spec"]["ingress"]
    health = [rule for rule in rules if rule["ports"] == [{"port": "health", "protocol": "TCP"}]]
    assert health == [{"ports": [{"port": "health", "protocol": "TCP"}]}]
    plaintext = only(render({}, CI / "networkpolicy-values.yaml"), "NetworkPolicy")
    assert all(rule["ports"][0]["port"] != "health" for rule in plaintext["spec"]["ingress"])


def test_tokens_come_from_the_existing_secret(secured: Manifests, minimal: Manifests) -> None:
    (volume,) = [v for v in pod_spec(secured)["volumes"] if v["name"] == "tokens"]
    assert volume["secret"] == {
        "secretName": "s3-upload-gateway-tokens",
        "items": [{"key": "tokens.yaml", "path": "tokens.yaml"}],
        "defaultMode": 0o440,
    }
    assert env(secured)["GATEWAY_AUTH_TOKENS_FILE"] == "/etc/s3-upload-gateway/tokens/tokens.yaml"
    assert "GATEWAY_AUTH_TOKENS_FILE" not in env(minimal)


@pytest.mark.parametrize(
    ("fixture", "values_file"), [("secured", TLS_VALUES), ("everything", ALL_VALUES)]
)
def test_the_inline_policy_is_a_config_map_of_the_values(
    request: pytest.FixtureRequest, fixture: str, values_file: Path
) -> None:
    manifests: Manifests = request.getfixturevalue(fixture)
    authorization = yaml.safe_load(values_file.read_text())["authorization"]
    key = authorization.get("key", "policy.yaml")
    config_map = only(manifests, "ConfigMap")
    text = config_map["data"][key]
    assert yaml.safe_load(text) == authorization["policy"]
    Policy.from_text(text, key)  # the gateway accepts it
    (volume,) = [v for v in pod_spec(manifests)["volumes"] if v["name"] == "policy"]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    assert env(manifests)["GATEWAY_POLICY_FILE"] == f"/etc/s3-upload-gateway/policy/{key}"


def test_a_policy_change_does_not_roll_the_pods() -> None:
    """The gateway re-reads the policy itself: no checksum annotation on the pod template."""
    grant = "authorization.policy.principals.someone-else[0]"
    other = {f"{grant}.operations": ["ListParts"], f"{grant}.buckets": ["shared"]}
    first, second = chart.render([TLS_VALUES]), chart.render([TLS_VALUES], set_values=other)
    assert only(first, "ConfigMap")["data"] != only(second, "ConfigMap")["data"]
    assert (
        only(first, "Deployment")["spec"]["template"]
        == only(second, "Deployment")["spec"]["template"]
    )


def test_an_existing_config_map_holds_the_policy() -> None:
    manifests = chart.render(
        set_values={
            "plaintext": True,
            "authorization.existingConfigMap": "gateway-policy",
            "authorization.key": "access.yaml",
        }
    )
    assert not chart.find(manifests, "ConfigMap")
    (volume,) = [v for v in pod_spec(manifests)["volumes"] if v["name"] == "policy"]
    assert volume["configMap"]["name"] == "gateway-policy"
    assert volume["configMap"]["items"] == [{"key": "access.yaml", "path": "access.yaml"}]
    assert env(manifests)["GATEWAY_POLICY_FILE"] == "/etc/s3-upload-gateway/policy/access.yaml"
    assert env(manifests)["GATEWAY_ALLOW_ALL"] == "false"


def test_an_invalid_inline_policy_is_refused_by_the_schema() -> None:
    base = {"plaintext": True, "authorization.policy.version": 1}
    grant = "authorization.policy.principals.writer[0]"
    with pytest.raises(chart.CheckError, match="values don't meet the specifications"):
        render({**base, f"{grant}.operations": ["PutObject"], f"{grant}.buckets": ["b"]})
    with pytest.raises(chart.CheckError, match="values don't meet the specifications"):
        render({**base, f"{grant}.operations": ["UploadPart"], f"{grant}.bukets": ["b"]})


def test_the_policy_schema_knows_the_gateway_operations() -> None:
    schema = yaml.safe_load((chart.CHART / "values.schema.json").read_text())
    policy = schema["properties"]["authorization"]["properties"]["policy"]
    grant = policy["properties"]["principals"]["additionalProperties"]["items"]
    assert set(grant["properties"]["operations"]["items"]["enum"]) == {"*", *OPERATIONS}


def test_the_reaper_trusts_the_gateway_ca_over_tls(everything: Manifests) -> None:
    job = only(everything, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (reaper,) = job["containers"]
    assert reaper["args"][1:5] == [
        "--endpoint-url",
        "https://uploads-gateway:8443",
        "--ca-bundle",
        "/etc/s3-upload-gateway/ca/ca.pem",
    ]
    assert reaper["volumeMounts"] == [
        {"name": "gateway-ca", "mountPath": "/etc/s3-upload-gateway/ca", "readOnly": True},
        {"name": "write-keys", "mountPath": "/etc/s3-upload-gateway/write-keys", "readOnly": True},
    ]
    # Only the CA: never the gateway's private key.
    volume, _ = job["volumes"]
    assert volume["secret"] == {
        "secretName": "uploads-gateway-tls",
        "items": [{"key": "ca.pem", "path": "ca.pem"}],
    }


def test_values_check_finds_undocumented_and_untyped_values() -> None:
    schema = {"properties": {"a": {"properties": {"b": {}}}, "c": {}, "d": {}}}
    values = "# a holds b\na:\n  # something else\n  b: 1\n\nc: 2\n# e is new\ne: 3\n"
    assert chart.values_problems(values, schema) == [
        "values.yaml:4: a.b has no comment starting with its name",
        "values.yaml:6: c has no comment starting with its name",
        "values.yaml:8: e is not in values.schema.json",
        "values.schema.json: d has no value in values.yaml",
    ]


def test_alerts_and_dashboard_know_the_gateway_metrics() -> None:
    """check_chart's metric list, which the alerts, dashboard and docs are checked against."""
    families = list(Metrics().registry.collect())
    exported = {f.name + "_total" if f.type == "counter" else f.name for f in families}
    # Added by `serve --workers N` when it merges workers.
    supervisor = {"s3gateway_worker_up", "s3gateway_worker_restarts_total"}
    assert exported | supervisor == chart.METRICS | chart.RUNTIME_METRICS
    assert {f.name for f in families if f.type == "histogram"} == chart.HISTOGRAMS


def test_the_pods_stat_counts_pods_not_workers(tmp_path: Path) -> None:
    """With `serve --workers N` each worker's s3gateway_build_info has a worker label; the Pods
    stat counts each scrape target (pod) once, whatever its number of workers."""
    promtool = chart.promtool_binary()
    if promtool is None:
        pytest.skip("promtool needs apt-get")
    dashboard = json.loads(chart.DASHBOARD.read_text())
    (expr,) = [query for where, query in chart.panel_queries(dashboard) if "(Pods)" in where]
    expr = expr.replace("$namespace", ".*").replace("$job", ".*")
    info = 's3gateway_build_info{namespace="uploads", job="gw", version="0.1.0"'
    series = [
        f'{info}, instance="10.0.0.1:9464", worker="0"}}',
        f'{info}, instance="10.0.0.1:9464", worker="1"}}',
        f'{info}, instance="10.0.0.2:9464", worker="0"}}',
        f'{info}, instance="10.0.0.2:9464", worker="1"}}',
        f'{info}, instance="10.0.0.3:9464"}}',  # GATEWAY_WORKERS=1: no worker label
    ]
    test = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": "1x5"} for s in series],
                "promql_expr_test": [
                    {
                        "expr": expr,
                        "eval_time": "2m",
                        "exp_samples": [{"labels": '{version="0.1.0"}', "value": 3}],
                    }
                ],
            }
        ],
    }
    path = tmp_path / "pods_test.yaml"
    path.write_text(yaml.safe_dump(test))
    chart._run([promtool, "test", "rules", path])


# --------------------------------------------------------------------------- helm test


def health_test(manifests: Manifests) -> dict[str, Any]:
    """The `helm test` Pod."""
    pod = only(manifests, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    return pod


def run_health_test(pod: dict[str, Any], target: str, files: dict[str, Path]) -> str:
    """The test Pod's command, run here against ``target`` with the files it mounts taken from
    ``files`` (mount path to local path); its output."""
    (test,) = pod["spec"]["containers"]
    program, *args = test["command"][2:]
    assert test["command"][:2] == ["python", "-c"]
    args = [target, *(str(files[arg]) for arg in args[1:])]
    result = subprocess.run(
        [sys.executable, "-c", program, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_helm_test_asks_health_through_the_service(minimal: Manifests) -> None:
    pod = health_test(minimal)
    assert pod["metadata"]["annotations"]["helm.sh/hook-delete-policy"] == (
        "before-hook-creation,hook-succeeded"
    )
    (test,) = pod["spec"]["containers"]
    assert test["image"] == container(minimal)["image"]
    assert test["command"][3:] == ["gateway-s3-upload-gateway:50051"]
    assert "grpc_health.v1" in test["command"][2]
    assert pod["spec"]["restartPolicy"] == "Never"
    # Not a backend of the Service, nor one of the Deployment's pods.
    selector = only(minimal, "Service")["spec"]["selector"]
    assert not selector.items() <= pod["metadata"]["labels"].items()


def test_helm_test_is_hardened_like_the_gateway(rendered: Manifests) -> None:
    pod = health_test(rendered)["spec"]
    gateway = pod_spec(rendered)
    assert pod["securityContext"] == gateway["securityContext"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    (test,) = pod["containers"]
    assert test["securityContext"] == container(rendered)["securityContext"]
    assert test["securityContext"]["readOnlyRootFilesystem"] is True
    assert test["resources"]["limits"]["memory"]


def test_helm_test_uses_tls_and_a_client_certificate(secured: Manifests) -> None:
    pod = health_test(secured)
    (test,) = pod["spec"]["containers"]
    assert test["command"][3:] == [
        "gateway-s3-upload-gateway:50051",
        "/etc/s3-upload-gateway/ca/ca.crt",
        "/etc/s3-upload-gateway/client-cert/tls.key",
        "/etc/s3-upload-gateway/client-cert/tls.crt",
    ]
    volumes = {v["name"]: v["secret"] for v in pod["spec"]["volumes"] if "secret" in v}
    # Only the CA of the gateway's Secret, never its private key.
    assert volumes["gateway-ca"] == {
        "secretName": "s3-upload-gateway-tls",
        "items": [{"key": "ca.crt", "path": "ca.crt"}],
    }
    assert volumes["client-cert"]["secretName"] == "s3-upload-gateway-reaper-cert"
    assert "subPath" not in yaml.safe_dump(pod)


def test_the_network_policy_admits_the_helm_test() -> None:
    """Beside the peers of networkPolicy.grpcFrom (here another namespace's pods only)."""
    manifests = chart.render([CI / "networkpolicy-values.yaml"])
    grpc_rule = only(manifests, "NetworkPolicy")["spec"]["ingress"][0]
    labels = health_test(manifests)["metadata"]["labels"]
    selectors = [
        peer["podSelector"].get("matchLabels", {})
        for peer in grpc_rule["from"]
        if "podSelector" in peer and "namespaceSelector" not in peer
    ]
    assert any(selector.items() <= labels.items() for selector in selectors)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            {"helmTest.clientCert.secretName": ""},
            "helmTest.enabled with tls.clientCA needs helmTest.clientCert.secretName",
        ),
        (
            {"tls.clientCA.secretName": "", "reaper.clientCert.secretName": ""},
            "helmTest.clientCert.secretName needs tls.clientCA",
        ),
    ],
)
def test_the_helm_test_needs_the_credentials_the_gateway_requires(
    values: dict[str, Any], expected: str
) -> None:
    assert expected in refused(values, TLS_VALUES)


def test_the_helm_test_can_be_switched_off() -> None:
    assert not chart.find(render({"helmTest.enabled": False}), "Pod")


def test_the_helm_test_command_checks_a_plaintext_gateway(
    minimal: Manifests, moto_gateway: GatewayThread
) -> None:
    output = run_health_test(health_test(minimal), moto_gateway.address, {})
    assert output.split() == [moto_gateway.address, "SERVING"]


def test_the_helm_test_command_checks_a_gateway_over_mutual_tls(
    secured: Manifests, moto_endpoint: str, tmp_path: Path
) -> None:
    ca, clients = CA(), CA("Client CA")
    cert, key = ca.server_leaf().write(tmp_path, "server")
    client_cert, client_key = clients.issue("helm-test").write(tmp_path, "client")
    settings = Settings(
        listen_address="127.0.0.1:0",
        drain_delay=0,
        s3_endpoint_url=moto_endpoint,
        tls_cert_file=str(cert),
        tls_key_file=str(key),
        tls_client_ca_file=str(clients.write(tmp_path, "clients")),
        allow_all=True,
    )
    files = {
        "/etc/s3-upload-gateway/ca/ca.crt": ca.write(tmp_path),
        "/etc/s3-upload-gateway/client-cert/tls.key": client_key,
        "/etc/s3-upload-gateway/client-cert/tls.crt": client_cert,
    }
    with GatewayThread(settings, ("testing", "testing")) as running:
        target = f"localhost:{running.gateway.port}"
        assert run_health_test(health_test(secured), target, files).split() == [target, "SERVING"]


# --------------------------------------------------------------------------- image, routes, README


def test_an_image_digest_pins_every_container() -> None:
    digest = "sha256:" + hashlib.sha256(b"an image").hexdigest()
    manifests = render(
        {"image.digest": digest, "reaper.enabled": True, "reaper.buckets": ["uploads"]},
    )
    expected = f"s3-upload-gateway@{digest}"
    assert container(manifests)["image"] == expected
    (reaper,) = reaper_pod(manifests)["containers"]
    assert reaper["image"] == expected
    assert health_test(manifests)["spec"]["containers"][0]["image"] == expected


def test_without_a_digest_the_tag_or_app_version_names_the_image(
    minimal: Manifests, everything: Manifests
) -> None:
    app_version = yaml.safe_load((chart.CHART / "Chart.yaml").read_text())["appVersion"]
    assert container(minimal)["image"] == f"s3-upload-gateway:{app_version}"
    assert container(everything)["image"] == "registry.example.com/s3-upload-gateway:0.1.0"


@pytest.mark.parametrize("digest", ["sha256:abc", "latest", "sha256:" + "A" * 64])
def test_a_malformed_digest_is_refused_by_the_schema(digest: str) -> None:
    with pytest.raises(chart.CheckError, match="values don't meet the specifications"):
        render({"image.digest": digest})


def test_the_grpc_route_sends_calls_to_the_service() -> None:
    manifests = chart.render([CI / "grpcroute-values.yaml"])
    route = only(manifests, "GRPCRoute")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    spec = route["spec"]
    assert spec["parentRefs"] == [
        {"name": "edge", "namespace": "gateway-system", "sectionName": "https"}
    ]
    assert spec["hostnames"] == ["uploads.example.com"]
    service = only(manifests, "Service")
    (grpc_port,) = [p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc"]
    assert spec["rules"] == [
        {"backendRefs": [{"name": service["metadata"]["name"], "port": grpc_port}]}
    ]
    assert route["metadata"]["annotations"] == {"example.com/owner": "storage"}
    assert route["metadata"]["labels"]["example.com/exposed"] == "true"


def test_a_grpc_route_needs_a_parent() -> None:
    with pytest.raises(chart.CheckError, match=r"grpcRoute\.enabled needs grpcRoute\.parentRefs"):
        render({"grpcRoute.enabled": True})


def values_paths() -> list[str]:
    """The dotted path of every value in values.yaml, sections included."""
    schema = json.loads((chart.CHART / "values.schema.json").read_text())
    table = chart.values_table((chart.CHART / "values.yaml").read_text(), schema)
    return [line.split("`")[1] for line in table.splitlines()[2:]]


def test_the_readme_documents_every_value() -> None:
    readme = chart.README.read_text()
    values = yaml.safe_load((chart.CHART / "values.yaml").read_text())
    paths = values_paths()
    assert set(values) <= set(paths)
    assert {"config.maxBufferBytes", "image.digest", "grpcRoute.parentRefs"} <= set(paths)
    for path in paths:
        assert f"| `{path}` |" in readme, path
    schema = json.loads((chart.CHART / "values.schema.json").read_text())
    table = chart.values_table((chart.CHART / "values.yaml").read_text(), schema)
    assert chart.readme_problems(readme, table) == []


def test_a_stale_values_table_is_found() -> None:
    readme = chart.README.read_text()
    schema = json.loads((chart.CHART / "values.schema.json").read_text())
    values = (chart.CHART / "values.yaml").read_text()
    values += "\n# zzzNew is a value the README does not know yet.\nzzzNew: 1\n"
    schema["properties"]["zzzNew"] = {"type": "integer"}
    (problem,) = chart.readme_problems(readme, chart.values_table(values, schema))
    assert "--write-readme" in problem


def shell_blocks(markdown: str) -> list[list[str]]:
    """The commands of every ```sh block: continuation lines joined, split as the shell would."""
    blocks = re.findall(r"```sh\n(.*?)```", markdown, re.S)
    return [shlex.split(block.replace("\\\n", " ")) for block in blocks]


def test_the_readme_install_example_renders(tmp_path: Path) -> None:
    readme = chart.README.read_text()
    (values,) = re.findall(r"```yaml\n(.*?)```", readme, re.S)
    (tmp_path / "uploads-values.yaml").write_text(values)
    install, test = shell_blocks(readme)
    assert install[:4] == ["helm", "install", "uploads", "helm/s3-upload-gateway"]
    assert test[:3] == ["helm", "test", "uploads"]
    # `helm template` takes install's arguments: the chart's path from the repository's root, the
    # values file from where the example writes it.
    args = [str(chart.helm_binary()), "template", *install[2:]]
    args += ["--kube-version", chart.KUBE_VERSION]
    args = [a if a != "uploads-values.yaml" else str(tmp_path / a) for a in args]
    args = [a if a != "helm/s3-upload-gateway" else str(chart.CHART) for a in args]
    manifests = [m for m in yaml.safe_load_all(chart._run(args)) if m]
    assert chart.manifest_problems(manifests, "README") == []
    assert only(manifests, "Deployment")
    assert env(manifests)["GATEWAY_TLS_CLIENT_CA_FILE"]
    assert health_test(manifests)


def test_the_packaged_chart_carries_its_readme_not_its_ci_values(tmp_path: Path) -> None:
    """.helmignore: `helm package` leaves ci/ out; `helm show readme` shows README.md."""
    helm = chart.helm_binary()
    chart._run([helm, "package", chart.CHART, "--destination", tmp_path])
    (archive,) = tmp_path.glob("*.tgz")
    with tarfile.open(archive) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames()}
    assert {"README.md", "values.schema.json", "files/alerts.yaml"} <= names
    assert "templates/tests/test-health.yaml" in names
    assert not [name for name in names if name.startswith("ci/")]
    assert chart._run([helm, "show", "readme", archive]).strip() == chart.README.read_text().strip()


# --------------------------------------------------------------------------- the image


def run_healthcheck(variables: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """deploy/Dockerfile's HEALTHCHECK command, run here with the image's ``variables``."""
    command = chart.healthcheck_command(chart.DOCKERFILE.read_text())
    assert command is not None and command[:2] == ["python", "-c"]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return subprocess.run(
        [sys.executable, "-c", command[2]],
        env={**environment, **variables},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_healthcheck_asks_the_listen_port(moto_gateway: GatewayThread) -> None:
    result = run_healthcheck({"GATEWAY_LISTEN_ADDRESS": f"0.0.0.0:{moto_gateway.gateway.port}"})
    assert result.returncode == 0, result.stderr


def test_the_healthcheck_asks_the_health_port_with_tls_on(
    moto_endpoint: str, tmp_path: Path
) -> None:
    ca = CA()
    cert, key = ca.server_leaf().write(tmp_path, "server")
    settings = Settings(
        listen_address="127.0.0.1:0",
        health_address="127.0.0.1:0",
        drain_delay=0,
        s3_endpoint_url=moto_endpoint,
        tls_cert_file=str(cert),
        tls_key_file=str(key),
        allow_all=True,
    )
    with GatewayThread(settings, ("testing", "testing")) as running:
        listen = f"0.0.0.0:{running.gateway.port}"
        health = f"0.0.0.0:{running.gateway.health_port}"
        result = run_healthcheck(
            {"GATEWAY_LISTEN_ADDRESS": listen, "GATEWAY_HEALTH_ADDRESS": health}
        )
        assert result.returncode == 0, result.stderr
        # Without a health port, plaintext to the TLS port fails: unhealthy, as documented.
        assert run_healthcheck({"GATEWAY_LISTEN_ADDRESS": listen}).returncode != 0


def test_the_dockerfile_check_finds_missing_labels_and_a_fixed_base() -> None:
    dockerfile = chart.DOCKERFILE.read_text()
    assert chart.dockerfile_problems(dockerfile) == []
    broken = dockerfile.replace('licenses="Apache-2.0"', 'licenses="MIT"')
    broken = broken.replace("FROM ${PYTHON_IMAGE}\n", "FROM python:3.11-slim-bookworm\n")
    problems = chart.dockerfile_problems(broken)
    assert any("org.opencontainers.image.licenses" in p for p in problems)
    assert any("PYTHON_IMAGE" in p for p in problems)


# --- resumable writes: one key file for every replica -------------------------------------------


def test_a_write_token_key_file_is_generated_and_mounted(minimal: Manifests) -> None:
    """By default the chart generates the key Secret once (kept across upgrades and uninstalls)
    and every pod mounts the same file: any replica continues any write."""
    import base64

    from gateway.security.write_tokens import parse_keys

    (secret,) = [
        s for s in chart.find(minimal, "Secret") if s["metadata"]["name"].endswith("-write-keys")
    ]
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    keys = parse_keys(base64.b64decode(secret["data"]["write-keys.yaml"]))
    assert len(keys.keys[keys.signing]) == 32
    variables = env(minimal)
    assert (
        variables["GATEWAY_WRITE_TOKEN_KEYS_FILE"]
        == "/etc/s3-upload-gateway/write-keys/write-keys.yaml"
    )
    volumes = {v["name"]: v for v in pod_spec(minimal)["volumes"]}
    assert volumes["write-keys"]["secret"]["secretName"] == secret["metadata"]["name"]
    mounts = {m["name"]: m for m in container(minimal)["volumeMounts"]}
    assert mounts["write-keys"]["readOnly"] is True


def test_an_existing_key_secret_is_used_as_is(secured: Manifests) -> None:
    assert not [
        s for s in chart.find(secured, "Secret") if s["metadata"]["name"].endswith("-write-keys")
    ]
    volumes = {v["name"]: v for v in pod_spec(secured)["volumes"]}
    assert volumes["write-keys"]["secret"]["secretName"] == "s3-upload-gateway-write-keys"


def test_resumable_writes_can_be_turned_off() -> None:
    manifests = render({"resumableWrites.enabled": False})
    assert "GATEWAY_WRITE_TOKEN_KEYS_FILE" not in env(manifests)
    assert not chart.find(manifests, "Secret")
