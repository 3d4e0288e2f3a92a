#!/usr/bin/env bash
# Build a PostgreSQL image for the postgresql-docker backend without a container registry: a
# minimal Debian root file system with Debian's postgresql package, imported into Docker.
#
#   docker/build-postgres-image.sh [IMAGE]      (default threadcreator-postgres:15)
#
# Needs root, a running Docker daemon, debootstrap, and the Debian mirror that apt already uses.
# Reuses IMAGE while it exists (REBUILD=1 builds it again). Package maintainer scripts run in an
# empty network namespace, so nothing but the mirror download leaves the machine.
# The image honours POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB and PGPORT (entrypoint.sh):
#   THREADCREATOR_DOCKER_IMAGE=threadcreator-postgres:15 THREADCREATOR_DOCKER_NETWORK=host \
#     pytest --threadcreator-db=postgresql-docker
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
image=${1:-threadcreator-postgres:15}
pg_major=${PG_MAJOR:-15}
suite=${SUITE:-$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")}

if [ -z "${REBUILD:-}" ] && docker image inspect "$image" >/dev/null 2>&1; then
  echo "image $image exists (REBUILD=1 to build it again)"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "install debootstrap first (apt-get install debootstrap)" >&2; exit 2; }

# The first non-security Debian mirror in apt's sources (deb822 or one-line format).
mirror=$( { sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/*.sources 2>/dev/null
            awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /:\/\//) { print $i; break } }' \
              /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null; } \
          | tr ' ' '\n' | grep -v -e security -e '^$' | head -n 1 || true)
mirror=${mirror:-http://deb.debian.org/debian}

root=$(mktemp -d "${TMPDIR:-/var/tmp}/threadcreator-rootfs.XXXXXX")
trap 'rm -rf "$root"' EXIT
echo "building $image: PostgreSQL $pg_major from $mirror ($suite)"
debootstrap --foreign --variant=minbase --include="postgresql-$pg_major" "$suite" "$root" "$mirror" >/dev/null
cp /etc/hosts "$root/etc/hosts"
unshare --net chroot "$root" /debootstrap/debootstrap --second-stage >/dev/null

# Debian's own cluster is not used: the entrypoint makes one in $PGDATA at first start.
rm -rf "$root/var/lib/postgresql/$pg_major" "$root/etc/postgresql/$pg_major" \
  "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
  "$root"/usr/share/doc "$root"/usr/share/man "$root"/usr/share/locale \
  "$root/etc/hosts" "$root/etc/resolv.conf"
# The image's postgres user (not the host's: its uid may differ) owns the server's directories.
chroot "$root" install -d -o postgres -g postgres -m 2775 /var/run/postgresql
chroot "$root" install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/data
install -m 0755 "$here/entrypoint.sh" "$root/usr/local/bin/docker-entrypoint.sh"

tar -C "$root" --numeric-owner --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -c . \
  | docker import \
    -c 'USER postgres' \
    -c "ENV PATH=/usr/lib/postgresql/$pg_major/bin:/usr/local/bin:/usr/bin:/bin PGDATA=/var/lib/postgresql/data" \
    -c 'VOLUME /var/lib/postgresql/data' \
    -c 'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' \
    -c 'CMD ["postgres"]' \
    - "$image" >/dev/null
echo "image $image built in ${SECONDS}s"
