// SPDX-License-Identifier: BSL-1.0
// Consistency check and repair: the I/O around check/scan.hpp. Reads every
// table (those linked from L1 entries past the image size too), writes back
// what repair changed, cuts leaked clusters off the end of the file, and
// flushes. Whether NEED_CHECK may then be cleared is the image's decision
// (check_verdict): the check only reports.
#pragma once

#include <boost/asio/awaitable.hpp>

#include "check/scan.hpp"
#include "table/metadata.hpp"

namespace qed::detail {

/// Check (and, unless `mode` is none, repair) the image whose metadata is
/// `meta`; nobody else may be using it (open, or inside the image's
/// exclusive gate). `read_only`: nothing is written. Problems the check
/// finds, I/O errors included, are findings in `out`; the returned error is
/// only for failing to finish the repair's final flush.
boost::asio::awaitable<std::error_code> run_check(metadata& meta, check_options::repair mode, bool read_only,
                                                  check_result& out);

}  // namespace qed::detail
