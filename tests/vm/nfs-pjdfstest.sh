# nfs-pjdfstest.sh PJDFSTEST CONFIG: pjdfstest on an NFS mount, one process per
# syscall group (see tests/common/pjdfstest.rs), output in /vm-out/GROUP.
set -u
. "$(dirname "$0")/nfs-common.sh"
nfs_mount || exit 1
mkdir -p $MNT/pjd /tmp/second
cd $MNT/pjd
for g in chmod chown ftruncate link mkdir mkfifo mknod open posix_fallocate rename rmdir symlink truncate unlink utimensat; do
  "$1" -c "$2" -p $MNT/pjd -s /tmp/second $g > /vm-out/$g 2>&1
  echo "$g: $(grep -c ' ok$' /vm-out/$g) ok"
done
cd /
umount $MNT
