# snap-ext4.sh write|check: ext4 on a volume, snapshotted under load.
# "write" (machine 1) makes ext4 on vol1 and writes files, each fsynced
# with its directory; once 20 are durable it records their checksums in
# /vm-out/sums and signals /vm-out/ready, then goes on writing 60 more
# while the host takes the snapshot. "check VOLUME SUMS_DIR" (machine 2)
# attaches the clone, lets ext4 replay its journal (a snapshot is a disk
# after a power cut), checks it with e2fsck -f -n and verifies the files.
set -eu
ROLE=$1
modprobe nbd 2>/dev/null || true
mkdir -p /mnt/ebs
if [ "$ROLE" = write ]; then
  nbd-client 10.0.2.2 10809 /dev/nbd0 -N vol1
  mkfs.ext4 -q /dev/nbd0
  mount /dev/nbd0 /mnt/ebs
  mkdir /mnt/ebs/data
  sync
  i=1
  while [ $i -le 80 ]; do
    head -c $((50000 + i * 1000)) /dev/urandom > /mnt/ebs/data/f$i
    sync /mnt/ebs/data/f$i /mnt/ebs/data
    if [ $i -eq 20 ]; then
      (cd /mnt/ebs && md5sum data/f*) > /vm-out/sums
      sync /vm-out/sums
      touch /vm-out/ready
    fi
    i=$((i + 1))
  done
  umount /mnt/ebs
  nbd-client -d /dev/nbd0
  echo "write: 80 files written, the snapshot was taken after the first 20"
else
  nbd-client 10.0.2.2 10809 /dev/nbd0 -N "$2"
  mount /dev/nbd0 /mnt/ebs
  umount /mnt/ebs
  e2fsck -f -n /dev/nbd0
  mount -o ro /dev/nbd0 /mnt/ebs
  (cd /mnt/ebs && md5sum -c --quiet "$3/sums")
  echo "check: clone clean, $(wc -l < "$3/sums") files fsynced before the snapshot intact"
  umount /mnt/ebs
  nbd-client -d /dev/nbd0
fi
