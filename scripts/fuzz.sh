#!/usr/bin/env bash
# Fuzzes storfs's decoders with cargo-fuzz (libFuzzer).
#
#   scripts/fuzz.sh SECONDS [TARGET...]     (default: every target)
#
# Each target runs SECONDS from its checked-in seeds (fuzz/seeds/TARGET),
# the inputs that once crashed it (fuzz/regressions/TARGET: every run
# replays them first, so a fixed crash stays fixed) and the corpus grown
# by earlier runs (fuzz/corpus/TARGET, not checked in). CI runs each for
# a short while (scripts/test.sh); for hours, e.g. `scripts/fuzz.sh 14400`.
# A crash stops the script with exit status 1; its input is copied into
# fuzz/regressions/TARGET, to be committed with the fix.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECONDS_EACH=${1:?usage: scripts/fuzz.sh SECONDS [TARGET...]}
shift
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(nfs_decode nlm_decode nbd_session wal_replay pack_decode control)
for t in "${TARGETS[@]}"; do
  echo "== fuzz $t for $SECONDS_EACH s"
  mkdir -p "corpus/$t" "artifacts/$t"
  dirs=("corpus/$t")
  [ -d "seeds/$t" ] && dirs+=("seeds/$t")
  [ -d "regressions/$t" ] && dirs+=("regressions/$t")
  # cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP lets stable accept them.
  if ! RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" "${dirs[@]}" -- -max_total_time="$SECONDS_EACH" \
    > "artifacts/$t/last.log" 2>&1; then
    tail -40 "artifacts/$t/last.log" >&2
    mkdir -p "regressions/$t"
    for a in "artifacts/$t"/crash-* "artifacts/$t"/oom-* "artifacts/$t"/timeout-*; do
      [ -e "$a" ] && cp "$a" "regressions/$t/" && echo "kept $a in fuzz/regressions/$t: commit it with the fix" >&2
    done
    exit 1
  fi
  tail -1 "artifacts/$t/last.log"
done
