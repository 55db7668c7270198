#!/usr/bin/env bash
# The fault soak for as long as you like (tests/soak.rs; CI runs it for
# 5 minutes as part of scripts/test.sh):
#
#   scripts/soak.sh [SECONDS]        (default 3600)
#
# FUSE, NFS (libnfs) and NBD (qemu-io) clients against a daemon on
# storfs-s3d, through backend outages, 503 bursts, latency and cut bodies,
# a log disk filling to its reserve and draining, and floods of idle,
# half-sent and trickling connections; every acknowledged byte checked at
# the end, live and after kill -9. Needs root (FUSE, tmpfs), and the tools
# scripts/test.sh installs. Prints the run's counts.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-3600}
cargo build --release --quiet
STORFS_SOAK_SECS=$secs cargo test --release --quiet --test soak -- --nocapture 2>&1 \
  | grep -v '^warning: \|^  \* `bin`\|has been running for over'
