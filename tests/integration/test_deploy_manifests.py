"""deploy/: Kubernetes manifests valid against the Kubernetes schemas, and true to the relay.

Schemas come inside the kubernetes-validate package (no network). Beyond the schema,
the manifests must agree with the code: every PHI_RELAY_* name is a variable the relay
reads, the literal values load as configuration, the pod runs as the Dockerfile's
numeric USER, probes hit the configured HTTP port, the policies ConfigMap holds exactly
policies/, and the several-replica layout shares keys and a PostgreSQL store.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from relay import config as config_mod
from relay.config_doc import variables
from relay.resources import POLICY_FILES
from tests.integration.test_entrypoint import IMAGE

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.30.0"  # oldest minor still commonly deployed; schemas are bundled
KEY_VARIABLES = {
    "PHI_RELAY_AUDIT_KEY",
    "PHI_RELAY_UNSUBSCRIBE_KEY",
    "PHI_RELAY_DEDUP_KEY",
    "PHI_RELAY_ROSTER_KEY",
}


def documents() -> list[tuple[Path, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path, doc))
    return docs


def by_kind(kind: str, folder: str) -> list[dict[str, Any]]:
    return [d for p, d in documents() if d["kind"] == kind and folder in p.parts]


def relay_container(workload: dict[str, Any]) -> dict[str, Any]:
    spec = workload["spec"]["template"]["spec"]
    (container,) = [c for c in spec["containers"] if c["name"] == "phi-relay"]
    return container


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


RELAYS = [
    pytest.param(by_kind("Deployment", "sidecar")[0], id="sidecar"),
    pytest.param(by_kind("Deployment", "standalone")[0], id="standalone"),
]


@pytest.mark.parametrize(
    ("path", "doc"), [pytest.param(p, d, id=f"{p.name}:{d['kind']}") for p, d in documents()]
)
def test_manifest_is_valid_against_the_kubernetes_schema(path: Path, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_validator_is_not_vacuous() -> None:
    broken = copy.deepcopy(by_kind("Deployment", "standalone")[0])
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    broken = copy.deepcopy(by_kind("Deployment", "standalone")[0])
    broken["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("workload", RELAYS)
def test_relay_pod_matches_the_image_and_the_configuration(
    workload: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    pod = workload["spec"]["template"]["spec"]
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True
    assert (security["runAsUser"], security["runAsGroup"]) == IMAGE.user
    container = relay_container(workload)
    env = env_of(container)
    unknown = set(env) - set(variables())
    assert not unknown, f"not variables the relay reads: {unknown}"
    assert set(env) >= KEY_VARIABLES, "keys come from a Secret, the same for every replica"
    for name in KEY_VARIABLES | {"PHI_RELAY_UPSTREAM_PASSWORD"}:
        assert "secretKeyRef" in env[name]["valueFrom"], name
    # The literal values load as configuration (secrets stand in as plausible values).
    literal = {k: e["value"] for k, e in env.items() if "value" in e}
    monkeypatch.setenv("PHI_RELAY_UPSTREAM_PASSWORD", "stand-in")
    environ = {**IMAGE.env, **literal}
    if "PHI_RELAY_CONSENT_STORE" in env:
        environ["PHI_RELAY_CONSENT_STORE"] = "postgresql://relay@db/relay"
    cfg = config_mod.load(None, environ=environ)
    assert cfg.http.listen is not None
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == cfg.http.listen.port
    scheme = "HTTPS" if cfg.http.tls else "HTTP"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == "http"
        assert container[probe]["httpGet"].get("scheme", "HTTP") == scheme, probe
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert str(cfg.policy_file.parent) == mounts["policies"]
    assert str(cfg.state_dir) == mounts["state"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["policies"]["configMap"]["name"] == "phi-relay-policies"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # SIGTERM drains for server.shutdown_timeout; the pod must wait longer before SIGKILL.
    assert pod["terminationGracePeriodSeconds"] > cfg.server.shutdown_timeout


def test_sidecar_smtp_stays_on_loopback() -> None:
    (workload,) = by_kind("Deployment", "sidecar")
    env = env_of(relay_container(workload))
    assert env["PHI_RELAY_SERVER_LISTEN"]["value"].startswith("127.0.0.1:")
    assert env["PHI_RELAY_SERVER_TRUSTED_NETWORKS"]["value"] == "127.0.0.1/32"
    names = [c["name"] for c in workload["spec"]["template"]["spec"]["containers"]]
    assert names == ["app", "phi-relay"]


def test_standalone_replicas_share_state_and_stay_available() -> None:
    (deployment,) = by_kind("Deployment", "standalone")
    (service,) = [
        s for s in by_kind("Service", "standalone") if s["metadata"]["name"] == "phi-relay"
    ]
    (pdb,) = by_kind("PodDisruptionBudget", "standalone")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["replicas"] >= 2
    assert service["spec"]["selector"].items() <= labels.items()
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert 1 <= pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    env = env_of(relay_container(deployment))
    assert "secretKeyRef" in env["PHI_RELAY_CONSENT_STORE"]["valueFrom"]  # PostgreSQL
    assert "PHI_RELAY_SERVER_USERS_FILE" in env  # AUTH for clients from other pods
    (postgres,) = by_kind("StatefulSet", "standalone")
    pg_service = next(s for s in by_kind("Service", "standalone") if s is not service)
    assert pg_service["metadata"]["name"] == postgres["spec"]["serviceName"]


def test_policies_configmap_is_the_shipped_policies() -> None:
    (configmap,) = [d for p, d in documents() if d["kind"] == "ConfigMap"]
    assert set(configmap["data"]) == set(POLICY_FILES)
    for name in POLICY_FILES:
        assert configmap["data"][name] == (ROOT / "policies" / name).read_text(), (
            "deploy/kubernetes/policies.yaml is stale: run .venv/bin/python scripts/generate.py"
        )


def test_compose_has_relay_postgres_and_a_test_upstream(monkeypatch: pytest.MonkeyPatch) -> None:
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    services = compose["services"]
    assert {"relay", "postgres", "upstream"} <= set(services)
    relay = services["relay"]
    assert relay["build"] == {"context": "..", "dockerfile": "Dockerfile"}
    env = relay["environment"]
    assert set(env) <= set(variables())
    assert env["PHI_RELAY_CONSENT_STORE"].startswith("postgresql://")
    assert env["PHI_RELAY_UPSTREAM_HOST"] == "upstream"
    assert relay["depends_on"]["postgres"]["condition"] == "service_healthy"
    cfg = config_mod.load(None, environ={**IMAGE.env, **env})
    assert cfg.upstream.ca_file is not None
    mounts = {v.split(":")[1] for v in relay["volumes"]}
    assert str(cfg.state_dir) in mounts and str(cfg.upstream.ca_file.parent) in mounts


def test_generated_files_are_current() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
