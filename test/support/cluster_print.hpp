// SPDX-License-Identifier: BSL-1.0
// How Boost.Test prints the cluster layer's values in failed assertions.
#pragma once

#include <ostream>

#include "cluster/find_cluster.hpp"

namespace qed::detail {

inline std::ostream& operator<<(std::ostream& os, cluster_run::kind k) {
    switch (k) {
        case cluster_run::kind::data:
            return os << "data";
        case cluster_run::kind::zero:
            return os << "zero";
        case cluster_run::kind::unallocated:
            return os << "unallocated";
        case cluster_run::kind::no_table:
            return os << "no_table";
    }
    return os << "?";
}

}  // namespace qed::detail
