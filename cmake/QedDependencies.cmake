# SPDX-License-Identifier: BSL-1.0
# Boost 1.81 (header-only: Asio, Container, Test), liburing, libnbd and librbd/librados and libssh, from Debian.
find_package(Boost 1.81 REQUIRED)
find_package(Threads REQUIRED)
find_package(LibUring REQUIRED)
find_package(LibNbd REQUIRED)
find_package(LibRbd REQUIRED)
find_package(LibSsh REQUIRED)
