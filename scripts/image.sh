#!/usr/bin/env bash
# Builds the ticklab container image from binaries compiled on this machine (the
# Containerfile's `prebuilt` target: no registry needed), runs it to check it, and
# writes it as a docker-archive for kind. buildah when installed, else docker.
#
#   scripts/image.sh build [--tag T]          cargo build --release, root filesystem, image
#   scripts/image.sh check [--tag T]          --version of both binaries run from the image,
#                                             user 65532, no shell, name resolution works
#   scripts/image.sh archive [--tag T] FILE   docker-archive tarball (kind load image-archive)
#   scripts/image.sh builder                  prints buildah or docker: what the others use
#
# The tag defaults to localhost/ticklab:VERSION (the workspace version, the chart's
# appVersion and the operator's default image: what the chart runs unless told
# otherwise).
#   scripts/image.sh build --in-container    compile inside the Containerfile's own
#                                            build stage (rust:1.95-bookworm, pulled
#                                            from a registry) instead of on the host:
#                                            any OS, any distribution
# IMAGE_BUILDER=buildah|docker chooses; buildah uses STORAGE_DRIVER (default vfs,
# which works in containers and CI sandboxes) and BUILDAH_ISOLATION (default chroot).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/tools/lib.sh
. scripts/tools/lib.sh

usage() { die "usage: scripts/image.sh build|check|archive|builder [--tag T] [--in-container] [FILE]"; }
[ "$#" -ge 1 ] || usage
cmd="$1"
shift
tag=""
in_container=""
args=()
while [ "$#" -gt 0 ]; do
  case "$1" in
    --in-container) in_container=1; shift ;;
    --tag) [ "$#" -ge 2 ] || usage; tag="$2"; shift 2 ;;
    --tag=*) tag="${1#--tag=}"; shift ;;
    -*) usage ;;
    *) args+=("$1"); shift ;;
  esac
done

export STORAGE_DRIVER="${STORAGE_DRIVER:-vfs}"
export BUILDAH_ISOLATION="${BUILDAH_ISOLATION:-chroot}"
builder="${IMAGE_BUILDER:-}"
if [ -z "$builder" ]; then
  if command -v buildah >/dev/null 2>&1; then
    builder=buildah
  elif command -v docker >/dev/null 2>&1; then
    builder=docker
  else
    die "neither buildah nor docker is installed (scripts/tools/apt-packages.sh installs buildah)"
  fi
fi
case "$builder" in
  buildah | docker) need_cmd "$builder" ;;
  *) die "IMAGE_BUILDER must be buildah or docker, not $builder" ;;
esac
bah() { buildah --storage-driver "$STORAGE_DRIVER" "$@"; }

# [workspace.package] version and repository from Cargo.toml
workspace_field() {
  awk -v key="$1" '
    /^\[/ { section = $0 }
    section == "[workspace.package]" && $1 == key && $2 == "=" {
      gsub(/"/, "", $3); print $3; exit
    }' Cargo.toml
}
version="$(workspace_field version)"
[ -n "$version" ] || die "no version in [workspace.package] of Cargo.toml"
[ -n "$tag" ] || tag="localhost/ticklab:$version"

image_exists() {
  case "$builder" in
    buildah) bah inspect --type image "$tag" >/dev/null 2>&1 ;;
    docker) docker image inspect "$tag" >/dev/null 2>&1 ;;
  esac
}

build() {
  local started bin_dir rootfs size
  started="$(date +%s)"
  if [ -n "$in_container" ]; then
    build_in_container
    return
  fi
  log "cargo build --release (ticklab, ticklab-operator)"
  cargo build --release --locked -p ticklab -p ticklab-operator
  bin_dir="${CARGO_TARGET_DIR:-target}/release"
  # Inside the build context whatever CARGO_TARGET_DIR is: .dockerignore lets only
  # this directory of target/ through.
  rootfs="target/image/rootfs"
  scripts/image/rootfs.sh "$bin_dir" "$rootfs" >/dev/null
  log "root filesystem in $rootfs: $(du -sh "$rootfs" | cut -f1)"
  local build_args=(--target prebuilt -f Containerfile
    --build-arg "VERSION=$version" --build-arg "SOURCE=$(workspace_field repository)" -t "$tag")
  local previous=""
  [ "$builder" = buildah ] && previous="$(bah images --quiet --no-trunc "$tag" 2>/dev/null | head -n 1 || true)"
  case "$builder" in
    buildah) bah bud --isolation "$BUILDAH_ISOLATION" "${build_args[@]}" . >&2 ;;
    docker) docker build "${build_args[@]}" . >&2 ;;
  esac
  # The image this tag named before, now untagged: 47 MB more on every rebuild
  # otherwise (vfs stores each image in full). Kept if a container still uses it.
  if [ -n "$previous" ] && [ "$previous" != "$(bah images --quiet --no-trunc "$tag" | head -n 1)" ]; then
    bah rmi "$previous" >/dev/null 2>&1 || true
  fi
  case "$builder" in
    buildah) size="$(bah images --format '{{.Size}}' "$tag" | head -n 1)" ;;
    docker) size="$(docker image inspect -f '{{.Size}}' "$tag" | awk '{ printf "%.1f MB", $1 / 1e6 }')" ;;
  esac
  log "built $tag with $builder in $(($(date +%s) - started))s: $size"
  echo "$tag"
}

# The Containerfile's default stage: cargo runs in rust:1.95-bookworm, so the host
# needs neither Rust nor glibc (macOS, Fedora, anything with docker or buildah).
build_in_container() {
  local build_args=(-f Containerfile --build-arg "VERSION=$version"
    --build-arg "SOURCE=$(workspace_field repository)" -t "$tag")
  log "building $tag inside the Containerfile's build stage (pulls the Rust image)"
  case "$builder" in
    buildah) bah bud --isolation "$BUILDAH_ISOLATION" "${build_args[@]}" . >&2 ;;
    docker) docker build "${build_args[@]}" . >&2 ;;
  esac
  log "built $tag with $builder in $(($(date +%s) - started))s"
  echo "$tag"
}

# Runs the checks on the image's own files: with buildah in a working container
# (`buildah run`, or chroot into its mount where buildah run cannot make its
# namespaces, as inside some CI containers: either way the binaries load the image's
# libraries, not the host's); with docker in `docker run`.
check() {
  image_exists || die "no image $tag: run scripts/image.sh build first"
  case "$builder" in
    buildah) check_buildah ;;
    docker) check_docker ;;
  esac
  log "image $tag: ticklab and ticklab-operator $version run, user 65532:65532, no shell, names resolve"
}

# expect NAME OUTPUT PATTERN: fail with one line unless OUTPUT matches PATTERN
expect() {
  grep -Eq -- "$3" <<<"$2" || die "check failed: $1: expected /$3/, got: $(head -c 300 <<<"$2" | tr '\n' ' ')"
}

# A name resolved through the image's NSS (nsswitch.conf, /etc/hosts): the MongoDB
# driver gets to "connection refused" on 127.0.0.1:1 only if the lookup worked.
resolve_uri="mongodb://ticklab-nss-check:1/?serverSelectionTimeoutMS=300"

check_buildah() {
  # rootless buildah can only mount inside its user namespace
  if [ "$(id -u)" -ne 0 ] && [ -z "${_CONTAINERS_USERNS_CONFIGURED:-}" ]; then
    exec buildah unshare "$PWD/scripts/image.sh" check --tag "$tag"
  fi
  local ctr mnt user entrypoint out run
  user="$(bah inspect --type image --format '{{.OCIv1.Config.User}}' "$tag")"
  [ "$user" = "65532:65532" ] || die "check failed: image user is '$user', not 65532:65532"
  # (Go's fmt of a []string: buildah 1.28's templates have no json function)
  entrypoint="$(bah inspect --type image --format '{{.OCIv1.Config.Entrypoint}}' "$tag")"
  [ "$entrypoint" = '[/usr/local/bin/ticklab]' ] || die "check failed: entrypoint is $entrypoint"
  ctr="$(bah from --pull=never --name "ticklab-check-$$" "$tag")"
  trap 'bah umount "'"$ctr"'" >/dev/null 2>&1 || true; bah rm "'"$ctr"'" >/dev/null 2>&1 || true' EXIT
  mnt="$(bah mount "$ctr")"
  for f in /bin/sh /usr/bin/sh /bin/bash /busybox; do
    if [ -e "$mnt$f" ] || [ -L "$mnt$f" ]; then die "check failed: the image has a shell ($f)"; fi
  done
  for f in /etc/passwd /etc/group /etc/nsswitch.conf /etc/ssl/certs/ca-certificates.crt; do
    [ -s "$mnt$f" ] || die "check failed: $f missing from the image"
  done
  grep -q '^nonroot:x:65532:65532:' "$mnt/etc/passwd" || die "check failed: no nonroot (65532) in /etc/passwd"
  # Files for the run, in the working container only (the image is not changed): an
  # example to validate, and the name to resolve.
  bah copy "$ctr" manifests/examples/quickstart.yaml /check/quickstart.yaml >/dev/null
  printf '127.0.0.1 localhost ticklab-nss-check\n' >"$mnt/etc/hosts"

  if out="$(bah run --isolation "$BUILDAH_ISOLATION" "$ctr" /usr/local/bin/ticklab --version 2>&1)"; then
    # --no-hosts: the /etc/hosts written above, not one buildah generates
    run() { bah run --isolation "$BUILDAH_ISOLATION" --no-hosts --user 65532:65532 "$ctr" "$@" 2>&1; }
    log "running the binaries with buildah run --isolation $BUILDAH_ISOLATION"
  else
    log "buildah run cannot run here ($(tail -n 1 <<<"$out")); running the binaries chrooted into the image's mount"
    need_cmd chroot
    run() { chroot --userspec=65532:65532 "$mnt" "$@" 2>&1; }
  fi
  out="$(run /usr/local/bin/ticklab --version)" || die "check failed: ticklab --version: $out"
  expect "ticklab --version" "$out" "^ticklab $version\$"
  out="$(run /usr/local/bin/ticklab-operator --version)" || die "check failed: ticklab-operator --version: $out"
  expect "ticklab-operator --version" "$out" "^ticklab-operator $version\$"
  out="$(run /usr/local/bin/ticklab validate /check/quickstart.yaml)" ||
    die "check failed: ticklab validate: $out"
  out="$(run /usr/local/bin/ticklab bench mongodb --trades 1 --mongodb-uri "$resolve_uri" || true)"
  expect "name resolution in the image" "$out" "Connection refused"
}

check_docker() {
  local user out
  user="$(docker image inspect -f '{{.Config.User}}' "$tag")"
  [ "$user" = "65532:65532" ] || die "check failed: image user is '$user', not 65532:65532"
  out="$(docker run --rm "$tag" --version 2>&1)" || die "check failed: ticklab --version: $out"
  expect "ticklab --version" "$out" "^ticklab $version\$"
  out="$(docker run --rm --entrypoint /usr/local/bin/ticklab-operator "$tag" --version 2>&1)" ||
    die "check failed: ticklab-operator --version: $out"
  expect "ticklab-operator --version" "$out" "^ticklab-operator $version\$"
  if docker run --rm --entrypoint /bin/sh "$tag" -c true >/dev/null 2>&1; then
    die "check failed: the image has a shell (/bin/sh)"
  fi
  out="$(docker run --rm -v "$PWD/manifests/examples/quickstart.yaml:/check/quickstart.yaml:ro" \
    "$tag" validate /check/quickstart.yaml 2>&1)" || die "check failed: ticklab validate: $out"
  out="$(docker run --rm --add-host ticklab-nss-check:127.0.0.1 "$tag" \
    bench mongodb --trades 1 --mongodb-uri "$resolve_uri" 2>&1 || true)"
  expect "name resolution in the image" "$out" "Connection refused"
}

archive() {
  [ "${#args[@]}" -eq 1 ] || usage
  local file="${args[0]}"
  image_exists || die "no image $tag: run scripts/image.sh build first"
  mkdir -p "$(dirname "$file")"
  rm -f "$file"
  case "$builder" in
    buildah) bah push --quiet "$tag" "docker-archive:$file:$tag" ;;
    docker) docker save -o "$file" "$tag" ;;
  esac
  log "$tag written to $file ($(du -h "$file" | cut -f1))"
  echo "$file"
}

case "$cmd" in
  build) [ "${#args[@]}" -eq 0 ] || usage; build ;;
  check) [ "${#args[@]}" -eq 0 ] || usage; check ;;
  archive) archive ;;
  builder) echo "$builder" ;;
  *) usage ;;
esac
