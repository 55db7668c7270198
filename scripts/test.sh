#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls this). Installs what a
# fresh Debian machine lacks, then builds once (release profile) and runs
# every test: unit and model tests, backend conformance, and the end-to-end
# tests that start real daemons and mount real FUSE file systems.
# Needs root: the end-to-end tests mount file systems.
set -euo pipefail
cd "$(dirname "$0")/.."
# Every test writes only inside its own scratch directory: the checkout must
# look the same after the suite as before it (on CI: clean).
git_status() { git -c safe.directory="$PWD" status --porcelain --untracked-files=all; }
tree_before=$(git_status)

if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/test.sh: run as root (the end-to-end tests mount file systems)" >&2
  exit 1
fi

# qemu, a kernel and the guest tools for the kernel-client tests. First:
# installing Debian's qemu-system-x86 removes a qemu-utils of another
# version (a backport), and the packages below then put Debian's back.
vm_tools=${STORFS_VM_DIR:-../shared/vm}
"$vm_tools/setup"

# Debian packages: FUSE (mount.fuse runs storfs as the remount helper), fio,
# what the pjdfstest build needs, the NFS mount helper (the VMs run this
# machine's userland; rpcbind and rpc.statd run in the lock tests' VMs),
# rpcbind (tests/rpcbind.rs registers with a real one), libnfs's clients,
# network namespaces.
apt_pkgs=(fuse3 fio curl libacl1-dev acl tar diffutils passwd nfs-common rpcbind libnfs-utils iproute2 libnbd-bin qemu-utils openssl)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q "${missing[@]}" >/dev/null
fi
# promtool (tests/metrics.rs), without the recommended node exporter.
if ! command -v promtool >/dev/null; then
  echo "== installing prometheus (for promtool)"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null
fi
[ -e /dev/fuse ] || modprobe fuse

# Test tools from crates.io, pinned.
cargo_tool() { # name version
  if ! "$HOME/.cargo/bin/$1" --version 2>/dev/null | grep -q " $2\$"; then
    echo "== cargo install $1 $2"
    cargo install --quiet --locked "$1@$2"
  fi
}
# moto's S3 server, for the S3 conformance suite (pinned: 5.2's
# CompleteMultipartUpload reply has the wrong XML root element).
if ! python3 -m pip show moto 2>/dev/null | grep -q '^Version: 5.1.4$'; then
  echo "== pip install moto[server]==5.1.4"
  python3 -m pip install -q --root-user-action=ignore 'moto[server]==5.1.4'
fi
command -v moto_server >/dev/null || { echo "moto_server not on PATH after pip install" >&2; exit 1; }

cargo_tool pjdfstest 0.2.2
cargo_tool fsx 0.3.2
cargo_tool cargo-fuzz 0.13.2

# pjdfstest switches to these users.
id tests >/dev/null 2>&1 || echo 'tests:x:::pjdfstest dummy user:/:/usr/sbin/nologin' | newusers
getent group nogroup >/dev/null || groupadd nogroup

echo "== format and lints"
cargo fmt --check
cargo clippy --release --all-targets --quiet -- -D warnings

echo "== build and test"
cargo build --release --quiet
# The daemon with crash points armed by FAILPOINTS, for tests/crash_points.rs
# (the same profile; the feature is never in the storfs binary).
cargo build --release --quiet --features failpoints --bin storfs-failpoints
cargo test --release -- --test-threads="${STORFS_TEST_THREADS:-2}"

# Every fuzz target, from its seeds and kept crash inputs (scripts/fuzz.sh).
scripts/fuzz.sh 45
echo "== the checkout is as clean as before"
tree_after=$(git_status)
if [ "$tree_after" != "$tree_before" ]; then
  echo "the test suite changed the checkout (every test must write only in its scratch directory):" >&2
  diff <(echo "$tree_before") <(echo "$tree_after") >&2 || true
  exit 1
fi
echo "== all tests passed"
