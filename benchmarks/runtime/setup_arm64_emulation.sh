#!/usr/bin/env bash
# Build the aarch64 emulation kit used by `osteo-edge bench --target raspberrypi` without --host.
#
#   bash benchmarks/runtime/setup_arm64_emulation.sh [KIT_DIR]     (default ~/.cache/osteo-edge/arm64-emu)
#
# The recipe measured in TOOLCHAIN.md, on Debian bookworm, as root:
#  - qemu-user 10 (statically linked) from bookworm-backports (qemu 7.2 segfaults in `import onnxruntime`),
#    downloaded with apt-get download and unpacked with dpkg -x: nothing installed system-wide;
#  - an arm64 CPython 3.11 sysroot: the arm64 .debs of python3.11-minimal, its libraries and their
#    dependencies, unpacked with dpkg -x (needs `dpkg --add-architecture arm64` + apt-get update);
#  - the runtime's aarch64 wheels (pip download --platform manylinux_2_27_aarch64 ...: without that
#    tag pip silently picks ai-edge-litert 1.4), installed with pip --target into site/.
# The backports suite is added with the same mirror URIs the machine's Debian sources already use.
set -euo pipefail
KIT="${1:-$HOME/.cache/osteo-edge/arm64-emu}"
PY="${PYTHON:-$(cd "$(dirname "$0")/../.." && pwd)/.venv/bin/python}"
mkdir -p "$KIT/debs" "$KIT/wheels"
KIT="$(cd "$KIT" && pwd)"

src=/etc/apt/sources.list.d/debian.sources
if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
  uris=$(awk '/^URIs:/ && !/security/ {print $2; exit}' "$src")
  printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$uris" \
    > /etc/apt/sources.list.d/osteo-edge-backports.sources
fi
dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
apt-get update -qq

cd "$KIT/debs"
if [ ! -x "$KIT/qemu-aarch64" ]; then
  # In qemu 10 the static binaries are in qemu-user; qemu-user-static only holds symlinks to them.
  apt-get download -q -t bookworm-backports qemu-user >/dev/null
  mkdir -p "$KIT/qemu" && dpkg -x qemu-user_*.deb "$KIT/qemu"
  cp -L "$KIT/qemu/usr/bin/qemu-aarch64" "$KIT/qemu-aarch64"
fi
"$KIT/qemu-aarch64" --version | head -1

if [ ! -x "$KIT/sysroot/usr/bin/python3.11" ]; then
  pkgs="python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 libstdc++6 libgcc-s1 libgomp1"
  deps=$(for p in $pkgs; do apt-cache depends "$p:arm64" 2>/dev/null | awk '/Depends:/ {print $2}' | grep -v '^<' ; done | sed 's/:arm64$//' | sort -u)
  for p in $pkgs $deps; do apt-get download -q "$p:arm64" >/dev/null 2>&1 || echo "skip $p"; done
  mkdir -p "$KIT/sysroot"
  for d in ./*_arm64.deb; do dpkg -x "$d" "$KIT/sysroot"; done
fi
QEMU_LD_PREFIX="$KIT/sysroot" "$KIT/qemu-aarch64" "$KIT/sysroot/usr/bin/python3.11" -c "import platform; print('arm64 python', platform.python_version(), platform.machine())"

if [ ! -d "$KIT/site/onnxruntime" ]; then
  plat="--platform manylinux_2_27_aarch64 --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 --platform manylinux_2_28_aarch64"
  "$PY" -m pip download -q --only-binary=:all: --python-version 3.11 $plat -d "$KIT/wheels" \
    numpy pillow onnxruntime "ai-edge-litert>=2.0" pydicom typer rich
  "$PY" -m pip install -q --no-index --find-links "$KIT/wheels" --target "$KIT/site" --only-binary=:all: \
    --python-version 3.11 $plat numpy pillow onnxruntime "ai-edge-litert>=2.0" pydicom typer rich
fi
echo "kit ready: $KIT"
