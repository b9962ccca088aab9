#!/usr/bin/env bash
# Builds the container images the node agent's tests and `rk bench pods` use,
# without any registry: Debian's static busybox is copied into a root file
# system and turned into images with `docker import`.
#   rk-test/busybox:1  busybox with every applet on PATH (sh, sleep, nc, wget, httpd, ...)
#   rk-test/web:1      the same, serving /www over HTTP on port 80 by default
# Images that already exist are kept; pass --force to rebuild them.
set -euo pipefail

force=false
[[ "${1:-}" == "--force" ]] && force=true

have_image() { ! $force && docker image inspect "$1" >/dev/null 2>&1; }

if have_image rk-test/busybox:1 && have_image rk-test/web:1; then
  exit 0
fi

busybox=/bin/busybox
if ! [[ -x $busybox ]] || ! file -L "$busybox" 2>/dev/null | grep -q 'statically linked'; then
  if ! dpkg -s busybox-static >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq busybox-static >/dev/null || { apt-get update -qq && apt-get install -y -qq busybox-static >/dev/null; }
  fi
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
echo "test images: rk-test/busybox:1 rk-test/web:1"
