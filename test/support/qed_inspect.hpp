// SPDX-License-Identifier: BSL-1.0
// An independent look at a QED image's bytes, for tests: parse the header,
// L1 and every L2 table straight from the bytes (no library code beyond
// decode()), and report what is wrong with the layout. Used to cross-check
// the library's own check, and to craft malformed images.
#pragma once

#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "qed/block_file.hpp"
#include "qed/format.hpp"

namespace qed::test {

inline std::vector<std::uint8_t> bytes_of(const memory_storage& st) {
    std::vector<std::uint8_t> out(static_cast<std::size_t>(st.size()));
    st.read(0, {reinterpret_cast<std::byte*>(out.data()), out.size()});
    return out;
}

inline std::uint64_t get_u64(const std::vector<std::uint8_t>& b, std::uint64_t off) {
    std::uint64_t v = 0;
    for (int i = 7; i >= 0; --i) v = (v << 8) | (off + i < b.size() ? b[off + i] : 0);
    return v;
}
inline void put_u64(std::vector<std::uint8_t>& b, std::uint64_t off, std::uint64_t v) {
    if (b.size() < off + 8) b.resize(off + 8, 0);
    for (int i = 0; i < 8; ++i) b[off + i] = static_cast<std::uint8_t>(v >> (8 * i));
}
inline void put_u32(std::vector<std::uint8_t>& b, std::uint64_t off, std::uint32_t v) {
    if (b.size() < off + 4) b.resize(off + 4, 0);
    for (int i = 0; i < 4; ++i) b[off + i] = static_cast<std::uint8_t>(v >> (8 * i));
}

inline header header_of(const std::vector<std::uint8_t>& b) {
    std::array<std::byte, header_struct_size> h{};
    std::memcpy(h.data(), b.data(), std::min<std::size_t>(b.size(), header_struct_size));
    return decode(h);
}

/// What an independent walk of the tables finds.
struct layout_report {
    bool header_ok = false;
    std::uint64_t invalid_l1_entries = 0;  ///< misaligned, in the header/L1, or table past EOF
    std::uint64_t invalid_l2_entries = 0;  ///< misaligned, in the header/L1/an L2 table, or past EOF
    std::uint64_t double_references = 0;   ///< a cluster used by two tables/entries
    std::uint64_t data_clusters = 0;
    std::uint64_t l2_tables = 0;
    std::vector<std::string> problems;
    bool clean() const { return header_ok && !invalid_l1_entries && !invalid_l2_entries && !double_references; }
};

/// Walk the image's tables from its bytes. Offsets count as valid when
/// cluster aligned, past the header, and (whole tables / clusters) inside
/// the file rounded down to whole clusters, as the spec's check describes.
inline layout_report inspect_layout(const std::vector<std::uint8_t>& b) {
    layout_report r;
    if (b.size() < header_struct_size) {
        r.problems.push_back("file shorter than the header");
        return r;
    }
    const header h = header_of(b);
    if (validate(h, b.size())) {
        r.problems.push_back("header does not validate");
        return r;
    }
    r.header_ok = true;
    const geometry g(h);
    const std::uint64_t end = g.start_of_cluster(b.size());
    std::map<std::uint64_t, std::string> owner;  // cluster index -> what uses it
    auto claim = [&](std::uint64_t off, std::uint64_t n, const std::string& what) {
        bool twice = false;
        for (std::uint64_t k = off / g.cluster_size; k < off / g.cluster_size + n; ++k) {
            auto [it, fresh] = owner.emplace(k, what);
            if (!fresh) {
                r.problems.push_back(what + " shares cluster " + std::to_string(k) + " with " + it->second);
                twice = true;
            }
        }
        if (twice) ++r.double_references;
        return !twice;
    };
    claim(h.l1_table_offset, g.table_size, "L1 table");
    for (std::uint32_t i = 0; i < g.table_entries; ++i) {
        const std::uint64_t l2 = get_u64(b, h.l1_table_offset + 8ull * i);
        if (l2 == 0) continue;
        if (!g.valid_table_offset(l2, end)) {
            ++r.invalid_l1_entries;
            r.problems.push_back("L1[" + std::to_string(i) + "] = " + std::to_string(l2) + " is invalid");
            continue;
        }
        if (!claim(l2, g.table_size, "L2 table of L1[" + std::to_string(i) + "]")) continue;
        ++r.l2_tables;
        for (std::uint32_t j = 0; j < g.table_entries; ++j) {
            const std::uint64_t e = get_u64(b, l2 + 8ull * j);
            if (e == 0 || e == zero_cluster_entry) continue;
            if (!g.valid_cluster_offset(e, end)) {
                ++r.invalid_l2_entries;
                r.problems.push_back("L2[" + std::to_string(i) + "][" + std::to_string(j) + "] = " + std::to_string(e) +
                                     " is invalid");
                continue;
            }
            if (claim(e, 1, "data of L2[" + std::to_string(i) + "][" + std::to_string(j) + "]")) ++r.data_clusters;
        }
    }
    return r;
}

}  // namespace qed::test
