"""Render a kustomization in pure Python: `python -m deploy.kustomize DIR`.

The subset that the manifests in deploy/kubernetes use, so CI needs no kustomize binary:
`resources` (files and other kustomization folders), `images` (newName, newTag, digest) and
`patches` given by `path`, applied as strategic merge patches (maps merge, `null` deletes a
key, the lists Kubernetes merges by key are merged by that key, other lists are replaced,
`$patch: delete` removes the resource). Any other field fails loudly rather than being
silently skipped. `kubectl kustomize DIR` gives the same documents (a test checks this where
kubectl is installed).
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import yaml

Doc = dict[str, Any]

SUPPORTED = {"apiVersion", "kind", "resources", "images", "patches"}
# List fields that strategic merge patches merge item by item, with their merge key
# (from the Kubernetes API's patchMergeKey); every other list is replaced whole.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
    "topologySpreadConstraints": "topologyKey",
}
POD_TEMPLATE_PATHS = {
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
    "Pod": ("spec",),
}


class KustomizeError(ValueError):
    pass


def _load_docs(path: Path) -> list[Doc]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def _key(doc: Doc) -> tuple[str, str, str]:
    meta = doc.get("metadata", {})
    return doc["kind"], meta.get("name", ""), meta.get("namespace", "")


def _ports_key(items: list[Doc]) -> str:
    # Container ports merge by containerPort, Service ports by port.
    return "containerPort" if any("containerPort" in i for i in items) else "port"


def merge(base: Any, patch: Any, field: str = "") -> Any:
    """Strategic merge of `patch` into `base` (both left unchanged)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = merge(out[key], value, key)
            else:
                out[key] = copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(patch, list):
        key = _ports_key(base + patch) if field == "ports" else MERGE_KEYS.get(field)
        if key and all(isinstance(i, dict) and key in i for i in base + patch):
            # As kubectl orders them: the patch's items (merged), then the base's others.
            by_key = {item[key]: item for item in base}
            merged = [merge(by_key[i[key]], i) if i[key] in by_key else copy.deepcopy(i)
                      for i in patch]
            patched = {i[key] for i in patch}
            return merged + [i for i in base if i[key] not in patched]
    return copy.deepcopy(patch)


def _apply_patch(docs: list[Doc], patch: Doc, source: Path) -> list[Doc]:
    patch = dict(patch)
    delete = patch.pop("$patch", None) == "delete"
    target = _key(patch)
    hits = [n for n, d in enumerate(docs) if _key(d) == target]
    if len(hits) != 1:
        raise KustomizeError(f"{source}: patch target {target} matches {len(hits)} resources")
    if delete:
        return docs[:hits[0]] + docs[hits[0] + 1:]
    docs = list(docs)
    docs[hits[0]] = merge(docs[hits[0]], patch)
    return docs


def _split_image(image: str) -> tuple[str, str, str]:
    """'name[:tag][@digest]' -> (name, ':tag' or '', '@digest' or '')."""
    rest, _, digest = image.partition("@")
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    name, tag = (rest[:colon], rest[colon:]) if colon > slash else (rest, "")
    return name, tag, "@" + digest if digest else ""


def _set_images(docs: list[Doc], images: list[Doc]) -> None:
    for doc in docs:
        path = POD_TEMPLATE_PATHS.get(doc.get("kind", ""))
        pod: Any = doc
        for part in path or ():
            pod = pod.get(part, {}) if isinstance(pod, dict) else {}
        if not path or not isinstance(pod, dict):
            continue
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            name, tag, digest = _split_image(container.get("image", ""))
            for rule in images:
                if rule["name"] != name:
                    continue
                if "digest" in rule:
                    tag, digest = "", "@" + rule["digest"]
                elif "newTag" in rule:
                    tag, digest = ":" + str(rule["newTag"]), ""
                container["image"] = rule.get("newName", name) + tag + digest


def render(folder: str | Path) -> list[Doc]:
    """The documents that `kustomize build folder` would give (for the supported subset)."""
    folder = Path(folder)
    spec_path = folder / "kustomization.yaml"
    if not spec_path.is_file():
        raise KustomizeError(f"{folder}: no kustomization.yaml")
    spec = _load_docs(spec_path)[0]
    unknown = set(spec) - SUPPORTED
    if unknown:
        raise KustomizeError(f"{spec_path}: unsupported fields {sorted(unknown)}")
    docs: list[Doc] = []
    for entry in spec.get("resources", []):
        path = folder / entry
        docs += render(path) if path.is_dir() else _load_docs(path)
    keys = [_key(d) for d in docs]
    if len(set(keys)) != len(keys):
        raise KustomizeError(f"{folder}: the same resource twice in {keys}")
    for entry in spec.get("patches", []):
        if set(entry) != {"path"}:
            raise KustomizeError(f"{spec_path}: only patches with a `path` are supported")
        for patch in _load_docs(folder / entry["path"]):
            docs = _apply_patch(docs, patch, folder / entry["path"])
    _set_images(docs, spec.get("images", []))
    return docs


def dump(docs: list[Doc]) -> str:
    return "---\n".join(yaml.safe_dump(d, sort_keys=False) for d in docs)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", help="a folder with a kustomization.yaml")
    print(dump(render(p.parse_args(argv).folder)), end="")


if __name__ == "__main__":
    main()
