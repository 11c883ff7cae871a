#!/usr/bin/env bash
# Build the Bento of the Conveyor service from the installed package (`make bento`):
#
#   bash scripts/bento.sh [bentoml build options...]
#
# The build context is made in build/bento/ (or $CONVEYOR_BENTO_CONTEXT): the package's wheel (`uv build`, the same files the
# wheel installs), the requirements exported from uv.lock (every pin the checkout runs with, the
# server profile's extra included), and bentofile.yaml. BentoML copies that folder, so the Bento
# serves exactly the package and the locked dependencies, not a hand-kept list of either.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv_bin=${CONVEYOR_VENV_BIN:-$root/.venv/bin}
uv=$(command -v uv || echo "$root/.tools/bin/uv")
[ -x "$uv" ] || uv=$venv_bin/uv
context=${CONVEYOR_BENTO_CONTEXT:-$root/build/bento}
rm -rf "$context"
mkdir -p "$context/wheels"
"$uv" build --quiet --wheel --out-dir "$context/wheels" "$root"
wheel=$(cd "$context" && ls wheels/conveyor-*.whl)
{
  echo "# Exported from uv.lock by scripts/bento.sh: the checkout's pins, then the package's wheel"
  "$uv" export --quiet --frozen --no-dev --extra servers --no-hashes --no-emit-project --no-header \
    --no-annotate --project "$root"
  echo "./$wheel"
} > "$context/requirements.txt"
cp "$root/bentofile.yaml" "$context/bentofile.yaml"
# BentoML imports the service to build it, which reads the project's serving policy
export CONVEYOR_PROJECT_FILE=${CONVEYOR_PROJECT_FILE:-$root/conveyor.yaml}
cd "$context"
exec "$venv_bin/bentoml" build . "$@"
