#!/usr/bin/env bash
# Makes the PyPI ROS 2 Jazzy wheels behave as a normal ament prefix. Idempotent. Usage: fixup_ros_wheels.sh VENV
# Why each fix is needed is measured in docs/toolchain.md.
set -euo pipefail
V="$(cd "$1" && pwd)"
PY="$V/bin/python"
PYVER="$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
SP="$V/lib/python$PYVER/site-packages"
PYINC="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
# 1. The wheels are built in single-RMW mode and ship no librmw_implementation.so, which r2r links.
ln -sf librmw_fastrtps_cpp.so "$V/lib/librmw_implementation.so"
# 2. The *__rosidl_generator_py.so libraries use libpython symbols without declaring libpython as needed, so a
#    non-Python program (our node) that loads them fails on undefined symbols.
for f in "$V"/lib/*__rosidl_generator_py.so; do
  readelf -d "$f" | grep -q "libpython$PYVER" || patchelf --add-needed "libpython$PYVER.so.1.0" "$f"
done
# 3. Exported CMake files name the wheel builder's interpreter prefix.
B="/opt/python/cp${PYVER/./}-cp${PYVER/./}"
{ grep -rl --null "$B" "$V/share" || true; } | xargs -0 -r sed -i \
  -e "s#$B/include/python$PYVER#$PYINC#g" -e "s#$B/lib/python$PYVER/site-packages#$SP#g" -e "s#$B#$V#g"
