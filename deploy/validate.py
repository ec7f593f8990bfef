"""Check every overlay against the Kubernetes schemas, offline: `python -m deploy.validate`.

Each overlay in deploy/kubernetes/overlays is rendered (deploy.kustomize) and each document
validated in strict mode (unknown fields are errors) with kubernetes-validate's bundled
schemas, for the newest Kubernetes it ships schemas of and for the oldest these manifests
claim (the preStop `sleep` action is on by default from 1.30).
"""

from __future__ import annotations

import sys
from pathlib import Path

import kubernetes_validate

from deploy.kustomize import Doc, render

KUBERNETES = Path(__file__).resolve().parent / "kubernetes"
OVERLAYS = KUBERNETES / "overlays"
VERSIONS = ("1.30", "1.37")
# Custom resources: no schema ships for them; every other kind must validate.
CUSTOM_KINDS = {("keda.sh/v1alpha1", "ScaledObject")}


def overlays() -> list[Path]:
    return sorted(p for p in OVERLAYS.iterdir() if (p / "kustomization.yaml").is_file())


def errors(docs: list[Doc], version: str) -> list[str]:
    """One line per document that fails the schema of `version` (none when all pass)."""
    found = []
    for doc in docs:
        if (doc.get("apiVersion"), doc.get("kind")) in CUSTOM_KINDS:
            continue
        name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            path = ".".join(str(p) for p in err.absolute_path)
            found.append(f"{name}: {path}: {err.message}")
        except kubernetes_validate.SchemaNotFoundError as err:
            found.append(f"{name}: {err.message}")
    return found


def main() -> None:
    failed = False
    for overlay in overlays():
        docs = render(overlay)
        for version in VERSIONS:
            problems = errors(docs, version)
            failed |= bool(problems)
            print(f"{overlay.name}: {len(docs)} documents, Kubernetes {version}: "
                  f"{'FAIL' if problems else 'ok'}")
            for line in problems:
                print("  " + line)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
