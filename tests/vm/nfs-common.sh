# Sourced by the NFS guest jobs: mount helpers.
MNT=/mnt/efs
# Attribute caches short (1 s) so the other machine's changes show quickly;
# timeo=50 (5 s) so a restarted server is retried promptly.
NFS_OPTS=vers=3,proto=tcp,nolock,port=2049,mountport=2049,mountproto=tcp,actimeo=1,timeo=50
nfs_mount() { # [EXPORT]
  mkdir -p $MNT
  mount -t nfs -o $NFS_OPTS 10.0.2.2:${1:-/default} $MNT
}
# eventually CMD...: retries CMD for up to 30 s (names and attributes
# changed on another machine show once its attribute cache expires).
eventually() {
  i=0
  until "$@"; do
    i=$((i + 1))
    if [ $i -gt 150 ]; then echo "never became true: $*"; return 1; fi
    sleep 0.2
  done
}
wait_for() { eventually test -e "$1"; }
