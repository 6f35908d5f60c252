// SPDX-License-Identifier: BSL-1.0
// Where new clusters go. QED has no free list: new clusters (data and L2
// tables) are taken at the end of the used part of the file, which only
// grows -- except that a batch that failed before anything linked its space
// gives it back, and check/repair and make_empty move the end down to what
// the tables reference.
#pragma once

#include <algorithm>
#include <cassert>
#include <cstdint>

namespace qed::detail {

/// Ownership: a value inside the image's metadata; executor only.
class cluster_allocator {
public:
    /// Start from a file whose used part ends at `end` (cluster aligned) and
    /// which holds bytes up to `physical`.
    void reset(std::uint64_t end, std::uint64_t physical) noexcept {
        end_ = end;
        physical_ = physical;
        tail_garbage_ = false;
    }

    /// Where the next cluster goes (cluster aligned). Everything below is
    /// either referenced, leaked, or the header and L1 table.
    std::uint64_t end() const noexcept { return end_; }
    /// How far the file may hold bytes (at least end()). Bytes at or past it
    /// read as zeros, so new clusters there need no zero fill. On a
    /// fixed-size file (an NBD export) that is its capacity.
    std::uint64_t physical_size() const noexcept { return physical_; }
    /// Unreferenced bytes past end() may hold what a failed operation left:
    /// close cuts the file back to end().
    bool tail_garbage() const noexcept { return tail_garbage_; }

    /// Take `bytes` (whole clusters) at the end; returns where they start.
    std::uint64_t take(std::uint64_t bytes) noexcept {
        const std::uint64_t at = end_;
        end_ += bytes;
        return at;
    }
    /// Writes up to `to` were issued: from now on they may have landed.
    void may_hold_up_to(std::uint64_t to) noexcept { physical_ = std::max(physical_, to); }
    /// The tables reference nothing at or past `end` (found by a scan of
    /// the tables: open on fixed-size storage, repair).
    void set_end(std::uint64_t end) noexcept { end_ = end; }
    /// Nothing links [end, end()) any more (a failed batch gives back what
    /// it took; make_empty unlinks everything): new clusters go from `end`,
    /// over bytes that may hold anything until the file is cut there.
    void give_back(std::uint64_t end) noexcept {
        assert(end <= end_);  // only ever moves down
        end_ = end;
        tail_garbage_ = true;
    }
    /// The file was cut at end(): nothing is left past it -- and, where the
    /// storage really dropped those bytes (`gone`; an export keeps them), the
    /// file holds nothing there either.
    void trimmed(bool gone) noexcept {
        tail_garbage_ = false;
        if (gone) physical_ = end_;
    }

private:
    std::uint64_t end_ = 0;
    std::uint64_t physical_ = 0;
    bool tail_garbage_ = false;
};

}  // namespace qed::detail
