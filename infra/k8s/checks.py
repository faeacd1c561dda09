"""Validates Kubernetes objects: the official schemas in strict mode, then what schemas cannot see.

Run through `infra/k8s/validate`, which installs kubernetes-validate and PyYAML
into a cached virtualenv. Usage:

    checks.py [--kubernetes 1.34] FILE...

Every document of every FILE is an object. The schemas catch misspelt and
misplaced fields; the checks below catch objects that are well formed but
wrong together or unsafe:

- a Deployment's or StatefulSet's selector matches its pod template's labels;
- a Service's selector matches some workload's or Pod's labels;
- a PodDisruptionBudget selects some workload and leaves room for one
  voluntary eviction;
- every container has readiness and liveness probes (init containers, which
  cannot have them, excepted), cpu and memory requests and limits, and the
  restricted security context;
- a Pod that talks to no API server (its service account is bound to no role
  here, and worker Pods always) does not mount a service account token;
- no image is `latest`, or untagged (which means `latest`);
- with `--kustomization`, it lists every file of its folder and no other,
  so `kubectl apply -k` applies what was validated.

Exits 1 with one line per failure, naming the file, the object and what is
wrong; 0 when all pass.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable

import yaml

#: Largest file read, so a runaway render cannot exhaust memory.
MAX_FILE_BYTES = 8 * 1024 * 1024

#: Kinds whose pod template is `spec.template`, and their replica count's default.
TEMPLATED = {"Deployment", "StatefulSet", "ReplicaSet", "DaemonSet", "Job"}
#: Label of every worker Pod the control plane's Kubernetes scheduler makes.
WORKER_LABEL = ("app.kubernetes.io/name", "fabric-worker")
#: Namespaced objects with no namespace are taken to be in this one.
DEFAULT_NAMESPACE = "default"


@dataclass
class Obj:
    """One document: where it came from and what it is."""

    file: str
    index: int
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.body.get("kind", "?"))

    @property
    def name(self) -> str:
        return str((self.body.get("metadata") or {}).get("name", "?"))

    @property
    def namespace(self) -> str:
        return str((self.body.get("metadata") or {}).get("namespace") or DEFAULT_NAMESPACE)

    def where(self) -> str:
        return f"{self.file}: {self.kind}/{self.namespace}/{self.name}"


@dataclass
class Report:
    """Failures, one line each."""

    failures: list[str] = field(default_factory=list)

    def fail(self, obj: Obj, message: str) -> None:
        self.failures.append(f"{obj.where()}: {message}")


# --- Reading.


def load(paths: Iterable[str]) -> tuple[list[Obj], list[str]]:
    """Every non-empty document of every file, and the files that could not be read."""
    objs: list[Obj] = []
    errors: list[str] = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)
        except OSError as e:
            errors.append(f"{path}: cannot be read: {e.strerror}")
            continue
        if len(data) > MAX_FILE_BYTES:
            errors.append(f"{path}: larger than {MAX_FILE_BYTES} bytes")
            continue
        try:
            docs = list(yaml.safe_load_all(data))
        except yaml.YAMLError as e:
            errors.append(f"{path}: not YAML: {e}".replace("\n", " "))
            continue
        for i, doc in enumerate(docs):
            if doc is None:
                continue
            if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
                errors.append(f"{path}: document {i + 1} is not a Kubernetes object")
                continue
            objs.append(Obj(path, i, doc))
    return objs, errors


# --- Schemas.


def check_schemas(objs: list[Obj], version: str, report: Report) -> list[Obj]:
    """Each object against the official schema of `version`, in strict mode; returns those that pass."""
    import kubernetes_validate as kv
    from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

    passed = []
    for obj in objs:
        try:
            kv.validate(obj.body, version, strict=True)
            passed.append(obj)
        except ValidationError as e:
            path = ".".join(str(p) for p in e.path) or "(top)"
            report.fail(obj, f"schema {e.version}: {path}: {e.message}")
        except SchemaNotFoundError:
            report.fail(obj, f"no schema for {obj.body.get('apiVersion')} {obj.kind} in Kubernetes {version}")
    return passed


# --- Labels and selectors.


def selector_matches(selector: dict[str, Any] | None, labels: dict[str, Any]) -> bool:
    """A LabelSelector (matchLabels and matchExpressions) against labels; an empty one matches all."""
    if not selector:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


@dataclass
class PodSource:
    """Something that makes Pods: a workload's template, or a Pod itself."""

    obj: Obj
    labels: dict[str, Any]
    spec: dict[str, Any]
    replicas: int


def pod_sources(objs: list[Obj]) -> list[PodSource]:
    sources = []
    for obj in objs:
        spec = obj.body.get("spec") or {}
        if obj.kind == "Pod":
            labels = (obj.body.get("metadata") or {}).get("labels") or {}
            sources.append(PodSource(obj, labels, spec, 1))
        elif obj.kind in TEMPLATED:
            template = spec.get("template") or {}
            labels = (template.get("metadata") or {}).get("labels") or {}
            replicas = spec.get("replicas", 1) if obj.kind in ("Deployment", "StatefulSet", "ReplicaSet") else 1
            # A malformed count is the schema's to report; count one Pod here.
            replicas = replicas if isinstance(replicas, int) else 1
            sources.append(PodSource(obj, labels, template.get("spec") or {}, replicas))
        elif obj.kind == "CronJob":
            template = ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}
            labels = (template.get("metadata") or {}).get("labels") or {}
            sources.append(PodSource(obj, labels, template.get("spec") or {}, 1))
    return sources


def check_workload_selectors(sources: list[PodSource], report: Report) -> None:
    for s in sources:
        if s.obj.kind not in TEMPLATED or s.obj.kind == "Job":
            continue
        selector = (s.obj.body.get("spec") or {}).get("selector")
        if not selector or not (selector.get("matchLabels") or selector.get("matchExpressions")):
            report.fail(s.obj, "spec.selector is empty")
        elif not selector_matches(selector, s.labels):
            report.fail(s.obj, f"spec.selector {selector} does not match the pod template's labels {s.labels}")


def check_services(objs: list[Obj], sources: list[PodSource], report: Report) -> None:
    for obj in objs:
        if obj.kind != "Service":
            continue
        selector = (obj.body.get("spec") or {}).get("selector")
        if not selector:
            continue  # endpoints managed by hand, or an ExternalName
        if not any(s.obj.namespace == obj.namespace and selector_matches({"matchLabels": selector}, s.labels)
                   for s in sources):
            report.fail(obj, f"spec.selector {selector} matches no workload's or Pod's labels in its namespace")


def scaled(value: Any, total: int) -> int:
    """An IntOrString of a PodDisruptionBudget, as the disruption controller reads it (percentages round up)."""
    if isinstance(value, str) and value.endswith("%"):
        return math.ceil(total * int(value[:-1]) / 100)
    return int(value)


def check_disruption_budgets(objs: list[Obj], sources: list[PodSource], report: Report) -> None:
    for obj in objs:
        if obj.kind != "PodDisruptionBudget":
            continue
        spec = obj.body.get("spec") or {}
        selector = spec.get("selector")
        if not selector:
            report.fail(obj, "spec.selector is empty: it would select every Pod of its namespace")
            continue
        matched = [s for s in sources if s.obj.namespace == obj.namespace and selector_matches(selector, s.labels)]
        if not matched:
            report.fail(obj, f"spec.selector {selector} selects no workload or Pod in its namespace")
            continue
        pods = sum(s.replicas for s in matched)
        if "maxUnavailable" in spec:
            if scaled(spec["maxUnavailable"], pods) < 1:
                report.fail(obj, f"maxUnavailable {spec['maxUnavailable']} of {pods} Pods allows no voluntary eviction")
        elif "minAvailable" in spec:
            if scaled(spec["minAvailable"], pods) >= pods:
                report.fail(obj, f"minAvailable {spec['minAvailable']} of {pods} Pods allows no voluntary eviction")


# --- Pods.


def check_pod(source: PodSource, bound_accounts: set[tuple[str, str]], report: Report) -> None:
    obj, spec = source.obj, source.spec
    pod_sc = spec.get("securityContext") or {}
    account = spec.get("serviceAccountName") or "default"
    is_worker = source.labels.get(WORKER_LABEL[0]) == WORKER_LABEL[1]
    if is_worker or (obj.namespace, account) not in bound_accounts:
        if spec.get("automountServiceAccountToken") is not False:
            why = "a worker" if is_worker else f"its service account {account} is bound to no role"
            report.fail(obj, f"automountServiceAccountToken must be false ({why})")
    if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
        report.fail(obj, "uses the host's network, PID or IPC namespace")
    containers = [("container", c) for c in spec.get("containers") or []]
    containers += [("init container", c) for c in spec.get("initContainers") or []]
    if not spec.get("containers"):
        report.fail(obj, "has no containers")
    for role, c in containers:
        check_container(obj, role, c, pod_sc, report)


def check_container(obj: Obj, role: str, c: dict[str, Any], pod_sc: dict[str, Any], report: Report) -> None:
    def fail(message: str) -> None:
        report.fail(obj, f"{role} {c.get('name', '?')}: {message}")

    # Init containers may not have probes, unless they are sidecars (restartPolicy Always).
    if role == "container" or c.get("restartPolicy") == "Always":
        for probe in ("readinessProbe", "livenessProbe"):
            if not c.get(probe):
                fail(f"has no {probe}")
    resources = c.get("resources") or {}
    for kind in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            if resource not in (resources.get(kind) or {}):
                fail(f"has no {resource} in resources.{kind}")
    image = str(c.get("image", ""))
    if "@" not in image:
        last = image.rsplit("/", 1)[-1]
        if ":" not in last:
            fail(f"image {image!r} has no tag (it would be latest)")
        elif last.rsplit(":", 1)[1] == "latest":
            fail(f"image {image!r} is tagged latest")
    sc = c.get("securityContext") or {}
    # The restricted Pod Security profile: these at the container's level.
    if sc.get("allowPrivilegeEscalation") is not False:
        fail("securityContext.allowPrivilegeEscalation must be false")
    if sc.get("privileged"):
        fail("is privileged")
    caps = sc.get("capabilities") or {}
    if "ALL" not in (caps.get("drop") or []):
        fail("securityContext.capabilities.drop must hold ALL")
    added = set(caps.get("add") or []) - {"NET_BIND_SERVICE"}
    if added:
        fail(f"adds capabilities {sorted(added)}")
    if sc.get("readOnlyRootFilesystem") is not True:
        fail("securityContext.readOnlyRootFilesystem must be true")
    # These at the container's level, or the pod's when the container leaves them out.
    def effective(key: str) -> Any:
        return sc[key] if key in sc else pod_sc.get(key)

    if effective("runAsNonRoot") is not True:
        fail("runAsNonRoot must be true (on the container or its pod)")
    if effective("runAsUser") == 0:
        fail("runs as user 0")
    seccomp = (effective("seccompProfile") or {}).get("type")
    if seccomp not in ("RuntimeDefault", "Localhost"):
        fail("seccompProfile.type must be RuntimeDefault or Localhost (on the container or its pod)")


def bound_service_accounts(objs: list[Obj]) -> set[tuple[str, str]]:
    """(namespace, name) of every service account some RoleBinding or ClusterRoleBinding here names."""
    bound = set()
    for obj in objs:
        if obj.kind not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        for subject in obj.body.get("subjects") or []:
            if subject.get("kind") == "ServiceAccount":
                ns = subject.get("namespace") or obj.namespace
                bound.add((ns, subject.get("name")))
    return bound


# --- All of it.


def check(objs: list[Obj], version: str | None) -> list[str]:
    """Every failure among `objs`; the schemas are checked when `version` is given.

    Objects the schemas refuse are not checked further: their shape is not
    what the checks read, and the schema's failure already names them.
    """
    report = Report()
    if version:
        objs = check_schemas(objs, version, report)
    try:
        sources = pod_sources(objs)
        check_workload_selectors(sources, report)
        check_services(objs, sources, report)
        check_disruption_budgets(objs, sources, report)
        bound = bound_service_accounts(objs)
        for source in sources:
            check_pod(source, bound, report)
    except (AttributeError, TypeError, ValueError) as e:
        # Only without the schemas: a shape they would have refused.
        report.failures.append(f"objects malformed beyond checking ({type(e).__name__}: {e}); "
                               "run with the schemas to see where")
    return report.failures


def check_kustomization(path: str) -> list[str]:
    """The kustomization's resources are exactly the other YAML files of its folder."""
    import os

    folder = os.path.dirname(os.path.abspath(path))
    try:
        with open(path, "rb") as f:
            listed = (yaml.safe_load(f) or {}).get("resources") or []
    except (OSError, yaml.YAMLError, AttributeError) as e:
        return [f"{path}: cannot be read as a kustomization: {e}"]
    present = {n for n in os.listdir(folder)
               if n.endswith((".yaml", ".yml")) and n != os.path.basename(path)}
    failures = [f"{path}: lists {r}, which is not a file of {folder}" for r in listed if r not in present]
    failures += [f"{path}: does not list {n}, so `kubectl apply -k` would leave it out"
                 for n in sorted(present - set(listed))]
    return failures


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubernetes", default="1.34", help="the Kubernetes version whose schemas apply")
    parser.add_argument("--kustomization", help="a kustomization.yaml that must list every YAML file beside it")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args(argv)
    objs, errors = load(args.files)
    if args.kustomization:
        errors += check_kustomization(args.kustomization)
    failures = errors + check(objs, args.kubernetes)
    for line in failures:
        print(f"FAIL {line}", file=sys.stderr)
    files = len(set(o.file for o in objs))
    if failures:
        print(f"kubernetes objects: {len(failures)} failures in {len(objs)} objects from {files} files",
              file=sys.stderr)
        return 1
    print(f"kubernetes objects: {len(objs)} objects from {files} files valid against Kubernetes "
          f"{args.kubernetes} (strict) and the fabric's checks", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
