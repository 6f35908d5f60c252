// SPDX-License-Identifier: BSL-1.0
#include "check/check.hpp"

#include <algorithm>
#include <cassert>

#include "table/co_io.hpp"

namespace qed::detail {
namespace {

// Write back the piece of L1 entries past the image size if repair changed it.
boost::asio::awaitable<void> store_if_changed(l1_pieces& piece, bool& changed, check_scan& scan) {
    if (changed)
        if (auto ec = co_await piece.store()) scan.io_error("cannot write repaired L1 table: " + ec.message());
    changed = false;
}

}  // namespace

boost::asio::awaitable<std::error_code> run_check(metadata& meta, check_options::repair mode, bool read_only,
                                                  check_result& out) {
    const geometry& g = meta.geo();
    const bool fix_any = mode != check_options::repair::none && !read_only;
    out = {};

    // The check reads tables from disk: first put there what memory holds.
    if (!read_only) {
        if (auto ec = co_await meta.sync_co(false)) {
            ++out.check_errors;
            out.messages.push_back("cannot write pending table updates: " + ec.message());
            co_return std::error_code{};
        }
    }
    meta.cache().clear_unused();  // tables may change under repair; nobody else holds any
    check_scan scan(meta.rules(), meta.hdr(), mode == check_options::repair::all && !read_only, out);

    // An L2 table (up to 1 GiB) is walked in pieces of at most 1 MiB, so
    // check holds the L1 entries in memory, the bitmap and one piece,
    // whatever the geometry. A piece is a whole number of write blocks
    // (io_align <= 1 MiB divides it), so a repaired piece is written back
    // alone. Power failing between two such writes leaves some invalid
    // entries cleared and the rest as they were: each is a state the next
    // check repairs the same way (clearing an invalid entry loses nothing
    // that could be read).
    table l2(std::min(g.table_entries, metadata::piece_entries));
    assert(g.table_entries % l2.size() == 0);  // both powers of two
    // Every L1 entry is checked, those past the image size too (nothing
    // looks them up, but a table they link still owns its clusters, and
    // QEMU's check walks them): l1_pieces reads them from disk a piece at a
    // time, and a repaired piece is written back before the next one is
    // read (power failing between pieces: as for the L2 pieces above).
    table& l1 = meta.l1();
    l1_pieces beyond(meta);
    bool l1_changed = false, beyond_changed = false, walked = true;
    for (std::uint32_t i = 0; i < g.table_entries; ++i) {
        const bool in_memory = i < l1.size();
        if (!in_memory && !beyond.holds(i)) {
            co_await store_if_changed(beyond, beyond_changed, scan);
            if (auto ec = co_await beyond.load(i)) {
                scan.io_error("cannot read L1 table: " + ec.message());
                walked = false;
                break;
            }
        }
        std::uint64_t& entry = in_memory ? l1[i] : beyond[i];
        if (entry == 0) continue;  // no table: nothing to judge (most entries of a large L1)
        if (!scan.visit_l1(i, entry, in_memory ? l1_changed : beyond_changed)) continue;
        const std::uint64_t off = entry;
        for (std::uint32_t base = 0; base < g.table_entries; base += l2.size()) {
            const std::uint64_t piece_off = off + std::uint64_t{base} * sizeof(std::uint64_t);
            if (meta.reads_as_zeros(piece_off, l2.byte_size())) continue;  // only zero entries
            if (auto ec = co_await co::read_table(meta.file(), piece_off, l2)) {
                scan.io_error("cannot read L2 table at " + hex_offset(off) + ": " + ec.message());
                break;
            }
            if (scan.visit_l2(off, base, l2))
                if (auto ec = co_await co::write_table(meta.file(), piece_off, l2, 0, l2.size(), meta.io_align()))
                    scan.io_error("cannot write repaired L2 table at " + hex_offset(off) + ": " + ec.message());
        }
    }
    if (walked) co_await store_if_changed(beyond, beyond_changed, scan);
    if (l1_changed)
        if (auto ec =
                co_await co::write_table(meta.file(), meta.hdr().l1_table_offset, l1, 0, l1.size(), meta.io_align()))
            scan.io_error("cannot write repaired L1 table: " + ec.message());

    // Leaks, only when every table could be read.
    if (!out.check_errors) {
        const bool fixed = meta.file().fixed_size();
        const std::uint64_t tail = scan.count_leaks(fixed);
        // On fixed-size storage (an NBD export) the free space starts after
        // the last used cluster; its old bytes stay.
        if (fixed && fix_any && out.corruptions == 0) meta.alloc().set_end(out.image_end_offset);
        // Leaked clusters at the end of the file can simply be cut off.
        if (fix_any && tail) {
            if (auto ec = co_await co::resize(meta.file(), out.image_end_offset)) {
                scan.io_error("cannot truncate leaked clusters: " + ec.message());
            } else {
                scan.leaks_cut(tail);
                meta.alloc().set_end(out.image_end_offset);
                meta.alloc().trimmed(true);
            }
        }
        scan.report_leaks();
    }
    if (fix_any) co_return co_await co::flush(meta.file());
    co_return std::error_code{};
}

}  // namespace qed::detail
