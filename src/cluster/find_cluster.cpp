// SPDX-License-Identifier: BSL-1.0
#include "cluster/find_cluster.hpp"

#include <algorithm>

#include "qed/error.hpp"

namespace qed::detail {

lookup find_cluster(metadata& meta, l2_ref& held, std::uint64_t pos, std::uint64_t len) {
    const geometry& g = meta.geo();
    const layout rules = meta.rules();
    lookup r;
    // Stop at the end of this L2 table's range.
    const std::uint64_t span = g.l2_span();
    len = std::min(len, span - (pos & (span - 1)));

    const std::uint64_t l2_offset = meta.l1()[g.l1_index(pos)];
    if (l2_offset == 0) {
        r.run = {cluster_run::kind::no_table, 0, len};
        return r;
    }
    if (!rules.valid_l2_offset(l2_offset)) {
        r.ec = errc::invalid_l2_offset;
        return r;
    }
    if (!held || held->offset != l2_offset) {
        held = meta.cache().find(l2_offset);
    }
    if (!held || !held->loaded) {
        held.reset();
        r.need_table = true;
        r.table_offset = l2_offset;
        return r;
    }

    const table& t = held->t;
    const std::uint32_t first = g.l2_index(pos);
    const std::uint64_t in_cluster = g.offset_in_cluster(pos);
    const std::uint64_t n = g.clusters_for(in_cluster + len);  // never past the table: len was clipped
    const std::uint64_t e0 = t[first];
    std::uint64_t count = 1;
    if (e0 == 0 || e0 == zero_cluster_entry) {
        while (count < n && t[first + count] == e0) ++count;
        r.run.what = e0 == 0 ? cluster_run::kind::unallocated : cluster_run::kind::zero;
    } else {
        if (!rules.valid_data_offset(e0)) {
            r.ec = errc::invalid_cluster_offset;
            return r;
        }
        // Contiguous in the file; an invalid entry ends the run (the next
        // lookup reports it).
        while (count < n && t[first + count] == e0 + count * g.cluster_size &&
               rules.valid_data_offset(t[first + count]))
            ++count;
        r.run.what = cluster_run::kind::data;
        r.run.host_offset = e0 + in_cluster;
    }
    r.run.length = std::min(len, count * g.cluster_size - in_cluster);
    return r;
}

}  // namespace qed::detail
