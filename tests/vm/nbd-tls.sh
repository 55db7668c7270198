# nbd-tls.sh CERT_DIR PORT: the kernel NBD client attaches volume vol1 over
# TLS with a client certificate (CERT_DIR/client-cert.pem, client-key.pem,
# ca-cert.pem), makes ext4 on it, writes a file, reads it back after a
# detach and a second attach, and checks the file system.
set -eu
CERTS=$1; PORT=$2
modprobe nbd 2>/dev/null || true
tls="-certfile $CERTS/client-cert.pem -keyfile $CERTS/client-key.pem -cacertfile $CERTS/ca-cert.pem"
nbd-client 10.0.2.2 "$PORT" /dev/nbd0 -N vol1 $tls
mkfs.ext4 -q /dev/nbd0
mkdir -p /mnt/ebs
mount /dev/nbd0 /mnt/ebs
head -c 8000000 /dev/urandom > /mnt/ebs/data.bin
sum=$(md5sum < /mnt/ebs/data.bin)
umount /mnt/ebs
nbd-client -d /dev/nbd0
nbd-client 10.0.2.2 "$PORT" /dev/nbd0 -N vol1 $tls
e2fsck -f -n /dev/nbd0
mount /dev/nbd0 /mnt/ebs
[ "$(md5sum < /mnt/ebs/data.bin)" = "$sum" ]
umount /mnt/ebs
nbd-client -d /dev/nbd0
echo "tls: ext4 written, detached, attached again and intact"
# Without a client certificate the server refuses the session.
if nbd-client 10.0.2.2 "$PORT" /dev/nbd0 -N vol1 -cacertfile "$CERTS/ca-cert.pem" 2>/vm-out/nocert.txt; then
  echo "attached without a client certificate" >&2; exit 1
fi
echo "tls: refused without a client certificate"
