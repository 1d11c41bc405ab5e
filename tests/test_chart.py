"""The Helm chart as `helm template` renders it: probes, hardening, shutdown timing, settings.

scripts/check_chart.py lints the chart and validates every manifest against Kubernetes' schemas;
these tests assert what the chart promises, rendering through that script's helm.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import describe
from gateway.metrics import Metrics
from tests.helpers import load_script

ROOT = Path(__file__).resolve().parent.parent


chart = load_script("check_chart")
CI = chart.CHART / "ci"
ALL_VALUES = CI / "all-values.yaml"
#: Variables the chart sets itself, whatever the values say.
CHART_OWNED = {
    "GATEWAY_LISTEN_ADDRESS",
    "GATEWAY_METRICS_ADDRESS",
    "GATEWAY_EMBEDDED_S3",
    "GATEWAY_HEALTH",
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
}

Manifests = list[dict[str, Any]]


@pytest.fixture(scope="module")
def defaults() -> Manifests:
    return chart.render()


@pytest.fixture(scope="module")
def everything() -> Manifests:
    return chart.render([ALL_VALUES])


@pytest.fixture(params=["defaults", "everything"])
def rendered(request: pytest.FixtureRequest) -> Manifests:
    return request.getfixturevalue(request.param)


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
    gateway = container(rendered)
    ports = {port["name"]: port["containerPort"] for port in gateway["ports"]}
    for name in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = gateway[name]
        assert not {"httpGet", "tcpSocket", "exec"} & set(probe), name
        assert isinstance(probe["grpc"]["port"], int), name
        assert probe["grpc"]["port"] == ports["grpc"], name
        assert "service" not in probe["grpc"], f"{name} must ask for the overall health"


def test_pod_and_container_are_hardened(defaults: Manifests) -> None:
    pod = pod_spec(defaults)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    context = container(defaults)["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] == 10001
    assert context["allowPrivilegeEscalation"] is False
    assert context["privileged"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    mounts = {m["name"]: m["mountPath"] for m in container(defaults)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["tmp"] == "/tmp" and "emptyDir" in volumes["tmp"]


def test_termination_grace_exceeds_drain_delay_plus_shutdown_grace(rendered: Manifests) -> None:
    variables = env(rendered)
    shutdown = float(variables["GATEWAY_DRAIN_DELAY"] or 0) + float(
        variables["GATEWAY_SHUTDOWN_GRACE"] or 0
    )
    assert pod_spec(rendered)["terminationGracePeriodSeconds"] > shutdown


def test_termination_grace_is_computed_from_the_drain_settings() -> None:
    manifests = chart.render(set_values={"config.drainDelay": 2.5, "config.shutdownGrace": 100})
    assert pod_spec(manifests)["terminationGracePeriodSeconds"] == math.ceil(102.5) + 10


def test_a_termination_grace_too_short_for_the_drain_is_refused() -> None:
    with pytest.raises(chart.CheckError, match=r"must exceed config\.drainDelay"):
        chart.render(set_values={"terminationGracePeriodSeconds": 35})


def test_embedded_s3_is_forced_off(rendered: Manifests) -> None:
    assert env(rendered)["GATEWAY_EMBEDDED_S3"] == "off"
    assert env(rendered)["GATEWAY_HEALTH"] == "true"


def test_extra_env_cannot_override_a_variable_the_chart_sets() -> None:
    for name in ("GATEWAY_EMBEDDED_S3", "GATEWAY_SHUTDOWN_GRACE"):
        with pytest.raises(chart.CheckError, match=f"extraEnv sets {name}"):
            chart.render(set_values={"extraEnv[0].name": name, "extraEnv[0].value": "1"})


def test_config_keys_are_not_free_form() -> None:
    with pytest.raises(chart.CheckError, match="additional properties 'shutdownGracePeriod'"):
        chart.render(set_values={"config.shutdownGracePeriod": 10})


def test_addresses_follow_the_service_ports(everything: Manifests) -> None:
    variables = env(everything)
    assert variables["GATEWAY_LISTEN_ADDRESS"] == "0.0.0.0:8443"
    assert variables["GATEWAY_METRICS_ADDRESS"] == "0.0.0.0:9090"
    (service,) = [s for s in chart.find(everything, "Service") if "clusterIP" not in s["spec"]]
    ports = {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]}
    assert ports == {"grpc": (8443, "grpc"), "metrics": (9090, "metrics")}


def test_metrics_off_empties_the_address_and_drops_the_port() -> None:
    manifests = chart.render(set_values={"metrics.enabled": False})
    assert env(manifests)["GATEWAY_METRICS_ADDRESS"] == ""
    assert [p["name"] for p in container(manifests)["ports"]] == ["grpc"]
    assert [p["name"] for p in only(manifests, "Service")["spec"]["ports"]] == ["grpc"]
    with pytest.raises(chart.CheckError, match=r"serviceMonitor\.enabled needs metrics\.enabled"):
        chart.render(set_values={"metrics.enabled": False, "serviceMonitor.enabled": True})


def test_each_config_key_renders_its_variable(everything: Manifests) -> None:
    config = yaml.safe_load(ALL_VALUES.read_text())["config"]
    variables = env(everything)
    for key, value in config.items():
        name = "GATEWAY_" + re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", key).upper()
        expected = str(value).lower() if isinstance(value, bool) else str(value)
        assert variables.get(name) == expected, key
    assert variables["GATEWAY_MAX_PART_SIZE"] == "5368709120"  # not 5.36870912e+09


def test_unset_config_keys_render_nothing(defaults: Manifests) -> None:
    rendered = {name for name in env(defaults) if name.startswith("GATEWAY_")}
    assert rendered == CHART_OWNED | {"GATEWAY_DRAIN_DELAY", "GATEWAY_SHUTDOWN_GRACE"}


def test_every_gateway_setting_is_configurable(everything: Manifests) -> None:
    missing = gateway_variables() - NOT_EXPOSED - set(env(everything))
    assert not missing, f"add these settings to the chart's config: {sorted(missing)}"


def test_the_chart_sets_only_gateway_settings(everything: Manifests) -> None:
    rendered = {name for name in env(everything) if name.startswith("GATEWAY_")}
    unknown = rendered - gateway_variables()
    assert not unknown, f"the gateway has no such settings: {sorted(unknown)}"


@pytest.mark.parametrize(("values_file", "kind"), sorted(TOGGLES.items()))
def test_each_toggle_renders_its_object(defaults: Manifests, values_file: str, kind: str) -> None:
    assert not chart.find(defaults, kind)
    assert only(chart.render([CI / values_file]), kind)


def test_headless_service_for_client_side_load_balancing(defaults: Manifests) -> None:
    manifests = chart.render([CI / "headless-values.yaml"])
    services = {s["metadata"]["name"]: s for s in chart.find(manifests, "Service")}
    headless = services["gateway-s3-upload-gateway-headless"]
    main = services["gateway-s3-upload-gateway"]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"] == main["spec"]["selector"]
    assert [p["name"] for p in headless["spec"]["ports"]] == ["grpc"]  # never scraped twice
    assert len(chart.find(defaults, "Service")) == 1


def test_existing_secret_is_loaded_with_env_from(defaults: Manifests) -> None:
    manifests = chart.render([CI / "existingsecret-values.yaml"])
    assert container(manifests)["envFrom"] == [{"secretRef": {"name": "s3-upload-gateway-aws"}}]
    assert "envFrom" not in container(defaults)


def test_service_account_carries_the_irsa_role(everything: Manifests) -> None:
    account = only(everything, "ServiceAccount")
    assert account["metadata"]["annotations"] == {
        "eks.amazonaws.com/role-arn": "arn:aws:iam::111122223333:role/s3-upload-gateway"
    }
    assert pod_spec(everything)["serviceAccountName"] == account["metadata"]["name"]


def test_replicas_are_left_to_the_autoscaler(defaults: Manifests, everything: Manifests) -> None:
    assert only(defaults, "Deployment")["spec"]["replicas"] == 2
    assert "replicas" not in only(everything, "Deployment")["spec"]
    target = only(everything, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert target["name"] == only(everything, "Deployment")["metadata"]["name"]


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
        "--bucket",
        "uploads",
        "--older-than",
        "1d12h",
        "--prefix",
        "incoming/",
    ]
    assert second["args"][4] == "uploads--euw1-az1--x-s3"
    assert first["securityContext"]["readOnlyRootFilesystem"] is True
    # The reaper's pods are no backends of the Service, nor counted by the Deployment.
    selector = only(manifests, "Service")["spec"]["selector"]
    assert not selector.items() <= job["metadata"]["labels"].items()


def test_reaper_needs_buckets() -> None:
    with pytest.raises(chart.CheckError, match=r"reaper\.enabled needs reaper\.buckets"):
        chart.render(set_values={"reaper.enabled": True})


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


def test_prometheus_rule_carries_the_alerts_file(everything: Manifests) -> None:
    assert chart.alerts_sync_problems(everything) == []


def test_standard_labels(rendered: Manifests) -> None:
    for manifest in rendered:
        labels = manifest["metadata"]["labels"]
        for label in ("name", "instance", "version", "managed-by"):
            assert f"app.kubernetes.io/{label}" in labels, manifest["kind"]


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
    assert exported == chart.METRICS
    assert {f.name for f in families if f.type == "histogram"} == chart.HISTOGRAMS
