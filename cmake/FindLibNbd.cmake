# SPDX-License-Identifier: BSL-1.0
# Finds libnbd (Debian: libnbd-dev) and defines LibNbd::LibNbd.
find_path(LIBNBD_INCLUDE_DIR NAMES libnbd.h)
find_library(LIBNBD_LIBRARY NAMES nbd)
include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(LibNbd REQUIRED_VARS LIBNBD_LIBRARY LIBNBD_INCLUDE_DIR)
if(LibNbd_FOUND AND NOT TARGET LibNbd::LibNbd)
  add_library(LibNbd::LibNbd UNKNOWN IMPORTED)
  set_target_properties(LibNbd::LibNbd PROPERTIES IMPORTED_LOCATION "${LIBNBD_LIBRARY}"
                                                  INTERFACE_INCLUDE_DIRECTORIES "${LIBNBD_INCLUDE_DIR}")
endif()
mark_as_advanced(LIBNBD_INCLUDE_DIR LIBNBD_LIBRARY)
