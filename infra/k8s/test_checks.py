"""The checks in checks.py each catch the violation they are for, and pass what is right.

Run by `infra/k8s/validate --self-test` (or `python -m unittest test_checks`
in this folder, with PyYAML and kubernetes-validate installed). Each test
starts from a small set of objects that passes, breaks one thing, and expects
the failure that names it.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import tempfile
import unittest

import yaml

import checks

GOOD = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: svc, namespace: ns}
spec:
  replicas: 2
  selector: {matchLabels: {app: svc}}
  template:
    metadata: {labels: {app: svc, tier: api}}
    spec:
      automountServiceAccountToken: false
      securityContext:
        runAsNonRoot: true
        runAsUser: 65532
        seccompProfile: {type: RuntimeDefault}
      containers:
        - name: svc
          image: registry.example/fabric:0.1.0
          readinessProbe: {httpGet: {path: /readyz, port: 8000}}
          livenessProbe: {httpGet: {path: /healthz, port: 8000}}
          resources:
            requests: {cpu: 100m, memory: 64Mi}
            limits: {cpu: "1", memory: 256Mi}
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities: {drop: [ALL]}
---
apiVersion: v1
kind: Service
metadata: {name: svc, namespace: ns}
spec:
  selector: {app: svc}
  ports: [{port: 8000}]
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: svc, namespace: ns}
spec:
  maxUnavailable: 1
  selector: {matchLabels: {app: svc}}
---
apiVersion: v1
kind: Pod
metadata:
  name: wf-orders-0-v1
  namespace: apps
  labels: {app.kubernetes.io/name: fabric-worker, fabric.dev/app: orders, fabric.dev/version: "1"}
spec:
  automountServiceAccountToken: false
  securityContext:
    runAsNonRoot: true
    seccompProfile: {type: RuntimeDefault}
  containers:
    - name: worker
      image: registry.example/fabric@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
      readinessProbe: {httpGet: {path: /readyz, port: 8081}}
      livenessProbe: {httpGet: {path: /healthz, port: 8081}}
      resources:
        requests: {cpu: 100m, memory: 512Mi}
        limits: {cpu: 100m, memory: 512Mi}
      securityContext:
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        capabilities: {drop: [ALL]}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: wf-orders-v1, namespace: apps}
spec:
  maxUnavailable: 1
  selector: {matchLabels: {fabric.dev/app: orders, fabric.dev/version: "1"}}
"""


def good() -> list[dict]:
    return [d for d in yaml.safe_load_all(GOOD) if d]


def run(docs: list[dict], version: str | None = None) -> list[str]:
    objs = [checks.Obj("fixture.yaml", i, d) for i, d in enumerate(docs)]
    return checks.check(objs, version)


def find(docs: list[dict], kind: str) -> dict:
    return next(d for d in docs if d["kind"] == kind)


def deployment_container(docs: list[dict]) -> dict:
    return find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


class TheGoodFixture(unittest.TestCase):
    def test_passes_every_check_and_its_schemas(self):
        self.assertEqual(run(good(), "1.34"), [])


class Schemas(unittest.TestCase):
    def test_an_unknown_field_fails_in_strict_mode(self):
        docs = good()
        deployment_container(docs)["readinesProbe"] = {"httpGet": {"path": "/", "port": 1}}
        failures = run(docs, "1.34")
        self.assertTrue(any("Deployment/ns/svc: schema 1.34" in f and "readinesProbe" in f for f in failures), failures)

    def test_a_wrong_type_fails(self):
        docs = good()
        find(docs, "Deployment")["spec"]["replicas"] = "two"
        self.assertTrue(any("spec.replicas" in f for f in run(docs, "1.34")))

    def test_a_kind_without_a_schema_fails(self):
        docs = good() + [{"apiVersion": "example.dev/v1", "kind": "Widget", "metadata": {"name": "w"}}]
        self.assertTrue(any("no schema for example.dev/v1 Widget" in f for f in run(docs, "1.34")))


class Selectors(unittest.TestCase):
    def test_a_workload_selector_that_misses_its_template_fails(self):
        docs = good()
        find(docs, "Deployment")["spec"]["selector"]["matchLabels"]["app"] = "other"
        self.assertIn("does not match the pod template's labels", "\n".join(run(docs)))

    def test_match_expressions_are_read(self):
        docs = good()
        find(docs, "Deployment")["spec"]["selector"] = {
            "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["api"]}]}
        self.assertIn("does not match the pod template's labels", "\n".join(run(docs)))

    def test_a_service_selecting_nothing_fails(self):
        docs = good()
        find(docs, "Service")["spec"]["selector"] = {"app": "svc", "tier": "web"}
        self.assertIn("Service/ns/svc: spec.selector", "\n".join(run(docs)))

    def test_a_service_selects_only_in_its_namespace(self):
        docs = good()
        find(docs, "Service")["metadata"]["namespace"] = "elsewhere"
        self.assertIn("matches no workload", "\n".join(run(docs)))


class DisruptionBudgets(unittest.TestCase):
    def test_one_that_selects_nothing_fails(self):
        docs = good()
        find(docs, "PodDisruptionBudget")["spec"]["selector"] = {"matchLabels": {"app": "gone"}}
        self.assertIn("selects no workload", "\n".join(run(docs)))

    def test_min_available_equal_to_replicas_fails(self):
        docs = good()
        spec = find(docs, "PodDisruptionBudget")["spec"]
        del spec["maxUnavailable"]
        spec["minAvailable"] = 2
        self.assertIn("minAvailable 2 of 2 Pods allows no voluntary eviction", "\n".join(run(docs)))

    def test_min_available_as_all_of_them_in_percent_fails(self):
        docs = good()
        spec = find(docs, "PodDisruptionBudget")["spec"]
        del spec["maxUnavailable"]
        spec["minAvailable"] = "100%"
        self.assertIn("allows no voluntary eviction", "\n".join(run(docs)))

    def test_max_unavailable_zero_fails(self):
        docs = good()
        find(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] = 0
        self.assertIn("maxUnavailable 0 of 2 Pods", "\n".join(run(docs)))

    def test_min_available_below_replicas_passes(self):
        docs = good()
        spec = find(docs, "PodDisruptionBudget")["spec"]
        del spec["maxUnavailable"]
        spec["minAvailable"] = 1
        self.assertEqual(run(docs), [])

    def test_a_worker_version_budget_counts_its_pods(self):
        docs = good()
        budget = [d for d in docs if d["kind"] == "PodDisruptionBudget"][1]
        del budget["spec"]["maxUnavailable"]
        budget["spec"]["minAvailable"] = 1  # the version's one Pod
        self.assertIn("PodDisruptionBudget/apps/wf-orders-v1: minAvailable 1 of 1 Pods", "\n".join(run(docs)))


class Containers(unittest.TestCase):
    def broken(self, change) -> str:
        docs = good()
        change(deployment_container(docs))
        return "\n".join(run(docs))

    def test_missing_probes_fail(self):
        for probe in ("readinessProbe", "livenessProbe"):
            with self.subTest(probe=probe):
                self.assertIn(f"container svc: has no {probe}", self.broken(lambda c: c.pop(probe)))

    def test_missing_requests_and_limits_fail(self):
        for kind in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                with self.subTest(kind=kind, resource=resource):
                    out = self.broken(lambda c: c["resources"][kind].pop(resource))
                    self.assertIn(f"has no {resource} in resources.{kind}", out)

    def test_each_part_of_the_security_context_is_required(self):
        cases = {
            "allowPrivilegeEscalation must be false": lambda c: c["securityContext"].pop("allowPrivilegeEscalation"),
            "readOnlyRootFilesystem must be true": lambda c: c["securityContext"].update(readOnlyRootFilesystem=False),
            "capabilities.drop must hold ALL": lambda c: c["securityContext"]["capabilities"].update(drop=["NET_RAW"]),
            "adds capabilities ['SYS_ADMIN']": lambda c: c["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]),
            "is privileged": lambda c: c["securityContext"].update(privileged=True),
            "runAsNonRoot must be true": lambda c: c["securityContext"].update(runAsNonRoot=False),
            "runs as user 0": lambda c: c["securityContext"].update(runAsUser=0),
            "seccompProfile.type must be RuntimeDefault": lambda c: c["securityContext"].update(
                seccompProfile={"type": "Unconfined"}),
        }
        for message, change in cases.items():
            with self.subTest(message=message):
                self.assertIn(message, self.broken(change))

    def test_the_pod_level_context_counts_when_the_container_leaves_it_out(self):
        docs = good()
        del find(docs, "Deployment")["spec"]["template"]["spec"]["securityContext"]["seccompProfile"]
        self.assertIn("seccompProfile.type must be RuntimeDefault", "\n".join(run(docs)))
        deployment_container(docs)["securityContext"]["seccompProfile"] = {"type": "RuntimeDefault"}
        self.assertEqual(run(docs), [])

    def test_latest_and_untagged_images_fail(self):
        for image, message in (("fabric:latest", "is tagged latest"),
                               ("registry.example:5000/fabric", "has no tag"),
                               ("fabric", "has no tag")):
            with self.subTest(image=image):
                self.assertIn(message, self.broken(lambda c: c.update(image=image)))

    def test_a_registry_port_is_not_a_tag(self):
        self.assertNotIn("image", self.broken(lambda c: c.update(image="registry.example:5000/fabric:0.1.0")))

    def test_init_containers_need_no_probes_but_the_rest(self):
        docs = good()
        init = copy.deepcopy(deployment_container(docs))
        init.update(name="init")
        del init["readinessProbe"], init["livenessProbe"]
        spec = find(docs, "Deployment")["spec"]["template"]["spec"]
        spec["initContainers"] = [init]
        self.assertEqual(run(docs), [])
        del init["resources"]["limits"]
        self.assertIn("init container init: has no cpu in resources.limits", "\n".join(run(docs)))


class Tokens(unittest.TestCase):
    def test_a_worker_pod_must_not_mount_a_token(self):
        docs = good()
        del find(docs, "Pod")["spec"]["automountServiceAccountToken"]
        self.assertIn("Pod/apps/wf-orders-0-v1: automountServiceAccountToken must be false (a worker)",
                      "\n".join(run(docs)))

    def test_a_pod_whose_account_is_bound_to_a_role_may_mount_one(self):
        docs = good()
        spec = find(docs, "Deployment")["spec"]["template"]["spec"]
        spec["automountServiceAccountToken"] = True
        spec["serviceAccountName"] = "svc"
        self.assertIn("its service account svc is bound to no role", "\n".join(run(docs)))
        docs.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                     "metadata": {"name": "svc", "namespace": "other"},
                     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"},
                     "subjects": [{"kind": "ServiceAccount", "name": "svc", "namespace": "ns"}]})
        self.assertEqual(run(docs), [])


class Files(unittest.TestCase):
    def test_main_names_each_failure_and_exits_1(self):
        docs = good()
        del deployment_container(docs)["livenessProbe"]
        with tempfile.TemporaryDirectory() as d:
            bad = os.path.join(d, "bad.yaml")
            with open(bad, "w") as f:
                yaml.safe_dump_all(docs, f)
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                self.assertEqual(checks.main(["--kubernetes", "1.34", bad]), 1)
            self.assertIn(f"FAIL {bad}: Deployment/ns/svc: container svc: has no livenessProbe", err.getvalue())
            objs, errors = checks.load([bad, os.path.join(d, "missing.yaml")])
            self.assertEqual(len(objs), len(docs))
            self.assertEqual(len(errors), 1)

    def test_a_document_that_is_no_object_fails(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "x.yaml")
            with open(path, "w") as f:
                f.write("just: a map\n---\n- a list\n")
            objs, errors = checks.load([path])
            self.assertEqual(objs, [])
            self.assertEqual(len(errors), 2)

    def test_a_kustomization_lists_every_file_beside_it_and_no_other(self):
        with tempfile.TemporaryDirectory() as d:
            for name in ("a.yaml", "b.yaml"):
                open(os.path.join(d, name), "w").close()
            k = os.path.join(d, "kustomization.yaml")
            with open(k, "w") as f:
                yaml.safe_dump({"resources": ["a.yaml", "gone.yaml"]}, f)
            failures = checks.check_kustomization(k)
            self.assertEqual(len(failures), 2, failures)
            self.assertIn("lists gone.yaml", failures[0])
            self.assertIn("does not list b.yaml", failures[1])
            with open(k, "w") as f:
                yaml.safe_dump({"resources": ["a.yaml", "b.yaml"]}, f)
            self.assertEqual(checks.check_kustomization(k), [])


if __name__ == "__main__":
    unittest.main()
