# nfs-writer.sh: writes and closes files until /vm-out/stop appears, while
# the host restarts and kills the server; then checks every file closed.
# Any error (ESTALE included) fails the job.
set -eu
. "$(dirname "$0")/nfs-common.sh"
nfs_mount
: > /vm-out/written
touch /vm-out/started
i=0
while [ ! -e /vm-out/stop ]; do
  i=$((i + 1))
  head -c $(( (i * 7919) % 400000 + 1 )) /dev/urandom > /tmp/cur
  cp /tmp/cur $MNT/w$i
  echo "w$i $(md5sum < /tmp/cur | cut -d' ' -f1)" >> /vm-out/written
done
n=0
while read -r name sum; do
  got=$(md5sum < $MNT/$name | cut -d' ' -f1)
  [ "$got" = "$sum" ] || { echo "$name differs after the server restarts"; exit 1; }
  n=$((n + 1))
done < /vm-out/written
echo "verified $n files closed across server restarts"
umount $MNT
