# SPDX-License-Identifier: BSL-1.0
# Finds librbd and librados (Debian: librbd-dev, librados-dev) and defines
# LibRbd::LibRbd (both libraries).
find_path(LIBRBD_INCLUDE_DIR NAMES rbd/librbd.h)
find_library(LIBRBD_LIBRARY NAMES rbd)
find_library(LIBRADOS_LIBRARY NAMES rados)
include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(LibRbd REQUIRED_VARS LIBRBD_LIBRARY LIBRADOS_LIBRARY LIBRBD_INCLUDE_DIR)
if(LibRbd_FOUND AND NOT TARGET LibRbd::LibRbd)
  add_library(LibRbd::LibRbd UNKNOWN IMPORTED)
  set_target_properties(LibRbd::LibRbd PROPERTIES IMPORTED_LOCATION "${LIBRBD_LIBRARY}"
                                                  INTERFACE_INCLUDE_DIRECTORIES "${LIBRBD_INCLUDE_DIR}"
                                                  INTERFACE_LINK_LIBRARIES "${LIBRADOS_LIBRARY}")
endif()
mark_as_advanced(LIBRBD_INCLUDE_DIR LIBRBD_LIBRARY LIBRADOS_LIBRARY)
