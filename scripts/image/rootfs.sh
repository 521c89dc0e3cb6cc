#!/usr/bin/env bash
# Assembles the root filesystem of the ticklab image in OUT_DIR: ticklab and
# ticklab-operator from BIN_DIR, exactly the shared libraries ldd says they load, a
# nonroot user and group (65532), nsswitch.conf, the CA bundle, and the licences of
# what it copies from Debian. Nothing else: no shell, nothing writable. Used by the
# Containerfile's build stage and, on the host, by scripts/image.sh (the prebuilt
# target), so both images hold the same files.
#   scripts/image/rootfs.sh BIN_DIR OUT_DIR
set -euo pipefail

die() { printf 'rootfs.sh: %s\n' "$*" >&2; exit 1; }
[ "$#" -eq 2 ] || die "usage: rootfs.sh BIN_DIR OUT_DIR"
bin_dir="$1"
out="$2"
bins=(ticklab ticklab-operator)
ca_bundle=/etc/ssl/certs/ca-certificates.crt
for cmd in ldd strip; do
  command -v "$cmd" >/dev/null 2>&1 || die "$cmd is required (Debian: libc-bin, binutils)"
done
for b in "${bins[@]}"; do
  [ -x "$bin_dir/$b" ] || die "$bin_dir/$b not found: build it first (cargo build --release -p ticklab -p ticklab-operator)"
done
[ -f "$ca_bundle" ] || die "$ca_bundle not found (Debian: apt-get install ca-certificates)"

rm -rf "$out"
mkdir -p "$out/usr/local/bin" "$out/etc/ssl/certs"
umask 022

# The binaries, without their DWARF line tables (release keeps them for profiling on
# the host): symbols stay, so a backtrace still names functions.
for b in "${bins[@]}"; do
  strip --strip-debug -o "$out/usr/local/bin/$b" "$bin_dir/$b"
  chmod 0755 "$out/usr/local/bin/$b"
done

# Shared libraries at the paths the dynamic loader found them (the interpreter
# included, e.g. /lib64/ld-linux-x86-64.so.2), symlinks resolved. glibc >= 2.34 has
# the files and dns NSS modules inside libc.so.6, so name resolution needs no
# libnss_*.so loaded at run time; the check below makes sure.
deps=""
for b in "${bins[@]}"; do
  deps+="$(ldd "$bin_dir/$b")" || die "ldd $bin_dir/$b failed: not a dynamically linked binary?"
  deps+=$'\n'
done
missing="$(grep 'not found' <<<"$deps" || true)"
[ -z "$missing" ] || die "a shared library is missing:$(head -n 1 <<<"$missing")"
libs="$(awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$deps" | sort -u)"
[ -n "$libs" ] || die "ldd found no shared libraries: statically linked? (then drop this part)"
for lib in $libs; do
  mkdir -p "$out$(dirname "$lib")"
  cp -L "$lib" "$out$lib"
done
libc="$(grep '/libc\.so\.6$' <<<"$libs")" || die "the binaries do not link libc.so.6"
grep -q _nss_dns_gethostbyname4_r "$libc" ||
  die "$libc has no built-in NSS dns module (glibc < 2.34?): the image would need libnss_dns"

# The libraries' licences (glibc: LGPL, libgcc: GPL with the runtime exception) and
# the CA bundle's, from the Debian packages they came from.
if command -v dpkg-query >/dev/null 2>&1; then
  pkgs="ca-certificates"   # the bundle is generated, no package owns it
  for f in $libs; do
    # merged /usr: dpkg may know the file under /lib or under /usr/lib
    pkg="$(dpkg-query -S "$f" 2>/dev/null || dpkg-query -S "$(readlink -f "$f")" 2>/dev/null || true)"
    pkgs+=" ${pkg%%:*}"
  done
  for pkg in $pkgs; do
    if [ -n "$pkg" ] && [ -f "/usr/share/doc/$pkg/copyright" ]; then
      mkdir -p "$out/usr/share/doc/$pkg"
      cp "/usr/share/doc/$pkg/copyright" "$out/usr/share/doc/$pkg/copyright"
    fi
  done
fi

# Who runs it: the pods run as 65532:65532 (the chart's securityContext).
cat >"$out/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin
PASSWD
cat >"$out/etc/group" <<'GROUP'
root:x:0:
nonroot:x:65532:
GROUP
# /etc/hosts first (Kubernetes writes it), then cluster DNS from /etc/resolv.conf.
cat >"$out/etc/nsswitch.conf" <<'NSS'
passwd: files
group: files
hosts: files dns
NSS
# TLS to an external MongoDB (rustls-native-certs reads this bundle).
cp -L "$ca_bundle" "$out/etc/ssl/certs/ca-certificates.crt"
find "$out/etc" "$out/usr" -type f ! -path "$out/usr/local/bin/*" -exec chmod 0644 {} +
find "$out" -type d -exec chmod 0755 {} +

echo "$out"
