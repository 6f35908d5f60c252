// SPDX-License-Identifier: BSL-1.0
#include "check/check.hpp"

#include "table/co_io.hpp"
#include "image/qed_image.hpp"

#include <algorithm>
#include <cassert>
#include <cstdio>

namespace qed::detail {
namespace {

constexpr std::size_t max_messages = 100;

std::string hex(std::uint64_t v) {
    char buf[24];
    std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
    return buf;
}

class cluster_bitmap {
public:
    explicit cluster_bitmap(std::uint64_t n) : bits_((n + 63) / 64), n_(n) {}
    /// Mark n clusters from `first`; returns how many were already marked.
    std::uint64_t mark(std::uint64_t first, std::uint64_t n) {
        std::uint64_t twice = 0;
        for (std::uint64_t k = first; k < first + n && k < n_; ++k) {
            auto& w = bits_[k / 64];
            const std::uint64_t bit = std::uint64_t{1} << (k % 64);
            if (w & bit) ++twice;
            w |= bit;
        }
        return twice;
    }
    bool test(std::uint64_t k) const { return (bits_[k / 64] >> (k % 64)) & 1; }
    std::uint64_t size() const { return n_; }

private:
    std::vector<std::uint64_t> bits_;
    std::uint64_t n_;
};

// Write back a repaired piece of the L1 entries past the image size.
boost::asio::awaitable<void> write_l1_piece(qed_image& img, std::uint32_t first, const table& piece,
                                            check_result& out) {
    const std::uint64_t at = img.header_.l1_table_offset + std::uint64_t{first} * sizeof(std::uint64_t);
    if (auto ec = co_await co::write_table(*img.file_, at, piece, 0, piece.size(), img.io_align_)) {
        ++out.check_errors;
        if (out.messages.size() < max_messages)
            out.messages.push_back("cannot write repaired L1 table: " + ec.message());
    }
}

}  // namespace

boost::asio::awaitable<std::error_code> run_check(qed_image& img, check_options::repair mode, check_result& out) {
    const geometry& g = img.geo_;
    const bool fix_corruptions = mode == check_options::repair::all;
    const bool fix_any = mode != check_options::repair::none;
    out = {};
    auto note = [&out](std::string line) {
        if (out.messages.size() < max_messages) out.messages.push_back(std::move(line));
    };

    // The check reads tables from disk: first put there what memory holds.
    if (!img.options_.read_only) {
        if (auto ec = co_await img.sync_co(false)) {
            ++out.check_errors;
            note("cannot write pending table updates: " + ec.message());
            co_return std::error_code{};
        }
    }
    img.cache_.clear_unused();  // tables may change under repair; nobody else holds any
    const std::uint64_t end = img.file_end_;
    cluster_bitmap used(end >> g.cluster_bits);
    out.total_clusters = g.clusters_for(img.header_.image_size);

    // The header's clusters are implicitly in use (the leak scan skips them).
    if (used.mark(img.header_.l1_table_offset >> g.cluster_bits, g.table_size)) {
        ++out.corruptions;
        note("L1 table overlaps itself");
    }

    table& l1 = *img.l1_;
    bool l1_changed = false;
    // An L2 table (up to 1 GiB) is walked in pieces of at most 1 MiB, so
    // check holds the L1 table, the bitmap and one piece, whatever the
    // geometry. A piece is a whole number of write blocks (io_align_ <= 1 MiB
    // divides it), so a repaired piece is written back alone. Power failing
    // between two such writes leaves some invalid entries cleared and the
    // rest as they were: each is a state the next check repairs the same
    // way (clearing an invalid entry loses nothing that could be read).
    const std::uint32_t piece_entries = std::min<std::uint32_t>(g.table_entries, (1u << 20) / 8);
    assert(g.table_entries % piece_entries == 0);  // both powers of two
    table l2(piece_entries);
    std::uint64_t prev_host = 0;
    // Every L1 entry is checked, those past the image size too (nothing
    // looks them up, but a table they link still owns its clusters, and
    // QEMU's check walks them): memory holds only the entries covering the
    // image, the rest are read from disk in pieces of 1 MiB, and a repaired
    // piece is written back before the next one is read (power failing
    // between pieces: as for the L2 pieces above).
    table beyond(piece_entries);
    std::uint32_t tail_first = 0, tail_size = 0;  // which L1 entries `tail` holds
    bool tail_changed = false;
    bool tail_ok = true;
    for (std::uint32_t i = 0; i < g.table_entries; ++i) {
        const bool in_memory = i < l1.size();
        if (!in_memory && i >= tail_first + tail_size) {
            if (tail_changed) co_await write_l1_piece(img, tail_first, beyond, out);
            tail_changed = false;
            tail_first = i;
            tail_size = std::min(piece_entries, g.table_entries - i);
            if (tail_size != beyond.size()) beyond = table(tail_size);
            if (img.reads_as_zeros(img.header_.l1_table_offset + std::uint64_t{tail_first} * 8, beyond.byte_size())) {
                std::fill(beyond.data(), beyond.data() + beyond.size(), 0);  // a hole: skipped without reading
            } else if (auto ec = co_await img.read_l1_piece(tail_first, beyond)) {
                ++out.check_errors;
                note("cannot read L1 table: " + ec.message());
                tail_ok = false;
                break;
            }
        }
        std::uint64_t& entry = in_memory ? l1[i] : beyond[i - tail_first];
        const std::uint64_t off = entry;
        if (off == 0) continue;
        if (!img.valid_l2_offset(off)) {  // (img.file_end_ == end during the walk)
            note("L1 entry " + std::to_string(i) + ": invalid L2 table offset " + hex(off) +
                 (img.inside_l1(off, g.table_bytes) ? " (inside the L1 table)" : "") +
                 (fix_corruptions ? " (cleared)" : ""));
            if (fix_corruptions) {
                entry = 0;
                (in_memory ? l1_changed : tail_changed) = true;
                ++out.corruptions_fixed;
            } else {
                ++out.corruptions;
            }
            continue;
        }
        if (const std::uint64_t twice = used.mark(off >> g.cluster_bits, g.table_size)) {
            out.corruptions += twice;
            note("L2 table at " + hex(off) + " shares clusters with another table or data");
            continue;  // don't trust what it says
        }
        for (std::uint32_t base = 0; base < g.table_entries; base += piece_entries) {
            const std::uint64_t piece_off = off + std::uint64_t{base} * sizeof(std::uint64_t);
            if (img.reads_as_zeros(piece_off, l2.byte_size())) continue;  // only zero entries
            if (auto ec = co_await co::read_table(*img.file_, piece_off, l2)) {
                ++out.check_errors;
                note("cannot read L2 table at " + hex(off) + ": " + ec.message());
                break;
            }
            bool changed = false;
            for (std::uint32_t k = 0; k < l2.size(); ++k) {
                const std::uint32_t j = base + k;
                const std::uint64_t e = l2[k];
                if (e == 0 || e == zero_cluster_entry) continue;
                if (!img.valid_data_offset(e)) {
                    note("L2 table at " + hex(off) + " entry " + std::to_string(j) + ": invalid cluster offset " +
                         hex(e) + (img.inside_l1(e, g.cluster_size) ? " (inside the L1 table)" : "") +
                         (fix_corruptions ? " (cleared)" : ""));
                    if (fix_corruptions) {
                        l2[k] = 0;
                        changed = true;
                        ++out.corruptions_fixed;
                    } else {
                        ++out.corruptions;
                    }
                    continue;
                }
                if (used.mark(e >> g.cluster_bits, 1)) {
                    ++out.corruptions;
                    note("cluster " + hex(e) + " is referenced more than once");
                    continue;
                }
                ++out.allocated_clusters;
                if (prev_host && e != prev_host + g.cluster_size) ++out.fragmented_clusters;
                prev_host = e;
            }
            if (changed) {
                if (auto ec = co_await co::write_table(*img.file_, piece_off, l2, 0, l2.size(), img.io_align_)) {
                    ++out.check_errors;
                    note("cannot write repaired L2 table at " + hex(off) + ": " + ec.message());
                }
            }
        }
    }
    if (tail_ok && tail_changed) co_await write_l1_piece(img, tail_first, beyond, out);
    if (l1_changed) {
        if (auto ec =
                co_await co::write_table(*img.file_, img.header_.l1_table_offset, l1, 0, l1.size(), img.io_align_)) {
            ++out.check_errors;
            note("cannot write repaired L1 table: " + ec.message());
        }
    }

    // Leaks, only when every table could be read.
    std::uint64_t last_used = g.header_bytes >> g.cluster_bits;  // one past the last used cluster
    for (std::uint64_t k = used.size(); k-- > 0;) {
        if (used.test(k)) {
            last_used = std::max(last_used, k + 1);
            break;
        }
    }
    out.image_end_offset = last_used << g.cluster_bits;
    if (!out.check_errors) {
        // On a fixed-size file (an NBD export) what follows the last used
        // cluster is free space, not leaked clusters.
        const bool fixed = img.file_->fixed_size();
        const std::uint64_t scan_end = fixed ? std::min<std::uint64_t>(used.size(), last_used) : used.size();
        for (std::uint64_t k = img.header_.header_size; k < scan_end; ++k)
            if (!used.test(k)) ++out.leaks;
        if (fixed && fix_any && !img.options_.read_only && out.corruptions == 0) {
            img.file_end_ = out.image_end_offset;  // the free space starts there; its old bytes stay
        }
        // Leaked clusters at the end of the file can simply be cut off.
        const std::uint64_t tail = !fixed && used.size() > last_used ? used.size() - last_used : 0;
        if (fix_any && tail && !img.options_.read_only) {
            if (auto ec = co_await co::resize(*img.file_, out.image_end_offset)) {
                ++out.check_errors;
                note("cannot truncate leaked clusters: " + ec.message());
            } else {
                out.leaks -= tail;
                out.leaks_fixed += tail;
                img.file_end_ = out.image_end_offset;
                img.physical_size_ = out.image_end_offset;
                img.tail_garbage_ = false;
            }
        }
        if (out.leaks) note(std::to_string(out.leaks) + " leaked clusters");
    }

    if (fix_any && !img.options_.read_only) {
        if (auto ec = co_await co::flush(*img.file_)) co_return ec;
        if (out.corruptions == 0 && out.check_errors == 0) {
            if (img.header_.has(feature_need_check)) {
                header h = img.header_;
                h.features &= ~std::uint64_t{feature_need_check};
                if (auto ec = co_await img.write_header_co(h)) co_return ec;
                if (auto ec = co_await co::flush(*img.file_)) co_return ec;
                out.need_check_cleared = true;
            }
        }
    }
    // Whatever the mode, known corruption means NEED_CHECK must survive close;
    // a complete check that found none vouches for the image.
    if (out.corruptions) img.corrupt_ = true;
    else if (!out.check_errors) {
        img.corrupt_ = false;
        img.unchecked_dirty_ = false;
    }
    co_return std::error_code{};
}

void qed_image::check(check_options options, check_handler handler) {
    auto self = std::static_pointer_cast<qed_image>(shared_from_this());
    run_exclusive([this, self, options, h = std::move(handler)]() mutable {
        auto result = std::make_shared<check_result>();
        co::run(ex_, do_check(options, result), [this, self, result, h = std::move(h)](std::error_code ec) mutable {
            complete(std::move(h), ec, std::move(*result));
            exclusive_done();
        });
    });
}

boost::asio::awaitable<std::error_code> qed_image::do_check(check_options options,
                                                            std::shared_ptr<check_result> result) {
    if (closed_) co_return errc::closed;
    if (options.mode != check_options::repair::none && options_.read_only) co_return errc::read_only;
    co_return co_await run_check(*this, options.mode, *result);
}

}  // namespace qed::detail
