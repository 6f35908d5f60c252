// SPDX-License-Identifier: BSL-1.0
// Opening a QED image: header, backing name, L1 table, autoclear bits,
// backing chain, and check + repair of a dirty image.
#include "check/check.hpp"
#include "image/backing.hpp"
#include "table/co_io.hpp"
#include "image/qed_image.hpp"
#include "qed/node_options.hpp"

#include <algorithm>
#include <cassert>
#include <cstring>

namespace qed::detail {

// With file_end_ at the capacity: the end of everything the tables
// reference that lies inside it (what lies outside is left for the check
// to report), and at least the header and L1 table. Every L1 entry counts,
// those past the image size too (read from disk 1 MiB at a time): a table
// they link holds clusters that must not be handed out again. L2 tables
// are read in 1 MiB pieces as well, whatever their size.
boost::asio::awaitable<std::error_code> qed_image::find_used_end() {
    std::uint64_t end = std::max(geo_.header_bytes, header_.l1_table_offset + geo_.table_bytes);
    const std::uint32_t piece_entries = std::min(geo_.table_entries, l1_piece_entries);
    table l2(piece_entries);
    table tail(piece_entries);
    std::uint32_t tail_first = 0, tail_size = 0;  // which L1 entries `tail` holds
    for (std::uint32_t i = 0; i < geo_.table_entries; ++i) {
        std::uint64_t off = 0;
        if (i < l1_->size()) {
            off = (*l1_)[i];
        } else {
            if (i >= tail_first + tail_size) {
                tail_first = i;
                tail_size = std::min(piece_entries, geo_.table_entries - i);
                if (tail_size != tail.size()) tail = table(tail_size);
                if (reads_as_zeros(header_.l1_table_offset + std::uint64_t{tail_first} * 8, tail.byte_size()))
                    std::fill(tail.data(), tail.data() + tail.size(), 0);  // a hole: skipped without reading
                else if (auto ec = co_await read_l1_piece(tail_first, tail))
                    co_return ec;
            }
            off = tail[i - tail_first];
        }
        if (off == 0 || !valid_l2_offset(off)) continue;
        end = std::max(end, off + geo_.table_bytes);
        for (std::uint32_t base = 0; base < geo_.table_entries; base += piece_entries) {
            const std::uint64_t piece_off = off + std::uint64_t{base} * sizeof(std::uint64_t);
            if (reads_as_zeros(piece_off, l2.byte_size())) continue;  // only zero entries
            if (auto ec = co_await co::read_table(*file_, piece_off, l2)) co_return ec;
            for (std::uint32_t j = 0; j < l2.size(); ++j) {
                const std::uint64_t e = l2[j];
                if (e == 0 || e == zero_cluster_entry || !valid_data_offset(e)) continue;
                end = std::max(end, e + geo_.cluster_size);
            }
        }
    }
    assert(end <= file_end_);  // only offsets inside the capacity were taken
    file_end_ = end;
    co_return std::error_code{};
}

boost::asio::awaitable<std::error_code> qed_image::read_l1_piece(std::uint32_t first, table& piece) {
    co_return co_await co::read_table(*file_, header_.l1_table_offset + std::uint64_t{first} * sizeof(std::uint64_t),
                                      piece);
}

boost::asio::awaitable<std::error_code> qed_image::open(unsigned depth, std::vector<file_identity> chain) {
    auto fail = [this](std::error_code ec, const std::string& detail) {
        log(filename_ + ": " + (detail.empty() ? ec.message() : detail));
        return ec;
    };

    std::error_code ec;
    const std::uint64_t size = file_->size(ec);
    if (ec) co_return fail(ec, "");
    if (size < header_struct_size) co_return fail(errc::file_too_small, "");

    io_align_ = std::max<std::size_t>(sector_size, file_->alignment());
    header_block_ = allocate_aligned(io_align_, true);
    if ((ec = co_await co::read(*file_, 0, header_block_.get(), io_align_))) co_return fail(ec, "");
    header_ = decode(std::span<const std::byte, header_struct_size>(header_block_.get(), header_struct_size));
    std::string detail;
    if ((ec = validate(header_, size, &detail))) co_return fail(ec, detail);
    geo_ = geometry(header_);
    // The cache's budget in tables, now that their size is known.
    cache_.set_capacity(std::min<std::uint64_t>(options_.l2_cache_size, options_.l2_cache_bytes / geo_.table_bytes));

    if (header_.has(feature_backing_file)) {
        if (header_.backing_filename_size == 0)
            co_return fail(errc::bad_backing_name, "backing file flag set but the name is empty");
        // validate() bounded the length by the header clusters (inside the
        // file) and by max_backing_name_size: one buffer of at most 1 MiB.
        assert(header_.backing_filename_size <= max_backing_name_size);  // checked by validate()
        backing_name_.resize(header_.backing_filename_size);
        if ((ec = co_await co::read(*file_, header_.backing_filename_offset, backing_name_.data(),
                                    backing_name_.size())))
            co_return fail(ec, "");
        if (backing_name_.find('\0') != std::string::npos)
            co_return fail(errc::bad_backing_name, "backing file name contains a NUL byte");
        backing_full_ = resolve_backing_path(filename_, backing_name_);
        if (header_.has(feature_backing_format_no_probe)) backing_format_ = image_format::raw;
    }

    // Only the entries covering the image (entries past it are never looked
    // up by a request; check and find_used_end read them in pieces).
    l1_ = std::make_unique<table>(l1_entries_for(header_.image_size));
    if ((ec = co_await co::read_table(*file_, header_.l1_table_offset, *l1_))) co_return fail(ec, "");
    writeback_.attach({file_.get(), io_align_, l1_.get(), header_.l1_table_offset,
                       // Fixed-size storage holds old bytes where a new cluster goes: a
                       // table entry durable before the cluster's data would expose them
                       // after a power loss (a growing file reads zeros there instead).
                       [this] {
                           return header_.has(feature_backing_file) || need_check_unflushed_ ||
                                  file_->fixed_size();
                       },
                       [this] { need_check_unflushed_ = false; },
                       [this]() -> std::shared_ptr<void> { return shared_from_this(); }});
    file_end_ = geo_.start_of_cluster(size);
    physical_size_ = size;
    if (file_->fixed_size()) {
        // The size is the storage's capacity (an NBD export), not the end of
        // the image: new clusters go after the last one the tables use, and
        // every byte up to the capacity may hold old data (so new clusters
        // are written whole). After a crash, clusters written but not yet
        // linked lie past that end: they are reused like any free space.
        if ((ec = co_await find_used_end())) co_return fail(ec, "");
    }

    // Unknown autoclear bits describe data this program does not maintain:
    // clear them so a newer program knows not to trust it.
    if (!options_.read_only && (header_.autoclear_features & ~known_autoclear_features)) {
        header h = header_;
        h.autoclear_features &= known_autoclear_features;
        if ((ec = co_await write_header_co(h))) co_return fail(ec, "");
        if ((ec = co_await co::flush(*file_))) co_return fail(ec, "");
    }

    if (header_.has(feature_backing_file) && options_.open_backing) {
        if (backing_full_.empty()) {  // a relative name, and the image's node has no directory (a quorum)
            std::string why;
            resolve_backing_path(filename_, backing_name_, &why);
            co_return fail(errc::bad_backing_name, why);
        }
        if (is_remote_name(filename_) && backing_full_.front() != '/' && !is_remote_name(backing_full_) &&
            !is_json_name(backing_full_))
            co_return fail(errc::bad_backing_name, "relative backing file name " + backing_name_ +
                                                       " cannot be resolved against a remote image: use an "
                                                       "absolute path or a URI");
        chain.push_back(file_->identity());
        auto [bec, dev] =
            co_await open_backing_chain(ex_, backing_full_, backing_format_, options_, depth + 1, std::move(chain));
        if (bec) {
            // qemu's wording (scripts match it). A refused, locked or looping chain
            // was already explained in one line by the chain's own check.
            if (bec == errc::backing_not_allowed || bec == errc::backing_loop || bec == errc::backing_chain_too_deep ||
                bec == errc::image_locked)
                co_return bec;
            if (bec.category() == std::system_category() || bec.category() == std::generic_category())
                co_return fail(bec, "Could not open backing file: Could not open '" + backing_full_ +
                                        "': " + bec.message());
            co_return fail(bec, "Could not open backing file: " + backing_full_ + ": " + bec.message());
        }
        backing_ = std::move(dev);
    }

    // A dirty image may have dangling entries from an interrupted allocation.
    // Read-only opens skip this so a damaged image can still be read.
    unchecked_dirty_ = header_.has(feature_need_check) && !(options_.repair_on_open && !options_.read_only);
    if (header_.has(feature_need_check) && !options_.read_only && options_.repair_on_open) {
        check_result r;
        if ((ec = co_await run_check(*this, check_options::repair::all, r))) co_return fail(ec, "");
        if (r.check_errors) co_return fail(std::make_error_code(std::errc::io_error), "check could not complete");
        if (r.corruptions) {
            for (const auto& m : r.messages) log(filename_ + ": " + m);
            co_return fail(errc::corrupt_image, "image has " + std::to_string(r.corruptions) +
                                                     " corruptions that repair cannot fix; open it read-only to "
                                                     "recover data");
        }
        if (r.corruptions_fixed)
            log(filename_ + ": repaired " + std::to_string(r.corruptions_fixed) + " invalid table entries");
    }
    co_return std::error_code{};
}

}  // namespace qed::detail
