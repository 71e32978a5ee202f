#!/usr/bin/env bash
# Builds the test image from busybox-static and pushes it to a registry:
#   tests/images/build.sh WORK_DIR REGISTRY_HOST:PORT
# Result: REGISTRY_HOST:PORT/busybox:1 (Cmd: sh; busybox applets as /bin/*; user app = 1000:1001,
# also in group web = 33). Plain HTTP push.
# Idempotent. Needs umoci, skopeo and busybox-static.
set -euo pipefail
work=$1
reg=$2
for tool in umoci skopeo busybox; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install umoci skopeo busybox-static" >&2; exit 1; }
done
bb=$(command -v busybox)
rm -rf "$work/layout" "$work/bundle"
mkdir -p "$work"
umoci init --layout "$work/layout"
umoci new --image "$work/layout:busybox"
umoci unpack --image "$work/layout:busybox" "$work/bundle" >/dev/null
mkdir -p "$work/bundle/rootfs/bin" "$work/bundle/rootfs/tmp" "$work/bundle/rootfs/etc"
cp "$bb" "$work/bundle/rootfs/bin/busybox"
for app in sh echo sleep cat ls hostname wget nc httpd true false env id ps printf test mkdir touch rm trap kill seq grep head tail \
    date wc sed awk tr cut sort uniq tee xargs find stat ln cp mv chmod uname expr timeout nslookup ip ping; do
  ln -sf busybox "$work/bundle/rootfs/bin/$app"
done
printf 'root:x:0:0:root:/:/bin/sh\napp:x:1000:1001::/tmp:/bin/sh\n' >"$work/bundle/rootfs/etc/passwd"
printf 'root:x:0:\napp:x:1001:\nweb:x:33:app\n' >"$work/bundle/rootfs/etc/group"
umoci repack --image "$work/layout:busybox" "$work/bundle" >/dev/null
umoci config --image "$work/layout:busybox" --config.cmd sh --config.env PATH=/bin --config.workingdir / >/dev/null
skopeo copy --quiet --dest-tls-verify=false "oci:$work/layout:busybox" "docker://$reg/busybox:1"
echo "$reg/busybox:1"
