# nbd-ext4.sh write|check: one machine attaching volume vol1 with the kernel
# NBD client. "write" makes an ext4 file system on it and copies a tree in,
# recording checksums in /vm-out/sums; "check" (another machine, later)
# verifies the file system and the tree against SUMS_DIR/sums.
set -eu
ROLE=$1
SRC=$(cd "$(dirname "$0")/../.." && pwd)/src
modprobe nbd 2>/dev/null || true
nbd-client 10.0.2.2 10809 /dev/nbd0 -N vol1
mkdir -p /mnt/ebs
if [ "$ROLE" = write ]; then
  mkfs.ext4 -q /dev/nbd0
  mount /dev/nbd0 /mnt/ebs
  cp -a "$SRC" /mnt/ebs/tree
  head -c 20000000 /dev/urandom > /mnt/ebs/big.bin
  (cd /mnt/ebs && find . -type f ! -path './lost+found/*' -print0 | sort -z | xargs -0 md5sum) > /vm-out/sums
  sync
  umount /mnt/ebs
  e2fsck -f -n /dev/nbd0
  echo "write: $(wc -l < /vm-out/sums) files written, file system clean"
else
  e2fsck -f -n /dev/nbd0
  mount /dev/nbd0 /mnt/ebs
  (cd /mnt/ebs && md5sum -c --quiet "$2/sums")
  echo "check: $(wc -l < "$2/sums") files intact on the second machine"
  umount /mnt/ebs
fi
nbd-client -d /dev/nbd0
