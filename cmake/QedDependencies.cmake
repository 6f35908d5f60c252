# Boost 1.81 (header-only: Asio, Container, Test), liburing and libnbd, from Debian.
find_package(Boost 1.81 REQUIRED)
find_package(Threads REQUIRED)
find_package(LibUring REQUIRED)
find_package(LibNbd REQUIRED)
