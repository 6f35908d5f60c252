// SPDX-License-Identifier: BSL-1.0
// Consistency check and repair.
//
// Walks L1 and every L2 table and marks each referenced cluster in a bitmap
// indexed by offset / cluster_size. Reports:
//   corruptions: table or data offsets misaligned, inside the header, or past
//                the end of the file (tables must fit whole); clusters
//                referenced twice (never repairable);
//   leaks:       clusters after the header that nothing references;
//   allocated / total / fragmented clusters.
// Repair (`all`) clears invalid offsets (their data is unreachable anyway),
// writes the fixed tables and flushes. Both repair modes cut leaked clusters
// off the end of the file. Only when no corruption remains is NEED_CHECK
// cleared; otherwise the image stays marked (and close won't clear it).
#pragma once

#include "qed/image.hpp"

#include <boost/asio/awaitable.hpp>

namespace qed::detail {

class qed_image;

/// Run a check on an image nobody else is using (open, or inside the
/// exclusive gate).
boost::asio::awaitable<std::error_code> run_check(qed_image& img, check_options::repair mode, check_result& out);

}  // namespace qed::detail
