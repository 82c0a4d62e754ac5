"""The objects `aimass submit --to k8s` builds, checked against the schemas a cluster would use:
the KubeRay v1.7 CRD openAPIV3Schema (jsonschema, strict) and the Kubernetes schemas (kubernetes-validate)."""

from __future__ import annotations

import copy
import shlex

import pytest
import yaml

from aimass.exceptions import InvalidRequestError
from aimass.k8s.builders import (
    ClusterShape,
    SecretEnv,
    build_configmap,
    build_rayjob,
    build_rayservice,
    configmap_name,
    rayjob_name,
)
from aimass.k8s.validation import kuberay_semantic_errors, pod_templates, validate_core_object, validate_kuberay_object
from aimass.orchestrator.executors.base import ENTRYPOINTS, build_entrypoint
from tests.k8s.conftest import IMAGE, NAMESPACE


def _as_pod(template: dict) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", **template.get("metadata", {})}, "spec": template["spec"]}


def _job(spec, run_id, **kw):
    kw.setdefault("image", IMAGE)
    kw.setdefault("service_account", "aimass-runner")
    kw.setdefault("owner", "alice@example.com")
    return build_rayjob(spec, run_id, NAMESPACE, configmap=configmap_name(run_id), **kw)


@pytest.mark.parametrize("variant", ["new-cluster", "existing-cluster", "gpu", "no-workers"])
def test_rayjob_is_valid_against_crd_and_kuberay_rules(spec, run_id, variant):
    kw = {"new-cluster": {}, "existing-cluster": {"cluster_selector": "shared-cluster"},
          "gpu": {"cluster": ClusterShape(workers=2, worker_gpu=1)}, "no-workers": {"cluster": ClusterShape(workers=0)}}[variant]
    job = _job(spec, run_id, **kw)
    assert validate_kuberay_object(job) == []
    assert kuberay_semantic_errors(job) == []
    for where, template in pod_templates(job):
        assert validate_core_object(_as_pod(template)) == [], where


def test_configmap_is_valid_and_holds_the_exact_spec(spec, run_id):
    cm = build_configmap(spec, run_id, NAMESPACE, owner="alice")
    assert validate_core_object(cm) == []
    assert cm["immutable"] is True
    assert cm["metadata"]["name"] == configmap_name(run_id)
    from aimass.spec import parse_pipeline

    assert parse_pipeline(cm["data"]["pipeline.yaml"]).dump() == spec.dump()


def test_the_validators_catch_mistakes(spec, run_id):
    """Guard the guards: a typo, a wrong type and a KubeRay rule break are all reported."""
    job = _job(spec, run_id)
    bad = copy.deepcopy(job)
    bad["spec"]["shutdownAfterJobFinishes"] = "yes"
    bad["spec"]["submitterPodTemplate"]["spec"]["containers"][0]["securityContex"] = {}
    errs = validate_kuberay_object(bad)
    assert any("shutdownAfterJobFinishes" in e for e in errs)
    assert any("securityContex" in e for e in errs)
    bad = copy.deepcopy(job)
    bad["metadata"]["name"] = "x" * 48
    bad["spec"]["rayClusterSpec"]["rayVersion"] = "2.40.0"
    errs = kuberay_semantic_errors(bad)
    assert any("47 characters" in e for e in errs) and any("2.52" in e for e in errs)
    pod = _as_pod(job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"])
    pod["spec"]["containers"][0]["resources"]["limits"]["cpu"] = {"no": 1}
    assert validate_core_object(pod)


def test_entrypoint_is_the_allowlisted_argv_quoted(spec, run_id):
    job = _job(spec, run_id)
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv == ["aimass", "run", "pipeline.yaml", "--run-id", run_id]
    assert argv == build_entrypoint("run", spec_path="pipeline.yaml", run_id=run_id)
    assert list(ENTRYPOINTS) == ["run", "validate"]
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert env["working_dir"] == "/etc/aimass/pipeline"
    for bad_id in ["x; rm -rf /", "$(id)", "A" * 10, "a" * 41, "-a", "a b"]:
        with pytest.raises(InvalidRequestError, match="run id"):
            build_entrypoint("run", spec_path="pipeline.yaml", run_id=bad_id)
    with pytest.raises(InvalidRequestError, match="unsafe spec path"):
        build_entrypoint("run", spec_path="../etc/passwd", run_id=run_id)
    with pytest.raises(InvalidRequestError, match="unknown entrypoint"):
        build_entrypoint("bash", spec_path="pipeline.yaml", run_id=run_id)


def test_pods_are_restricted_and_ray_is_private(spec, run_id):
    job = _job(spec, run_id)
    js = job["spec"]
    cs = js["rayClusterSpec"]
    assert cs["authOptions"] == {"mode": "token"}
    assert tuple(int(x) for x in cs["rayVersion"].split(".")[:2]) >= (2, 52)
    assert cs["headGroupSpec"]["serviceType"] == "ClusterIP" and cs["headGroupSpec"]["enableIngress"] is False
    assert js["shutdownAfterJobFinishes"] is True
    assert js["ttlSecondsAfterFinished"] > 0 and js["activeDeadlineSeconds"] > 0 and js["backoffLimit"] == 0
    assert js["submissionMode"] == "K8sJobMode" and js["submitterConfig"]["backoffLimit"] >= 1
    templates = pod_templates(job)
    assert len(templates) == 3  # submitter, head, workers
    for where, t in templates:
        ps = t["spec"]
        assert ps["securityContext"]["runAsNonRoot"] is True, where
        assert ps["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert ps["automountServiceAccountToken"] is False, where
        assert ps["serviceAccountName"] == "aimass-runner", where
        mounts = {}
        for c in ps["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"] == {"drop": ["ALL"]} and sc["runAsNonRoot"] is True, where
            assert "limits" in c["resources"], where
            mounts.update({m["mountPath"]: m for m in c["volumeMounts"]})
            for e in c.get("env", []):
                assert "value" in e or "valueFrom" in e
        assert "/tmp" in mounts, where
        vols = {v["name"]: v for v in ps["volumes"]}
        assert vols[mounts["/tmp"]["name"]].get("emptyDir") is not None, where
    submitter = js["submitterPodTemplate"]["spec"]
    assert submitter["restartPolicy"] == "Never"
    spec_mount = [m for m in submitter["containers"][0]["volumeMounts"] if m["mountPath"] == "/etc/aimass/pipeline"][0]
    assert spec_mount["readOnly"] is True
    assert {v["name"]: v for v in submitter["volumes"]}["pipeline-spec"]["configMap"]["name"] == configmap_name(run_id)
    # KubeRay fills in `ray job submit ...` only when the command is empty.
    assert "command" not in submitter["containers"][0]


def test_existing_cluster_has_no_retries_ttl_or_suspend(spec, run_id):
    job = _job(spec, run_id, cluster_selector="shared")
    js = job["spec"]
    assert js["clusterSelector"] == {"ray.io/cluster": "shared"}
    assert "rayClusterSpec" not in js and "ttlSecondsAfterFinished" not in js and "backoffLimit" not in js
    assert js["shutdownAfterJobFinishes"] is False
    with pytest.raises(InvalidRequestError, match="backoffLimit"):
        _job(spec, run_id, cluster_selector="shared", backoff_limit=2)


def test_no_secret_is_ever_inline(spec, run_id):
    for name in ["MLFLOW_TRACKING_PASSWORD", "AWS_SECRET_ACCESS_KEY", "API_TOKEN", "DB_PASSWD"]:
        with pytest.raises(InvalidRequestError, match="secret"):
            _job(spec, run_id, env={name: "hunter2"})
    job = _job(spec, run_id, env={"AIMASS_TRACKING_URI": "http://mlflow:5000"},
               secret_env={"MLFLOW_TRACKING_PASSWORD": SecretEnv("mlflow-auth", "password")}, env_from_secrets=["s3-creds"])
    assert validate_kuberay_object(job) == []
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    by_name = {e["name"]: e for e in head["env"]}
    assert by_name["MLFLOW_TRACKING_PASSWORD"] == {"name": "MLFLOW_TRACKING_PASSWORD",
                                                   "valueFrom": {"secretKeyRef": {"name": "mlflow-auth", "key": "password"}}}
    assert by_name["AIMASS_TRACKING_URI"]["value"] == "http://mlflow:5000"
    assert head["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    text = yaml.safe_dump(job)
    assert "hunter2" not in text


def test_labels_owner_and_names(spec, run_id):
    job = _job(spec, run_id, labels={"team": "vision"})
    meta = job["metadata"]
    assert meta["name"] == rayjob_name(run_id) and len(meta["name"]) <= 47
    assert meta["labels"]["aimass.io/run-id"] == run_id and meta["labels"]["aimass.io/pipeline"] == "tiny"
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "aimass" and meta["labels"]["team"] == "vision"
    assert meta["annotations"]["aimass.io/owner"] == "alice@example.com"
    assert meta["labels"]["aimass.io/owner"] == "alice_example.com"
    with pytest.raises(InvalidRequestError, match="label key"):
        _job(spec, run_id, labels={"aimass.io/owner": "mallory"})
    with pytest.raises(InvalidRequestError, match="label"):
        _job(spec, run_id, labels={"team": "not a label value"})
    with pytest.raises(InvalidRequestError, match="image"):
        _job(spec, run_id, image="")
    longest = "a" * 40
    assert len(rayjob_name(longest)) == 47


def test_cluster_is_sized_from_the_pipeline(spec):
    shape = ClusterShape.for_pipeline(spec)
    assert shape.workers == 2 and shape.worker_gpu == 0  # 3 workers x 1 CPU on 2-CPU pods
    from tests.k8s._support import tiny_spec

    gpu = tiny_spec(spec.to_yaml().replace("numWorkers: 3", "numWorkers: 4\n      useGpu: true"))
    g = ClusterShape.for_pipeline(gpu)
    assert g.workers == 4 and g.worker_gpu == 1


def test_rayservice_from_a_serve_config_is_valid():
    import aimass.serving.config as serving  # a plain import: a broken install must fail here, not skip
    cfg = serving.ServeConfig(models=[serving.ModelSpec(name="digits", model_uri="models:/digits@champion")])
    svc = build_rayservice(cfg, "digits", NAMESPACE, image=IMAGE, service_account="aimass-serve")
    assert validate_kuberay_object(svc) == []
    assert kuberay_semantic_errors(svc) == []
    for where, t in pod_templates(svc):
        assert validate_core_object(_as_pod(t)) == [], where
    doc = yaml.safe_load(svc["spec"]["serveConfigV2"])
    assert doc["applications"][0]["name"] == "aimass"
    assert svc["spec"]["rayClusterConfig"]["authOptions"] == {"mode": "token"}
    plain = build_rayservice({"applications": []}, "plain", NAMESPACE, image=IMAGE)
    assert validate_kuberay_object(plain) == []


def test_rayservice_pods_run_serve_in_high_throughput_mode_unless_told_not_to():
    def serve_env(svc):
        envs = [{e["name"]: e.get("value") for e in t["spec"]["containers"][0]["env"]} for _, t in pod_templates(svc)]
        assert len(envs) == 2  # head and workers alike: every node's Serve must agree
        return [{k: v for k, v in e.items() if k.startswith("RAY_SERVE_")} for e in envs]

    on = build_rayservice({"applications": []}, "fast", NAMESPACE, image=IMAGE)
    assert serve_env(on) == [{"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}] * 2
    off = build_rayservice({"applications": []}, "classic", NAMESPACE, image=IMAGE, high_throughput=False)
    assert serve_env(off) == [{}, {}]
    mixed = build_rayservice({"applications": []}, "mixed", NAMESPACE, image=IMAGE, env={"RAY_SERVE_ENABLE_HA_PROXY": "0"})
    assert serve_env(mixed)[0] == {"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
    assert validate_kuberay_object(on) == [] and validate_kuberay_object(off) == []
