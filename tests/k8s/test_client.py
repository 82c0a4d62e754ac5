"""Submit, watch, logs and cancel through the real kubernetes client and our KubeRay code, against an
in-memory API server (aimass.k8s.testing.FakeKubeApi) playing the API server and the KubeRay operator."""

from __future__ import annotations

import itertools

import pytest

from aimass.exceptions import AuthError, ConflictError, ExecutorError, InvalidRequestError, KubernetesError, NotFoundError
from aimass.k8s.client import KubeRayClient, rayjob_run_status
from aimass.k8s.errors import KubeRayNotInstalledError, KubernetesForbiddenError, KubernetesQuotaError
from aimass.k8s.testing import FakeKubeApi, forbidden_body, quota_body
from aimass.k8s.validation import validate_kuberay_object
from tests.k8s.conftest import IMAGE, NAMESPACE


def _job_name(run_id):
    return f"aimass-{run_id}"


def test_submit_creates_rayjob_then_its_configmap(fake, executor, spec, run_id):
    ref = executor.submit(spec, run_id, labels={"team": "vision"}, owner="alice")
    assert ref.run_id == run_id and ref.backend == "k8s" and ref.namespace == NAMESPACE and ref.owner == "alice"
    assert ref.status.state == "PENDING"
    writes = [r for r in fake.requests if r.method != "GET"]
    assert [(w.method, w.path.rsplit("/", 1)[-1]) for w in writes] == [("POST", "rayjobs"), ("POST", "configmaps")]
    job = fake.get("rayjobs", NAMESPACE, _job_name(run_id))
    assert validate_kuberay_object(job) == []
    assert job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"] == IMAGE
    cm = fake.get("configmaps", NAMESPACE, f"{_job_name(run_id)}-spec")
    assert cm["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]  # owned from birth: no patch needed
    # Deleting the RayJob garbage-collects the ConfigMap.
    executor.cancel(ref, delete=True)
    assert fake.get("configmaps", NAMESPACE, f"{_job_name(run_id)}-spec") is None
    assert fake.get("rayjobs", NAMESPACE, _job_name(run_id)) is None


def test_a_failed_configmap_create_removes_the_rayjob(fake, executor, spec, run_id):
    fake.fail("POST", r"/configmaps$", 500, {"kind": "Status", "message": "etcd timeout", "code": 500})
    with pytest.raises(KubernetesError, match="unavailable") as ei:
        executor.submit(spec, run_id)
    assert ei.value.retryable
    assert fake.list("rayjobs", NAMESPACE) == [] and fake.list("configmaps", NAMESPACE) == []


def test_watch_follows_the_operator_to_success(fake, spec, run_id):
    from aimass.orchestrator.executors.kubernetes import KubernetesExecutor

    sleeps = []
    ex = KubernetesExecutor(namespace=NAMESPACE, image=IMAGE, api_client=fake.api_client(), sleep=sleeps.append)
    ref = ex.submit(spec, run_id)
    name = _job_name(run_id)
    fake.script_rayjob(NAMESPACE, name, [
        {"jobDeploymentStatus": "Initializing", "jobStatus": "NEW"},
        {"jobDeploymentStatus": "Running", "jobStatus": "PENDING", "startTime": "2025-01-01T12:00:00Z"},
        {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"},
        {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED", "endTime": "2025-01-01T12:05:00Z"},
    ])
    seen = []
    final = ex.watch(ref, on_update=lambda st: seen.append(st.state), interval_s=1.5)
    assert final.state == "SUCCEEDED" and final.terminal
    assert seen == ["PENDING", "PENDING", "RUNNING", "SUCCEEDED"]  # one callback per status change
    assert final.finished_at - final.started_at == 300
    assert sleeps == [1.5, 1.5, 1.5]


def test_watch_reports_failure_and_times_out(fake, executor, spec, run_id):
    ref = executor.submit(spec, run_id)
    fake.set_rayjob_status(NAMESPACE, ref.name, jobDeploymentStatus="Failed", jobStatus="FAILED",
                           message="Job entrypoint command failed with exit code 1")
    st = executor.watch(ref)
    assert st.state == "FAILED" and "exit code 1" in st.message

    fake.set_rayjob_status(NAMESPACE, ref.name, jobDeploymentStatus="Running", jobStatus="RUNNING")
    clock = itertools.count(0, 10)
    kr = KubeRayClient(fake.api_client(), sleep=lambda s: None, clock=lambda: next(clock))
    with pytest.raises(ExecutorError, match="timed out") as ei:
        kr.watch_rayjob(ref.name, NAMESPACE, timeout_s=25)
    assert ei.value.retryable


@pytest.mark.parametrize("status, state", [
    ({}, "PENDING"),
    ({"jobDeploymentStatus": "Initializing", "jobStatus": "NEW"}, "PENDING"),
    ({"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}, "RUNNING"),
    ({"jobDeploymentStatus": "Running", "jobStatus": "PENDING"}, "PENDING"),
    ({"jobDeploymentStatus": "Retrying"}, "PENDING"),
    ({"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}, "SUCCEEDED"),
    ({"jobDeploymentStatus": "Complete", "jobStatus": "FAILED"}, "FAILED"),
    ({"jobDeploymentStatus": "Complete", "jobStatus": "RUNNING"}, "FAILED"),  # the submitter failed
    ({"jobDeploymentStatus": "Failed", "reason": "DeadlineExceeded"}, "FAILED"),
    ({"jobDeploymentStatus": "ValidationFailed"}, "FAILED"),
    ({"jobDeploymentStatus": "Suspended", "jobStatus": "STOPPED"}, "PENDING"),  # resuming: spec.suspend is false
    ({"jobDeploymentStatus": "Running", "jobStatus": "STOPPED"}, "CANCELLED"),
])
def test_status_mapping(status, state):
    assert rayjob_run_status({"metadata": {}, "spec": {}, "status": status}).state == state


def test_status_mapping_of_cancelled_runs():
    suspended = {"metadata": {}, "spec": {"suspend": True}, "status": {"jobDeploymentStatus": "Suspending"}}
    assert rayjob_run_status(suspended).state == "CANCELLED"
    finished = {"metadata": {}, "spec": {"suspend": True}, "status": {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}}
    assert rayjob_run_status(finished).state == "SUCCEEDED"
    deleting = {"metadata": {"deletionTimestamp": "2025-01-01T00:00:00Z"}, "spec": {}, "status": {"jobStatus": "RUNNING"}}
    assert rayjob_run_status(deleting).state == "CANCELLED"


def test_logs_come_from_the_submitter_pod(fake, executor, spec, run_id):
    ref = executor.submit(spec, run_id)
    with pytest.raises(NotFoundError, match="no submitter pod"):
        list(executor.logs(ref))
    pod = fake.add_pod(NAMESPACE, f"{ref.name}-x7k2p", {"job-name": ref.name}, phase="Pending")
    with pytest.raises(NotFoundError, match="still starting"):
        list(executor.logs(ref))
    pod["status"]["phase"] = "Running"
    fake.add_pod(NAMESPACE, pod["metadata"]["name"], {"job-name": ref.name},
                 log="Waiting for Ray Dashboard GCS to become healthy\nstep data: SUCCEEDED\nstep train: SUCCEEDED\n")
    assert list(executor.logs(ref)) == ["Waiting for Ray Dashboard GCS to become healthy", "step data: SUCCEEDED",
                                        "step train: SUCCEEDED"]
    assert list(executor.logs(ref, tail_lines=1)) == ["step train: SUCCEEDED"]
    assert list(executor.logs(ref, follow=True)) == ["Waiting for Ray Dashboard GCS to become healthy",
                                                     "step data: SUCCEEDED", "step train: SUCCEEDED"]
    follow_req = [r for r in fake.requests if r.path.endswith("/log") and r.query.get("follow") == ["true"]]
    assert follow_req, "follow=True must stream from the API server"


def test_follow_waits_for_the_submitter_pod(fake, spec, run_id):
    from aimass.orchestrator.executors.kubernetes import KubernetesExecutor

    name = _job_name(run_id)

    def operator(sleep_s):  # the pod shows up while we wait
        if fake.get("pods", NAMESPACE, f"{name}-abc") is None:
            fake.add_pod(NAMESPACE, f"{name}-abc", {"job-name": name}, log="hello\n")

    ex = KubernetesExecutor(namespace=NAMESPACE, image=IMAGE, api_client=fake.api_client(), sleep=operator)
    ref = ex.submit(spec, run_id)
    assert list(ex.logs(ref, follow=True)) == ["hello"]


def test_cancel_suspends_and_is_idempotent(fake, executor, spec, run_id):
    ref = executor.submit(spec, run_id)
    fake.set_rayjob_status(NAMESPACE, ref.name, jobDeploymentStatus="Running", jobStatus="RUNNING")
    st = executor.cancel(ref)
    assert st.state == "CANCELLED"
    patches = [r for r in fake.requests if r.method == "PATCH" and r.path.endswith(ref.name)]
    assert patches[-1].body == {"spec": {"suspend": True}}
    job = fake.get("rayjobs", NAMESPACE, ref.name)
    assert job["spec"]["suspend"] is True and validate_kuberay_object(job) == []
    n = len(fake.requests)
    assert executor.cancel(ref).state == "CANCELLED"  # a second cancel only reads
    assert all(r.method == "GET" for r in fake.requests[n:])
    assert executor.status(ref).state == "CANCELLED"


def test_cancel_of_a_finished_run_changes_nothing(fake, executor, spec, run_id):
    ref = executor.submit(spec, run_id)
    fake.set_rayjob_status(NAMESPACE, ref.name, jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")
    n = len(fake.requests)
    assert executor.cancel(ref).state == "SUCCEEDED"
    assert not [r for r in fake.requests[n:] if r.method in ("PATCH", "DELETE")]


def test_cancel_on_an_existing_cluster_deletes(fake, spec, run_id):
    from aimass.orchestrator.executors.kubernetes import KubernetesExecutor

    ex = KubernetesExecutor(namespace=NAMESPACE, image=IMAGE, cluster="shared", api_client=fake.api_client())
    ref = ex.submit(spec, run_id)
    assert ref.options["cluster"] == "shared"
    fake.set_rayjob_status(NAMESPACE, ref.name, jobDeploymentStatus="Running", jobStatus="RUNNING")
    assert ex.cancel(ref).state == "CANCELLED"
    assert fake.get("rayjobs", NAMESPACE, ref.name) is None  # suspend is not allowed there


def test_list_and_get_read_the_cluster(fake, executor, spec):
    executor.submit(spec, "20250101-000000-aaaaaa", owner="alice", labels={"team": "a"})
    executor.submit(spec, "20250101-000000-bbbbbb", owner="bob")
    fake.objects[("rayjobs", NAMESPACE, "someone-elses")] = {"apiVersion": "ray.io/v1", "kind": "RayJob",
                                                             "metadata": {"name": "someone-elses", "namespace": NAMESPACE}}
    refs = executor.list()
    assert sorted(r.run_id for r in refs) == ["20250101-000000-aaaaaa", "20250101-000000-bbbbbb"]
    assert any(r.query.get("labelSelector") == ["app.kubernetes.io/managed-by=aimass"] for r in fake.requests)
    got = executor.get("20250101-000000-aaaaaa")
    assert got.owner == "alice" and got.labels == {"team": "a"} and got.pipeline == "tiny"
    with pytest.raises(NotFoundError):
        executor.get("20250101-000000-cccccc")


def test_rbac_refusal_names_who_what_where_and_the_fix(fake, executor, spec, run_id):
    fake.deny("POST", "rayjobs")
    with pytest.raises(KubernetesForbiddenError) as ei:
        executor.submit(spec, run_id)
    msg = str(ei.value)
    assert "the service account aimass/aimass-api cannot create rayjobs in namespace 'ml'" in msg
    assert "kubectl create role" in msg and "rayjobs.ray.io" in msg and "rbac.create" in msg
    assert ei.value.http_status == 403
    assert fake.list("configmaps", NAMESPACE) == []  # nothing was left behind


def test_quota_refusal_is_a_quota_error(fake, executor, spec, run_id):
    fake.fail("POST", r"/rayjobs$", 403, quota_body("rayjobs", f"aimass-{run_id}"))
    with pytest.raises(KubernetesQuotaError, match="quota compute-resources") as ei:
        executor.submit(spec, run_id)
    assert "kubectl describe resourcequota -n ml" in str(ei.value)
    fake.fail("POST", r"/configmaps$", 403, quota_body("configmaps", f"aimass-{run_id}-spec"))
    with pytest.raises(KubernetesQuotaError):
        executor.submit(spec, run_id)
    assert fake.list("rayjobs", NAMESPACE) == []  # the RayJob was removed again


def test_missing_crds_say_how_to_install_kuberay(spec, run_id):
    from aimass.orchestrator.executors.kubernetes import KubernetesExecutor

    fake = FakeKubeApi([NAMESPACE], crds_installed=False)
    ex = KubernetesExecutor(namespace=NAMESPACE, image=IMAGE, api_client=fake.api_client())
    with pytest.raises(KubeRayNotInstalledError, match="KubeRay CRDs are not installed") as ei:
        ex.submit(spec, run_id)
    assert "helm install kuberay-operator" in str(ei.value)
    with pytest.raises(KubeRayNotInstalledError):
        ex.list()
    with pytest.raises(KubeRayNotInstalledError):
        ex.ready()
    with pytest.raises(KubeRayNotInstalledError):  # a GET of a missing *type* is not a missing run
        ex.get(run_id)


def test_other_api_errors(fake, executor, spec, run_id):
    ex_ns = type(executor)(namespace="nope", image=IMAGE, api_client=fake.api_client())
    with pytest.raises(NotFoundError, match="namespace 'nope' does not exist"):
        ex_ns.submit(spec, run_id)
    executor.submit(spec, run_id)
    with pytest.raises(ConflictError, match="already exists"):
        executor.submit(spec, run_id)
    fake.fail("GET", "rayjobs", 401, {"kind": "Status", "message": "Unauthorized", "code": 401})
    with pytest.raises(AuthError, match="credentials"):
        executor.list()
    fake.fail("GET", "rayjobs", 429, {"kind": "Status", "message": "too many requests", "code": 429})
    with pytest.raises(KubernetesError) as ei:
        executor.list()
    assert ei.value.retryable
    fake.fail("POST", "rayjobs", 422, {"kind": "Status", "code": 422, "message": "RayJob.ray.io is invalid",
                                       "details": {"causes": [{"field": "spec.entrypoint", "message": "Required value"}]}})
    with pytest.raises(InvalidRequestError, match="rejected") as ei:
        executor.submit(spec, "20250101-000000-dddddd")
    assert "spec.entrypoint" in str(ei.value)


def test_unreachable_api_server_is_retryable():
    from kubernetes import client as k8s_client

    from aimass.orchestrator.executors.kubernetes import KubernetesExecutor
    from tests.ports import free_port

    cfg = k8s_client.Configuration(host=f"http://127.0.0.1:{free_port()}")
    cfg.retries = 0
    ex = KubernetesExecutor(namespace=NAMESPACE, image=IMAGE, api_client=k8s_client.ApiClient(cfg))
    with pytest.raises(KubernetesError, match="cannot reach the Kubernetes API server") as ei:
        ex.list()
    assert ei.value.retryable


def test_api_server_validation_is_applied_by_the_fake(fake, run_id):
    """The fake rejects an object the CRD schema refuses, as a strict API server would."""
    kr = KubeRayClient(fake.api_client())
    with pytest.raises(InvalidRequestError, match="rejected"):
        kr.create_run({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": NAMESPACE}, "data": {}},
                      {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "j", "namespace": NAMESPACE},
                       "spec": {"entrypoint": 42}})
    assert fake.list("configmaps", NAMESPACE) == [] and fake.list("rayjobs", NAMESPACE) == []


def test_rayservice_apply_creates_then_updates(fake):
    from aimass.k8s.builders import build_rayservice

    kr = KubeRayClient(fake.api_client())
    svc = build_rayservice({"applications": []}, "digits", NAMESPACE, image=IMAGE)
    kr.apply_rayservice(svc)
    svc2 = build_rayservice({"applications": [{"name": "a", "import_path": "x:y"}]}, "digits", NAMESPACE, image=IMAGE)
    kr.apply_rayservice(svc2)
    got = kr.get_rayservice("digits", NAMESPACE)
    assert "import_path" in got["spec"]["serveConfigV2"] and got["metadata"]["generation"] == 2


def test_forbidden_messages_for_other_verbs(fake, executor, spec, run_id):
    ref = executor.submit(spec, run_id)
    fake.fail("PATCH", "rayjobs", 403, forbidden_body("alice", "patch", "rayjobs", "ray.io", NAMESPACE))
    fake.set_rayjob_status(NAMESPACE, ref.name, jobDeploymentStatus="Running", jobStatus="RUNNING")
    with pytest.raises(KubernetesForbiddenError, match="the user 'alice' cannot patch rayjobs"):
        executor.cancel(ref)
