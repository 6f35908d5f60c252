// SPDX-License-Identifier: BSL-1.0
// qed-io's commands (read, write, aio_*, map, alloc, ...), run one line at
// a time against a session.
#pragma once

#include <string>

#include "qed_io/session.hpp"

namespace qed::tools::io {

/// Run one command line. Returns false when it failed (the session also
/// remembers the failure for the exit status).
bool execute(session& s, const std::string& line);

}  // namespace qed::tools::io
