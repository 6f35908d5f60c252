# SPDX-License-Identifier: BSL-1.0
# Finds libssh (Debian: libssh-dev) and defines LibSsh::LibSsh.
find_path(LIBSSH_INCLUDE_DIR NAMES libssh/sftp.h)
find_library(LIBSSH_LIBRARY NAMES ssh)
include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(LibSsh REQUIRED_VARS LIBSSH_LIBRARY LIBSSH_INCLUDE_DIR)
if(LibSsh_FOUND AND NOT TARGET LibSsh::LibSsh)
  add_library(LibSsh::LibSsh UNKNOWN IMPORTED)
  set_target_properties(LibSsh::LibSsh PROPERTIES IMPORTED_LOCATION "${LIBSSH_LIBRARY}"
                                                  INTERFACE_INCLUDE_DIRECTORIES "${LIBSSH_INCLUDE_DIR}")
endif()
mark_as_advanced(LIBSSH_INCLUDE_DIR LIBSSH_LIBRARY)
