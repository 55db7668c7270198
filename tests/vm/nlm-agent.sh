# nlm-agent.sh NAME [restore]: a client machine for the lock tests. It
# mounts the daemon's export over NFS without any lock option (the kernel
# finds NLM and NSM through the server's portmapper), runs rpcbind and
# rpc.statd as a real client does, then does what the test asks through
# /vm-out (nlm_agent.py). With "restore", it first puts back the NSM state
# an earlier boot saved (/vm-out/nfs-state), as a machine with a persistent
# /var/lib/nfs that rebooted, and announces the reboot (sm-notify).
set -eu
NAME=$1
HERE=$(cd "$(dirname "$0")" && pwd)
hostname "client-$NAME"
# No name service in the guest: lookups must fail fast, not time out.
: > /etc/resolv.conf
echo "10.0.3.1 storfs-server" >> /etc/hosts
mkdir -p /run/rpcbind /var/lib/nfs/sm /var/lib/nfs/sm.bak
if [ "${2:-}" = restore ]; then
  cp -a /vm-out/nfs-state/. /var/lib/nfs/
fi
rpcbind -w
rpc.statd --no-notify
if [ "${2:-}" = restore ]; then
  sm-notify -f -d >/vm-out/sm-notify.log 2>&1 || { echo "sm-notify failed"; cat /vm-out/sm-notify.log; }
fi
mkdir -p /mnt/efs
mount -t nfs -o vers=3,proto=tcp,actimeo=1 10.0.3.1:/ /mnt/efs
echo "$NAME: mounted without nolock"
exec python3 "$HERE/nlm_agent.py" /mnt/efs /vm-out
