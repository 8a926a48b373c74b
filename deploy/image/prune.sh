#!/bin/sh
# Removes the parts of the image's Python dependencies that the plugin never loads, from SITE (a site-packages
# directory); run by deploy/build-image.sh and deploy/Containerfile alike. SRC is the project's source tree.
#   - kubernetes/aio (39 MB): the client's asyncio variant; cc-gpu uses the synchronous client only.
#   - kubernetes_validate's schemas of every Kubernetes release but the one the API-server double validates against
#     (cc_gpu/kube/apiserver/validation.py: KUBERNETES_VERSION), strict variant only (about 64 MB of 68 MB).
# The distributions stay installed and listed in the SBOM with the hashes of the wheels they came from.
set -eu
site="$1"
src="$2"
version="$(sed -n 's/^KUBERNETES_VERSION = "\([0-9.]*\)"$/\1/p' "$src/cc_gpu/kube/apiserver/validation.py")"
schemas="$site/kubernetes_validate/kubernetes-json-schema"
[ -n "$version" ] && [ -d "$schemas/v$version.0-local-strict" ] || { echo "prune.sh: no schemas for Kubernetes '$version'" >&2; exit 1; }
[ -d "$site/kubernetes/aio" ] || { echo "prune.sh: $site/kubernetes/aio is missing" >&2; exit 1; }
rm -rf "$site/kubernetes/aio"
find "$schemas" -mindepth 1 -maxdepth 1 -not -name "v$version.0-local-strict" -exec rm -rf {} +
