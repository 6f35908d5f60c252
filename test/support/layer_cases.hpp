// SPDX-License-Identifier: BSL-1.0
// What the per-layer tests (below qed::image) share: the geometries their
// data-driven cases run across, and a completion check.
#pragma once

#include <cstdint>
#include <optional>
#include <ostream>
#include <system_error>

namespace qed::test {

/// One geometry of a data-driven case.
struct geo_case {
    std::uint32_t cluster_size;
    std::uint32_t table_size;
};
inline std::ostream& operator<<(std::ostream& os, const geo_case& c) {
    return os << "cluster " << c.cluster_size << " table " << c.table_size;
}

/// The operation completed, without error.
inline bool succeeded(const std::optional<std::error_code>& r) {
    return r && !*r;
}

}  // namespace qed::test
