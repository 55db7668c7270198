# nfs-two.sh ROLE: one of two machines sharing /default. Each writes a file
# the other then reads after close (close-to-open), A makes namespace and
# attribute changes B must see, and each runs fio --verify.
set -eu
. "$(dirname "$0")/nfs-common.sh"
role=$1
nfs_mount
if [ "$role" = a ]; then
  head -c 1500000 /dev/urandom > /tmp/a.bin
  cp /tmp/a.bin $MNT/a.bin
  md5sum < /tmp/a.bin > $MNT/a.md5
  touch $MNT/phase1-a
  wait_for $MNT/phase1-b
  md5sum < $MNT/b.bin | cmp - $MNT/b.md5
  echo "a: read b.bin written by the other machine, content matches"
  mv $MNT/a.bin $MNT/renamed.bin
  ln $MNT/renamed.bin $MNT/hardlink
  ln -s renamed.bin $MNT/symlink
  chmod 600 $MNT/a.md5
  mkdir $MNT/newdir
  rm $MNT/b.md5
  touch $MNT/phase2-a
  wait_for $MNT/phase2-b
  fio --directory=$MNT --name=a --rw=randwrite --bsrange=4k-64k --size=96M --ioengine=psync \
      --verify=crc32c --verify_fatal=1 --do_verify=1 --end_fsync=1 > /tmp/fio.txt
  grep -q "verify" /tmp/fio.txt && ! grep -qi "verify failed\|err=" /tmp/fio.txt
  echo "a: fio verify passed"
else
  wait_for $MNT/phase1-a
  md5sum < $MNT/a.bin | cmp - $MNT/a.md5
  echo "b: read a.bin written by the other machine, content matches"
  head -c 700000 /dev/urandom > /tmp/b.bin
  cp /tmp/b.bin $MNT/b.bin
  md5sum < /tmp/b.bin > $MNT/b.md5
  touch $MNT/phase1-b
  wait_for $MNT/phase2-a
  eventually test ! -e $MNT/a.bin
  eventually test -f $MNT/renamed.bin
  md5sum < $MNT/renamed.bin | cmp - $MNT/a.md5
  eventually test "$(stat -c %h $MNT/renamed.bin)" = 2
  eventually test "$(readlink $MNT/symlink)" = renamed.bin
  eventually test "$(stat -c %a $MNT/a.md5)" = 600
  eventually test -d $MNT/newdir
  eventually test ! -e $MNT/b.md5
  echo "b: saw rename, link, symlink, chmod, mkdir and delete made by the other machine"
  touch $MNT/phase2-b
  fio --directory=$MNT --name=b --rw=write --bs=256k --size=96M --ioengine=psync \
      --verify=crc32c --verify_fatal=1 --do_verify=1 --end_fsync=1 > /tmp/fio.txt
  ! grep -qi "verify failed\|err=" /tmp/fio.txt
  echo "b: fio verify passed"
fi
umount $MNT
echo "$role: done"
