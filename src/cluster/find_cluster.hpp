// SPDX-License-Identifier: BSL-1.0
// Cluster lookup: where do the guest bytes at `pos` live?
//
// L1 entry -> L2 table (from the cache; the caller loads it on a miss) -> a
// run of clusters of one kind starting at `pos`. Runs never cross an L2
// table, so a request acts on one table at a time. Pure: answers from
// memory, no I/O.
#pragma once

#include <cstdint>
#include <system_error>

#include "table/metadata.hpp"

namespace qed::detail {

struct cluster_run {
    enum class kind {
        data,         ///< allocated clusters, contiguous in the file
        zero,         ///< zero clusters (L2 entry 1): read as zeros, hide the backing file
        unallocated,  ///< L2 entries 0: read from the backing file
        no_table,     ///< L1 entry 0: no L2 table for this range yet
    };
    kind what = kind::unallocated;
    std::uint64_t host_offset = 0;  ///< data: file offset of the run's first byte
    std::uint64_t length = 0;       ///< bytes from pos
};

struct lookup {
    std::error_code ec;       ///< invalid L1/L2 entry: the image is corrupt here
    bool need_table = false;  ///< the L2 table must be loaded first (metadata::load_l2)
    std::uint64_t table_offset = 0;
    cluster_run run;
};

/// Answer from memory. `held` is the caller's reference to an L2 table; it is
/// replaced by the table this lookup uses (kept so it can't be evicted).
lookup find_cluster(metadata& meta, l2_ref& held, std::uint64_t pos, std::uint64_t len);

}  // namespace qed::detail
