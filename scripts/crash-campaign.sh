#!/usr/bin/env bash
# The long crash campaign: tests/crash_points.rs with ROUNDS passes per
# named crash point (default 200: 2,000 kill points on the local backend
# and 500 on S3, against 240 and 60 in CI), printing one line per kill and
# the totals at the end. Run as root.
#
#   scripts/crash-campaign.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-200}
cargo build --release --quiet
cargo build --release --quiet --features failpoints --bin storfs-failpoints
STORFS_CRASH_ROUNDS=$ROUNDS cargo test --release --test crash_points -- --nocapture --test-threads=1 2>&1 |
  grep -E "crash campaign|pass [0-9]+:|test result|panicked"
