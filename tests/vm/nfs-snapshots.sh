# nfs-snapshots.sh COPY: the Linux NFS client reads /default's snapshot
# "before" under .snapshots, which must equal COPY; changes under it fail
# with EROFS; the clone /restored is the old tree and is writable.
set -eu
. "$(dirname "$0")/nfs-common.sh"
COPY=$1
nfs_mount
if ls -a $MNT | grep -qx .snapshots; then echo ".snapshots is listed in the root"; exit 1; fi
ls $MNT/.snapshots > /vm-out/snapshots
diff -r --no-dereference -x unread $MNT/.snapshots/before/tree "$COPY"
for op in "touch $MNT/.snapshots/before/tree/new" "mkdir $MNT/.snapshots/before/tree/d" \
          "rm $MNT/.snapshots/before/tree/docs/f1" "chmod 600 $MNT/.snapshots/before/tree/docs/f1"; do
  if err=$($op 2>&1); then echo "$op succeeded in a snapshot"; exit 1; fi
  case "$err" in *"Read-only file system"*) ;; *) echo "$op: $err"; exit 1 ;; esac
done
# A handle taken before the daemon restarts still reads after it (the file
# was not read before, so the read goes to the server).
exec 3< $MNT/.snapshots/before/tree/docs/unread
touch /vm-out/holding
while [ ! -e /vm-out/restarted ]; do sleep 0.2; done
cat <&3 > /vm-out/held
exec 3<&-
umount $MNT
mkdir -p /mnt/r
mount -t nfs -o $NFS_OPTS 10.0.2.2:/restored /mnt/r
diff -r --no-dereference /mnt/r/tree "$COPY"
echo "written in the clone" > /mnt/r/tree/docs/new-in-clone
sync
umount /mnt/r
echo "snapshots: old tree read through NFS, EROFS under .snapshots, clone writable"
