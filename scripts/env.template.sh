# (body of .deps/env.sh; INSPECT3D_ROOT and INSPECT3D_SYSTEM_ROS_SETUP are set above by setup.sh)
_venv="$INSPECT3D_ROOT/.deps/venv"
_overlay="$INSPECT3D_ROOT/.deps/ros_ws/install"
if [ -n "$INSPECT3D_SYSTEM_ROS_SETUP" ]; then
  # A real ROS 2 Jazzy install: its own setup script, then our venv for the Python tools.
  # shellcheck disable=SC1090
  source "$INSPECT3D_SYSTEM_ROS_SETUP"
  export VIRTUAL_ENV="$_venv" PATH="$_venv/bin:$PATH"
else
  # The venv holding the ROS 2 wheels is the ROS prefix: lib/, include/ and share/ sit in it.
  export VIRTUAL_ENV="$_venv" PATH="$_venv/bin:$PATH"
  _pyver="$("$_venv/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
  _site="$_venv/lib/python$_pyver/site-packages"
  export ROS_DISTRO=jazzy ROS_VERSION=2 ROS_PYTHON_VERSION=3
  export AMENT_PREFIX_PATH="$_venv" CMAKE_PREFIX_PATH="$_venv"
  # auditwheel moved the wheels' own dependencies into site-packages/ros_*.libs, which their rpaths miss once
  # the libraries sit in $venv/lib; libpython must be findable for the patched generator libraries.
  _ld="$_venv/lib"
  for _d in "$_site"/ros_*.libs; do [ -d "$_d" ] && _ld="$_ld:$_d"; done
  _ld="$_ld:$("$_venv/bin/python" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR") or "")')"
  export LD_LIBRARY_PATH="$_ld${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export PYTHONPATH="$_site${PYTHONPATH:+:$PYTHONPATH}"
  export RMW_IMPLEMENTATION="${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"
  # Stops the wheels' bootstrap .pth from re-executing Python.
  export _ROS_WHEELS_BOOTSTRAP_COMPLETE=1
  unset _pyver _site _ld _d
fi
if [ -z "${INSPECT3D_NO_OVERLAY:-}" ] && [ -d "$_overlay" ]; then
  # The interface package, as a sourced colcon overlay would add it.
  export AMENT_PREFIX_PATH="$_overlay:$AMENT_PREFIX_PATH"
  export CMAKE_PREFIX_PATH="$_overlay${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
  export LD_LIBRARY_PATH="$_overlay/lib:$LD_LIBRARY_PATH"
  for _d in "$_overlay"/lib/python3*/site-packages; do [ -d "$_d" ] && export PYTHONPATH="$_d:$PYTHONPATH"; done
  unset _d
fi
# DDS stays on this host unless the user says otherwise.
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
# Fast DDS transports that carry whole depth frames (config/fastdds.xml says why), unless the user has a profile.
export FASTRTPS_DEFAULT_PROFILES_FILE="${FASTRTPS_DEFAULT_PROFILES_FILE:-$INSPECT3D_ROOT/config/fastdds.xml}"
# r2r generates bindings only for these packages: the list decides r2r's build time.
export IDL_PACKAGE_FILTER="${IDL_PACKAGE_FILTER:-std_msgs;sensor_msgs;builtin_interfaces;action_msgs;unique_identifier_msgs;geometry_msgs;diagnostic_msgs;visualization_msgs;rcl_interfaces;inspect3d_msgs}"
unset _venv _overlay
