// SPDX-License-Identifier: BSL-1.0
// qed-nbd -L: list a server's exports as a client, in qemu-nbd -L's format,
// through libnbd.
#pragma once

#include <string>

namespace qed::nbd {

/// Connect to `socket_path` (non-empty) or `host`:`port`, list the exports
/// with their details on stdout. Returns the process exit status; errors
/// go to stderr as one line.
int list_exports(const std::string& host, unsigned port, const std::string& socket_path);

}  // namespace qed::nbd
