# Sourced by demo.sh and test.sh: sets everything up (idempotent), enters the repository and sources the
# environment file.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
set +u
# shellcheck disable=SC1091
source .deps/env.sh
set -u
