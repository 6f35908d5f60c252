// SPDX-License-Identifier: BSL-1.0
// The consistency check's judgement, apart from its I/O (check/check.cpp
// reads the tables and writes the repairs): fed every L1 entry and every
// piece of every L2 table in order, it marks each referenced cluster in a
// bitmap indexed by offset / cluster_size and decides:
//   corruptions: table or data offsets misaligned, inside the header or the
//                L1 table, or past the end of the file (tables must fit
//                whole); clusters referenced twice (never repairable);
//   leaks:       clusters after the header that nothing references;
//   allocated / total / fragmented clusters.
// Repair of corruptions clears invalid offsets (their data is unreachable
// anyway); repair of leaks cuts leaked clusters off the end of the file.
// Pure: no I/O.
#pragma once

#include <string>
#include <vector>

#include "format/layout.hpp"
#include "qed/image.hpp"
#include "table/table.hpp"

namespace qed::detail {

/// What a finished check says about the image (the image decides what that
/// means for its NEED_CHECK bit).
enum class check_verdict {
    consistent,  ///< every table read, no corruption left: the image can be trusted
    corrupt,     ///< corruption that repair did not (or could not) fix
    unknown,     ///< some table could not be read or written: nothing can be said
};
check_verdict verdict_of(const check_result& r) noexcept;

/// An offset as the check's messages write it ("0x10000").
std::string hex_offset(std::uint64_t v);

/// Ownership: a value of one check run; writes into the result it is given.
class check_scan {
public:
    /// `rules` hold the end of the file as the check found it.
    check_scan(const layout& rules, const header& h, bool fix_corruptions, check_result& out);

    /// L1 entry `i` holding `entry`: true when its table is to be walked. A
    /// corrupt entry is reported and, when repairing, cleared in place
    /// (`changed` is set then).
    bool visit_l1(std::uint32_t i, std::uint64_t& entry, bool& changed);
    /// `piece` holds entries [base, base + piece.size()) of the L2 table at
    /// `table_off`, as read: true when repair changed some of them.
    bool visit_l2(std::uint64_t table_off, std::uint32_t base, table& piece);
    /// A table could not be read or a repair not written: the check can't
    /// vouch for the image.
    void io_error(const std::string& what);

    /// After the walk, when every table was read: count the leaks (on
    /// fixed-size storage what follows the last used cluster is free space,
    /// not leaks) and set image_end_offset. Returns how many leaked clusters
    /// lie at the end of the file, where cutting the file frees them.
    std::uint64_t count_leaks(bool fixed_size);
    /// Those `n` clusters were cut off the end of the file.
    void leaks_cut(std::uint64_t n);
    /// One line for the leaks that remain (once, after any cut).
    void report_leaks();

private:
    void note(std::string line);

    class bitmap {
    public:
        explicit bitmap(std::uint64_t n) : bits_((n + 63) / 64), n_(n) {}
        /// Mark n clusters from `first`; returns how many were already marked.
        std::uint64_t mark(std::uint64_t first, std::uint64_t n);
        bool test(std::uint64_t k) const { return (bits_[k / 64] >> (k % 64)) & 1; }
        std::uint64_t size() const { return n_; }

    private:
        std::vector<std::uint64_t> bits_;
        std::uint64_t n_;
    };

    layout rules_;
    header header_;
    bool fix_;
    check_result& out_;
    bitmap used_;
    std::uint64_t prev_host_ = 0;
};

}  // namespace qed::detail
