#!/usr/bin/env bash
# Sets up everything (idempotent) and runs every test. .ci/run calls exactly this.
# shellcheck disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/prepare.sh"
# A domain of its own, so tests running beside another ROS 2 system on this host do not cross-talk.
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-$((RANDOM % 100 + 1))}"
echo "[test] ROS_DOMAIN_ID=$ROS_DOMAIN_ID"
cargo build --release --all-targets
# --no-fail-fast: one failing binary must not hide the others.
cargo test --release --no-fail-fast -- --test-threads=2
