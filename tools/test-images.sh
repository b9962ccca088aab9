#!/usr/bin/env bash
# Builds the container images the node agent's tests and `rk bench pods` use,
# without any registry: Debian's static busybox is copied into a root file
# system and turned into images with `docker import`.
#   rk-test/busybox:1  busybox with every applet on PATH (sh, sleep, nc, wget, httpd, ...)
#   rk-test/web:1      the same, serving /www over HTTP on port 80 by default
#   rk-test/curl:1     busybox plus the host's curl and its libraries (busybox wget's
#                      TLS sends no signature_algorithms, which rustls servers require)
# Images that already exist are kept; pass --force to rebuild them.
set -euo pipefail

force=false
[[ "${1:-}" == "--force" ]] && force=true

have_image() { ! $force && docker image inspect "$1" >/dev/null 2>&1; }

if have_image rk-test/busybox:1 && have_image rk-test/web:1 && have_image rk-test/curl:1; then
  exit 0
fi

busybox=/bin/busybox
if ! [[ -x $busybox ]] || ! file -L "$busybox" 2>/dev/null | grep -q 'statically linked'; then
  if ! dpkg -s busybox-static >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq busybox-static >/dev/null || { apt-get update -qq && apt-get install -y -qq busybox-static >/dev/null; }
  fi
fi

if ! command -v curl >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl >/dev/null; }
fi

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,etc,tmp,www,root,proc,sys,dev,var/run}
chmod 1777 "$root/tmp"
cp "$busybox" "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
  [[ "$applet" == busybox ]] || ln -sf busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
echo 'hello from rk-test/web' >"$root/www/index.html"

tar -C "$root" --numeric-owner -c . | docker import \
  --change 'ENV PATH=/bin' --change 'CMD ["sh"]' - rk-test/busybox:1 >/dev/null
tar -C "$root" --numeric-owner -c . | docker import \
  --change 'ENV PATH=/bin' --change 'EXPOSE 80' --change 'CMD ["httpd", "-f", "-v", "-p", "80", "-h", "/www"]' - rk-test/web:1 >/dev/null
curl_bin=$(command -v curl)
cp -L "$curl_bin" "$root/bin/curl"
for lib in $(ldd "$curl_bin" | grep -o '/[^ ]*'); do
  cp -L --parents "$lib" "$root"
done
tar -C "$root" --numeric-owner -c . | docker import \
  --change 'ENV PATH=/bin' --change 'CMD ["sh"]' - rk-test/curl:1 >/dev/null
echo "test images: rk-test/busybox:1 rk-test/web:1 rk-test/curl:1"
