#!/usr/bin/env bash
# Builds the test image from busybox-static and pushes it to a registry:
#   tests/images/build.sh WORK_DIR REGISTRY_HOST:PORT
# Result: REGISTRY_HOST:PORT/busybox:1 (Cmd: sh; busybox applets as /bin/*; user app = 1000:1001,
# also in group web = 33) and busybox:hc, the same with a HEALTHCHECK (healthy once /tmp/healthy
# exists; interval 1 s, 3 retries). Plain HTTP push.
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
# busybox:hc: the same with a HEALTHCHECK (Docker's config extension, which umoci cannot set):
# healthy once /tmp/healthy exists, checked every second.
umoci config --image "$work/layout:busybox" --tag hc >/dev/null
python3 - "$work/layout" hc <<'PY'
import hashlib, json, os, sys
layout, tag = sys.argv[1], sys.argv[2]
def blob(d):
    return os.path.join(layout, "blobs", *d.split(":"))
def put(data):
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    with open(blob(d), "wb") as f:
        f.write(data)
    return d, len(data)
index = json.load(open(os.path.join(layout, "index.json")))
entry = next(m for m in index["manifests"] if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag)
manifest = json.load(open(blob(entry["digest"])))
config = json.load(open(blob(manifest["config"]["digest"])))
config.setdefault("config", {})["Healthcheck"] = {
    "Test": ["CMD-SHELL", "test -e /tmp/healthy"], "Interval": 1000000000, "Timeout": 10000000000, "Retries": 3}
manifest["config"]["digest"], manifest["config"]["size"] = put(json.dumps(config).encode())
entry["digest"], entry["size"] = put(json.dumps(manifest).encode())
json.dump(index, open(os.path.join(layout, "index.json"), "w"))
PY
skopeo copy --quiet --dest-tls-verify=false "oci:$work/layout:hc" "docker://$reg/busybox:hc"
echo "$reg/busybox:1"
