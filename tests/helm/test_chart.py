"""The Helm chart, rendered with Helm's own library (helm-python-sdk embeds the Helm 4 SDK).

Every profile is linted and rendered offline; core kinds are validated against the Kubernetes
schemas (kubernetes-validate, strict) of a fixed Kubernetes version, custom resources against
the CRD schemas kept in tests/helm/crds/, and what matters is asserted: GPU requests, Secret
references, the alert rules being monitoring's file, the Serve app built from the settings.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from lang1ops.settings import Settings
from tests.support import in_ci

try:
    import helm_python as helm
    import kubernetes_validate
except ImportError as error:  # the dev extra has them; in CI a missing one is a failure
    if in_ci():
        raise
    pytest.skip(f"{error.name} not installed (pip install helm-python-sdk kubernetes-validate)",
                allow_module_level=True)

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "lang1-ops"
RULES_FILE = REPO / "monitoring" / "rules" / "lang1-ops.rules.yml"
CRDS = Path(__file__).parent / "crds"
KUBE_VERSION = "1.33.0"  # the oldest Kubernetes the chart is validated against
PROFILES = ["values.yaml", "values-cpu-small.yaml", "values-gpu-vllm.yaml"]
CORE_KINDS = {"ConfigMap", "PersistentVolumeClaim", "Ingress", "NetworkPolicy", "Service", "CronJob"}
RELEASE, NAMESPACE = "lang1-ops", "clinical-ai"


def profile_values(profile: str) -> dict:
    # values.yaml is the chart's defaults: rendering "with" it means no override
    return {} if profile == "values.yaml" else yaml.safe_load((CHART / profile).read_text())


def render(values: dict) -> list[dict]:
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(values)
        manifests = chart.render(values=values, name=RELEASE, namespace=NAMESPACE)
    return [doc for path, text in manifests.items() if path.endswith(".yaml")
            for doc in yaml.safe_load_all(text) if doc]


@pytest.fixture(scope="module", params=PROFILES)
def rendered(request) -> tuple[str, dict, list[dict]]:
    values = profile_values(request.param)
    return request.param, values, render(values)


def one(docs: list[dict], kind: str, suffix: str = "") -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)]
    assert len(found) == 1, f"expected one {kind}*{suffix}, found {len(found)}"
    return found[0]


def crd_validator(kind: str) -> jsonschema.Draft202012Validator:
    schema = yaml.safe_load(next(CRDS.glob(f"*_{kind.lower()}.subset.yaml")).read_text())
    if kind == "RayJob":
        schema["$defs"] = yaml.safe_load((CRDS / "ray.io_v1_rayservice.subset.yaml").read_text())["$defs"]
    return jsonschema.Draft202012Validator(schema)


def pod_templates(resource: dict) -> list[dict]:
    spec = resource["spec"].get("rayClusterConfig") or resource["spec"]["rayClusterSpec"]
    return [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec.get("workerGroupSpecs", [])]


def validate_pod_template(template: dict) -> None:
    kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
                                  "template": template}, KUBE_VERSION, strict=True)


def retrain_rayjob(docs: list[dict]) -> dict:
    return yaml.safe_load(one(docs, "ConfigMap", "-retrain-rayjob")["data"]["rayjob.yaml"])


# --- lint, schema, validation --------------------------------------------------------------

@pytest.mark.parametrize("profile", PROFILES)
def test_helm_lint_is_clean(profile):
    report = helm.lint(CHART, profile_values(profile), strict=True, kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems, problems


def test_every_manifest_validates_against_its_schema(rendered):
    _, _, docs = rendered
    kinds = {d["kind"] for d in docs}
    assert kinds == CORE_KINDS | {"RayService", "ServiceMonitor", "PrometheusRule"}
    for doc in docs:
        if doc["kind"] in CORE_KINDS:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        else:
            crd_validator(doc["kind"]).validate(doc)
    for template in pod_templates(one(docs, "RayService")):
        validate_pod_template(template)
    rayjob = retrain_rayjob(docs)
    crd_validator("RayJob").validate(rayjob)
    for template in pod_templates(rayjob):
        validate_pod_template(template)


def test_crd_subsets_catch_mistakes():
    """The hand-written CRD subsets refuse misplaced fields, so the validation above can fail."""
    docs = render(profile_values("values-cpu-small.yaml"))
    service = one(docs, "RayService")
    service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["minReplica"] = 1
    with pytest.raises(jsonschema.ValidationError, match="minReplica"):
        crd_validator("RayService").validate(service)
    rule = one(docs, "PrometheusRule")
    rule["spec"]["groups"][0]["rules"][0]["for"] = "ten minutes"
    with pytest.raises(jsonschema.ValidationError):
        crd_validator("PrometheusRule").validate(rule)


@pytest.mark.parametrize("override, message", [
    ({"workerGroups": [{"name": "gpu", "replicas": 1, "minReplicas": 1, "maxReplicas": 2, "gpus": "one",
                        "resources": {}}]}, "gpus"),
    ({"settings": {"serving": {"max_batch_size": "eight"}}}, "max_batch_size"),
    ({"settings": {"serving": {"max_batch_sise": 8}}}, "max_batch_sise"),
    ({"registry": {"mode": "s3"}}, "mode"),
    ({"workerGroup": []}, "workerGroup"),
    ({"secrets": {"store": {"name": ""}}}, "name"),
    ({"secrets": {"rayAuth": {"name": ""}}}, "name"),
])
def test_bad_values_are_refused_by_the_schema_with_a_clear_message(override, message):
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError) as refused:
        chart.render(values=override, name=RELEASE, namespace=NAMESPACE)
    text = str(refused.value)
    assert "schema" in text and message in text, text


@pytest.mark.parametrize("override, message", [
    ({"settings": {"serving": {"device": "cuda", "backend": "vllm"}}}, "no workerGroups entry has gpus > 0"),
    ({"settings": {"serving": {"backend": "vllm"}}}, "vLLM runs on GPU workers only"),
    ({"workerGroups": [{"name": "cpu", "replicas": 1, "minReplicas": 3, "maxReplicas": 2, "resources": {}}]},
     "minReplicas (3) is above maxReplicas (2)"),
    ({"registry": {"mode": "volume", "volume": {}}}, "registry.volume is empty"),
    ({"settings": {"serving": {"model_ref": "champion"}}}, "must be a pinned registry version"),
    ({"settings": {"serving": {"shadow": True}}}, "shadow_ref is not a pinned version"),
])
def test_inconsistent_values_fail_the_render_with_a_clear_message(override, message):
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmError, match=message.replace("(", r"\(")
                                                        .replace(")", r"\)")):
        chart.render(values=override, name=RELEASE, namespace=NAMESPACE)


# --- what matters --------------------------------------------------------------------------

def test_serve_config_is_the_settings_app(rendered):
    """serveConfigV2 runs app.service:app_builder with the values' settings as args: the same
    Settings model and import path `lang1ops serve --print-config` produces."""
    from app.service import serve_config

    _, values, docs = rendered
    config = yaml.safe_load(one(docs, "RayService")["spec"]["serveConfigV2"])
    (app,) = config["applications"]
    settings = Settings.model_validate(app["args"])  # what app_builder does with them
    reference = serve_config(settings)["applications"][0]
    assert (app["import_path"], app["name"], app["route_prefix"]) == \
        (reference["import_path"], reference["name"], reference["route_prefix"]) == \
        ("app.service:app_builder", "lang1ops", "/")
    chart_defaults = helm.Chart.load(CHART).merge_values(values)["settings"]
    assert app["args"] == json.loads(json.dumps(chart_defaults))
    assert config["http_options"] == {"host": "0.0.0.0", "port": settings.serving.port}
    # no secret default leaks into args: the store URL must stay the Secret's env var
    assert "store_url" not in app["args"].get("serving", {}) and "auth" not in app["args"].get("serving", {})


def test_app_builder_accepts_the_rendered_args(rendered):
    """The args build the real Serve application; the scorer's resources follow the settings."""
    from app.service import app_builder

    profile, _, docs = rendered
    args = yaml.safe_load(one(docs, "RayService")["spec"]["serveConfigV2"])["applications"][0]["args"]
    app = app_builder(args)
    deployments = {d.name: d for d in _deployments(app)}
    scorer = deployments["scorer"]
    gpus = scorer.ray_actor_options.get("num_gpus", 0)
    assert gpus == (1 if profile == "values-gpu-vllm.yaml" else 0)
    assert scorer._deployment_config.autoscaling_config.max_replicas == args["serving"]["autoscaling"]["max_replicas"]


def _deployments(app):
    """Deployments of a bound Serve application: its ingress, then those bound as its arguments."""
    found, stack = [], [app]
    while stack:
        deployment = stack.pop()._bound_deployment
        found.append(deployment)
        stack.extend(a for a in (*deployment.init_args, *deployment.init_kwargs.values())
                     if hasattr(a, "_bound_deployment"))
    return found


def test_gpu_profile_workers_use_the_vllm_image_and_request_gpus():
    docs = render(profile_values("values-gpu-vllm.yaml"))
    values = profile_values("values-gpu-vllm.yaml")
    cluster = one(docs, "RayService")["spec"]["rayClusterConfig"]
    (group,) = cluster["workerGroupSpecs"]
    (container,) = group["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert container["image"] == f"{values['image']['repository']}:{values['image']['tag']}"
    assert "vllm" in (REPO / "helm/images/Dockerfile.gpu").read_text().split("FROM", 1)[1].splitlines()[0]
    # the head schedules no GPUs and runs the same image (one Ray and Python version per cluster)
    (head,) = cluster["headGroupSpec"]["template"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in json.dumps(head["resources"]) and head["image"] == container["image"]
    assert (group["minReplicas"], group["maxReplicas"]) == (1, 4)
    assert cluster["enableInTreeAutoscaling"] is True


def test_cpu_profile_requests_no_gpu():
    docs = render(profile_values("values-cpu-small.yaml"))
    assert "nvidia.com/gpu" not in yaml.safe_dump(one(docs, "RayService"))


def test_secrets_come_from_secret_references_only(rendered):
    _, values, docs = rendered
    store_secret = helm.Chart.load(CHART).merge_values(values)["secrets"]["store"]["name"]
    containers = [c for t in pod_templates(one(docs, "RayService")) for c in t["spec"]["containers"]]
    for job in ("-drift", "-retention"):
        containers += one(docs, "CronJob", job)["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    containers += [c for t in pod_templates(retrain_rayjob(docs)) for c in t["spec"]["containers"]]
    ray_secret = helm.Chart.load(CHART).merge_values(values)["secrets"]["rayAuth"]
    for container in containers:
        env = {e["name"]: e for e in container["env"]}
        assert env["LANG1OPS_SERVING__STORE_URL"]["valueFrom"]["secretKeyRef"] == {"name": store_secret, "key": "url"}
        assert "value" not in env["LANG1OPS_SERVING__STORE_URL"]
        # every Ray pod and job authenticates to the cluster with the token from its Secret
        assert env["RAY_AUTH_MODE"]["value"] == "token" and env["RAY_SERVE_ENABLE_DIRECT_INGRESS"]["value"] == "0"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": ray_secret["name"], "key": ray_secret["key"]}
    text = yaml.safe_dump_all(docs)
    assert "postgresql" not in text and "key_sha256" not in text


def test_fhir_client_key_and_jwks_are_mounted_from_secrets():
    values = profile_values("values-cpu-small.yaml")
    values["secrets"].update(fhirClient={"name": "ehr-client-key"}, jwks={"name": "ehr-jwks"})
    docs = render(values)
    for template in pod_templates(one(docs, "RayService")):
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        assert volumes["fhir-client-key"]["secret"]["secretName"] == "ehr-client-key"
        assert volumes["ehr-jwks"]["secret"]["secretName"] == "ehr-jwks"
        mounts = {m["name"]: m for m in template["spec"]["containers"][0]["volumeMounts"]}
        assert mounts["fhir-client-key"]["readOnly"] and mounts["ehr-jwks"]["readOnly"]


def test_prometheus_rule_is_monitorings_rules_file(rendered):
    _, _, docs = rendered
    link = CHART / "files" / "lang1-ops.rules.yml"
    assert link.is_symlink() and link.resolve() == RULES_FILE.resolve(), "the chart must link, not copy"
    assert one(docs, "PrometheusRule")["spec"] == yaml.safe_load(RULES_FILE.read_text())


def test_service_monitor_scrapes_the_job_the_rules_expect(rendered):
    _, _, docs = rendered
    monitor = one(docs, "ServiceMonitor")
    app_metrics = one(docs, "Service", "-app-metrics")
    assert app_metrics["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "lang1-ops"
    assert 'job="lang1-ops"' in RULES_FILE.read_text()
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= app_metrics["metadata"]["labels"].items()
    assert {e["port"]: e["path"] for e in monitor["spec"]["endpoints"]}["serve"] == "/metrics"
    assert app_metrics["spec"]["selector"]["ray.io/node-type"] == "head"


def test_jobs_run_the_monitoring_commands_with_the_same_settings(rendered, monkeypatch):
    _, values, docs = rendered
    drift = one(docs, "CronJob", "-drift")["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert drift["command"] == ["lang1ops", "monitor", "drift"]
    retention = one(docs, "CronJob", "-retention")["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert retention["command"] == ["lang1ops", "retention"] and retention["env"] == drift["env"]
    assert retrain_rayjob(docs)["spec"]["entrypoint"].startswith("lang1ops monitor retrain")
    # the env the jobs get (ConfigMap + env) yields the Settings the Serve app gets as args
    settings_env = one(docs, "ConfigMap", "-settings")["data"]
    for name, value in settings_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LANG1OPS_SERVING__STORE_URL", "postgresql+psycopg://db/lang1ops")
    args = yaml.safe_load(one(docs, "RayService")["spec"]["serveConfigV2"])["applications"][0]["args"]
    from_env = Settings(_env_file=None)
    assert from_env.serving.store_url == "postgresql+psycopg://db/lang1ops"
    expected = Settings.model_validate(args).model_dump()
    expected["serving"]["store_url"] = from_env.serving.store_url
    assert from_env.model_dump() == expected


def test_ingress_has_tls_and_targets_the_serve_service(rendered):
    _, _, docs = rendered
    ingress = one(docs, "Ingress")
    rayservice = one(docs, "RayService")["metadata"]["name"]
    (tls,) = ingress["spec"]["tls"]
    assert tls["secretName"] and tls["hosts"] == [ingress["spec"]["rules"][0]["host"]]
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": f"{rayservice}-serve-svc", "port": {"number": 8000}}


def test_values_schema_is_up_to_date():
    spec = importlib.util.spec_from_file_location("generate_values_schema", REPO / "helm/generate_values_schema.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    committed = (CHART / "values.schema.json").read_text()
    assert committed == generator.render(generator.build_schema()), \
        "stale: run .venv/bin/python helm/generate_values_schema.py"


def test_every_value_is_documented():
    schema = json.loads((CHART / "values.schema.json").read_text())
    undocumented = []

    def walk(node: dict, path: str) -> None:
        for key, sub in node.get("properties", {}).items():
            if "description" not in sub:
                undocumented.append(f"{path}.{key}")
            if path or key != "settings":  # settings: described by the Settings model itself
                walk(sub, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[]")

    walk(schema, "")
    # every key written in values.yaml is in the schema (which refuses unknown keys)
    helm.Chart.load(CHART).validate_schema(yaml.safe_load((CHART / "values.yaml").read_text()))
    assert not undocumented, undocumented
