# nfs-list.sh DIR: lists DIR of /default through the kernel client.
set -eu
. "$(dirname "$0")/nfs-common.sh"
nfs_mount

ls -f $MNT/$1 > /vm-out/listing
umount $MNT
echo "listed $(wc -l < /vm-out/listing) names"
