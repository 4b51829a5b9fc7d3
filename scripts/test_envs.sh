#!/usr/bin/env bash
# Build the environments that bound what pyproject.toml allows, and test in each.
#
#   scripts/test_envs.sh oldest DIR      venv in DIR with every dependency at its lower bound
#   scripts/test_envs.sh newest DIR      venv in DIR installed as README.md says (newest versions)
#   scripts/test_envs.sh constraints     print the lower bounds as pip constraints (name==version)
#
# Then e.g. `FINETUNE_OTHER_PYTHON=DIR/bin/python python -m pytest tests/models` checks models
# saved under one environment's transformers against the other's. To try a new transformers
# release before raising the cap in pyproject.toml, build the newest environment with the cap
# lifted (`EXTRA="transformers==X.Y.Z"`) and run the suite there.
set -euo pipefail
cd "$(dirname "$0")/.."

constraints() {
    # Every `name>=X` in [project] dependencies and the all/dev extras becomes `name==X`
    python3 - <<'EOF'
import re
import tomllib

project = tomllib.load(open("pyproject.toml", "rb"))["project"]
extras = project["optional-dependencies"]
for requirement in [*project["dependencies"], *extras["all"], *extras["dev"]]:
    match = re.match(r"([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?\s*>=\s*([^,;\s]+)", requirement)
    if not match:
        raise SystemExit(f"pyproject.toml: {requirement!r} has no lower bound (name>=X)")
    print(f"{match[1]}=={match[2]}")
EOF
}

build() {
    local dir="$2"
    python3 -m venv "$dir"
    # The venv's own pip: it takes torch 2.13.0's CPU wheel from local disk like the README install
    local pip=("$dir/bin/python" -m pip install -q --disable-pip-version-check)
    if [ "$1" = oldest ]; then
        constraints >"$dir/constraints.txt"
        pip_args=(-c "$dir/constraints.txt")
    else
        pip_args=()
    fi
    # shellcheck disable=SC2086
    "${pip[@]}" "${pip_args[@]}" torch==2.13.0 -e ".[all,dev]" ${EXTRA:-}
    "$dir/bin/python" -m finetune.cli env | sed -n '/packages:/,/cpu:/p'
}

case "${1:-}" in
    constraints) constraints ;;
    oldest | newest) [ -n "${2:-}" ] || { echo "usage: $0 oldest|newest DIR" >&2; exit 2; }; build "$1" "$2" ;;
    *) echo "usage: $0 oldest|newest DIR | constraints" >&2; exit 2 ;;
esac
