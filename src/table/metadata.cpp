// SPDX-License-Identifier: BSL-1.0
#include "table/metadata.hpp"

#include <algorithm>
#include <cassert>
#include <cstring>

#include "block_file/completion.hpp"
#include "qed/error.hpp"
#include "table/co_io.hpp"

namespace qed::detail {

metadata::metadata(boost::asio::any_io_executor ex, std::shared_ptr<block_file> file,
                   std::function<std::shared_ptr<void>()> keep_alive)
    : ex_(ex), file_(std::move(file)), keep_alive_(std::move(keep_alive)), writeback_(ex) {}

// ---------------------------------------------------------------------------
// Opening
// ---------------------------------------------------------------------------

boost::asio::awaitable<std::error_code> metadata::load(std::size_t cache_tables, std::uint64_t cache_bytes,
                                                       std::string& detail) {
    std::error_code ec;
    const std::uint64_t size = file_->size(ec);
    if (ec) co_return ec;
    if (size < header_struct_size) co_return errc::file_too_small;

    io_align_ = std::max<std::size_t>(sector_size, file_->alignment());
    header_block_ = allocate_aligned(io_align_, true);
    if ((ec = co_await co::read(*file_, 0, header_block_.get(), io_align_))) co_return ec;
    header_ = decode(std::span<const std::byte, header_struct_size>(header_block_.get(), header_struct_size));
    if ((ec = validate(header_, size, &detail))) co_return ec;
    geo_ = geometry(header_);
    // The cache's budget in tables, now that their size is known.
    cache_.set_capacity(std::min<std::uint64_t>(cache_tables, cache_bytes / geo_.table_bytes));

    if (header_.has(feature_backing_file)) {
        if (header_.backing_filename_size == 0) {
            detail = "backing file flag set but the name is empty";
            co_return errc::bad_backing_name;
        }
        assert(header_.backing_filename_size <= max_backing_name_size);  // validate() bounds it: at most 1 MiB
        backing_name_.resize(header_.backing_filename_size);
        if ((ec = co_await co::read(*file_, header_.backing_filename_offset, backing_name_.data(),
                                    backing_name_.size())))
            co_return ec;
        if (backing_name_.find('\0') != std::string::npos) {
            detail = "backing file name contains a NUL byte";
            co_return errc::bad_backing_name;
        }
    }

    // Only the entries covering the image (entries past it are never looked
    // up by a request; check and find_used_end read them in pieces).
    l1_ = std::make_unique<table>(l1_entries_for(geo_, header_.image_size, io_align_));
    if ((ec = co_await co::read_table(*file_, header_.l1_table_offset, *l1_))) co_return ec;
    writeback_.attach(
        {file_.get(), io_align_, l1_.get(), header_.l1_table_offset,
         // Fixed-size storage holds old bytes where a new cluster goes: a
         // table entry durable before the cluster's data would expose them
         // after a power loss (a growing file reads zeros there instead).
         [this] { return header_.has(feature_backing_file) || need_check_unflushed_ || file_->fixed_size(); },
         [this] { need_check_unflushed_ = false; }, keep_alive_});
    alloc_.reset(geo_.start_of_cluster(size), size);
    if (file_->fixed_size()) {
        // The size is the storage's capacity (an NBD export), not the end of
        // the image: new clusters go after the last one the tables use, and
        // every byte up to the capacity may hold old data (so new clusters
        // are written whole). After a crash, clusters written but not yet
        // linked lie past that end: they are reused like any free space.
        if ((ec = co_await find_used_end())) co_return ec;
    }
    co_return std::error_code{};
}

// With the allocator's end at the capacity: the end of everything the tables
// reference that lies inside it (what lies outside is left for the check to
// report), and at least the header and L1 table. Every L1 entry counts,
// those past the image size too (l1_pieces): a table they link holds
// clusters that must not be handed out again. L2 tables are read in 1 MiB
// pieces as well, whatever their size.
boost::asio::awaitable<std::error_code> metadata::find_used_end() {
    std::uint64_t end = std::max(geo_.header_bytes, header_.l1_table_offset + geo_.table_bytes);
    table l2(std::min(geo_.table_entries, piece_entries));
    l1_pieces beyond(*this);
    for (std::uint32_t i = 0; i < geo_.table_entries; ++i) {
        if (i >= l1_->size() && !beyond.holds(i))
            if (auto ec = co_await beyond.load(i)) co_return ec;
        const std::uint64_t off = i < l1_->size() ? (*l1_)[i] : beyond[i];
        if (off == 0 || !valid_l2_offset(off)) continue;
        end = std::max(end, off + geo_.table_bytes);
        for (std::uint32_t base = 0; base < geo_.table_entries; base += l2.size()) {
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
    assert(end <= alloc_.end());  // only offsets inside the capacity were taken
    alloc_.set_end(end);
    co_return std::error_code{};
}

bool metadata::reads_as_zeros(std::uint64_t off, std::uint64_t len) const {
    bool data = true;
    std::uint64_t run = 0;
    if (file_->allocation(off, len, data, run)) return false;
    return !data && run >= len;
}

// ---------------------------------------------------------------------------
// The header
// ---------------------------------------------------------------------------

void metadata::write_header(const header& h, op_handler handler) {
    auto block = std::make_shared<aligned_bytes>(allocate_aligned(io_align_, false));
    std::memcpy(block->get(), header_block_.get(), io_align_);
    encode_first_block({block->get(), io_align_}, h, {});
    const boost::asio::const_buffer buf(block->get(), io_align_);
    file_->async_write_at(0, {&buf, 1},
                          [this, block, h, handler = std::move(handler)](std::error_code ec, std::size_t) mutable {
                              if (!ec) {
                                  header_block_ = std::move(*block);
                                  header_ = h;
                              }
                              std::move(handler)(ec);
                          });
}

boost::asio::awaitable<std::error_code> metadata::write_header_co(const header& h) {
    co_return co_await co::op([this, h](op_handler done) { write_header(h, std::move(done)); });
}

void metadata::set_need_check(op_handler handler) {
    header h = header_;
    h.features |= feature_need_check;
    // The bit must be durable before any L2 entry that could point at a
    // cluster whose data did not land. Table entries reach the disk only
    // through write-back rounds, and the next round flushes first.
    write_header(h, [this, handler = std::move(handler)](std::error_code ec) mutable {
        if (!ec) need_check_unflushed_ = true;
        std::move(handler)(ec);
    });
}

// If power fails after the header write and before the flush, the bit may
// or may not be clear on disk: either way every table update is durable
// already, so a clear bit tells the truth.
boost::asio::awaitable<std::error_code> metadata::clear_need_check(bool synced) {
    if (!synced)
        if (auto ec = co_await sync_co(true)) co_return ec;
    header h = header_;
    h.features &= ~std::uint64_t{feature_need_check};
    if (auto ec = co_await write_header_co(h)) co_return ec;
    co_return co_await co::flush(*file_);
}

boost::asio::awaitable<std::error_code> metadata::clear_unknown_autoclear() {
    header h = header_;
    h.autoclear_features &= known_autoclear_features;
    if (auto ec = co_await write_header_co(h)) co_return ec;
    co_return co_await co::flush(*file_);
}

// The switch is atomic: the header's first block is written in one piece. A
// name that fits there goes right after the header struct (as QEMU puts it).
// A longer name first goes, whole, to blocks that don't overlap the old name
// (place_backing_name), is flushed, and only then does the first block point
// at it: power failing at any moment leaves the old header with its intact
// old name, or the new header with its intact new name.
std::error_code metadata::check_backing_name(const std::string& name) const noexcept {
    if (name.empty()) return {};
    // Unknown compat features may own the bytes after the header.
    if (header_.compat_features & ~known_compat_features) return errc::unsupported_compat_features;
    if (name.size() > max_backing_name_size ||
        place_backing_name(header_, name.size(), io_align_, geo_.header_bytes) == 0)
        return errc::backing_name_too_long;
    return {};
}

boost::asio::awaitable<std::error_code> metadata::write_backing_name(const std::string& name, bool raw) {
    if (auto ec = check_backing_name(name)) co_return ec;
    header hd = header_;
    hd.features &= ~std::uint64_t{feature_backing_file | feature_backing_format_no_probe};
    hd.backing_filename_offset = header_struct_size;  // where QEMU leaves it too
    hd.backing_filename_size = 0;
    if (!name.empty()) {
        hd.features |= feature_backing_file;
        if (raw) hd.features |= feature_backing_format_no_probe;
        hd.backing_filename_size = static_cast<std::uint32_t>(name.size());
        hd.backing_filename_offset =
            static_cast<std::uint32_t>(place_backing_name(header_, name.size(), io_align_, geo_.header_bytes));
    }
    if (hd.backing_filename_offset != header_struct_size) {
        // Whole blocks, read first: they may hold other bytes of the header area.
        const std::uint64_t at = hd.backing_filename_offset;
        const std::size_t len = (name.size() + io_align_ - 1) / io_align_ * io_align_;
        auto area = allocate_aligned(len, true);
        if (auto ec = co_await co::read(*file_, at, area.get(), len)) co_return ec;
        std::memcpy(area.get(), name.data(), name.size());
        if (auto ec = co_await co::write(*file_, at, area.get(), len)) co_return ec;
        if (auto ec = co_await co::flush(*file_)) co_return ec;
    }
    auto first = allocate_aligned(io_align_, false);
    std::memcpy(first.get(), header_block_.get(), io_align_);
    encode_first_block({first.get(), io_align_}, hd, name);
    if (auto ec = co_await co::write(*file_, 0, first.get(), io_align_)) co_return ec;
    if (auto ec = co_await co::flush(*file_)) co_return ec;
    header_block_ = std::move(first);
    header_ = hd;
    backing_name_ = name;
    co_return std::error_code{};
}

// ---------------------------------------------------------------------------
// Tables
// ---------------------------------------------------------------------------

boost::asio::awaitable<std::error_code> metadata::read_l1_piece(std::uint32_t first, table& piece) {
    const std::uint64_t at = header_.l1_table_offset + std::uint64_t{first} * sizeof(std::uint64_t);
    if (reads_as_zeros(at, piece.byte_size())) {  // a hole: skipped without reading
        std::fill(piece.data(), piece.data() + piece.size(), 0);
        co_return std::error_code{};
    }
    co_return co_await co::read_table(*file_, at, piece);
}

boost::asio::awaitable<std::error_code> metadata::cover_size(std::uint64_t new_size) {
    const std::uint32_t want = l1_entries_for(geo_, new_size, io_align_);
    if (want <= l1_->size()) co_return std::error_code{};
    // Pending L1 updates go to the disk first, so the write-back's record of
    // dirty L1 sectors is empty while the table changes size.
    if (auto ec = co_await sync_co(false)) co_return ec;
    if (writeback_.dirty()) co_return std::make_error_code(std::errc::io_error);
    const std::uint32_t have = l1_->size();
    table more(want - have);
    if (auto ec = co_await read_l1_piece(have, more)) co_return ec;
    l1_->grow(want);
    std::copy(more.data(), more.data() + more.size(), l1_->data() + have);
    co_return std::error_code{};
}

void metadata::load_l2(std::uint64_t offset, op_handler handler) {
    if (auto e = cache_.find(offset)) {
        if (e->loaded)
            complete_never_inline(ex_, true, std::move(handler), std::error_code{});
        else
            e->waiters.push_back(std::move(handler));  // share the load in flight
        return;
    }
    cache_.make_room();  // before allocating: the table may be 1 GiB
    auto entry = std::make_shared<l2_entry>(offset, geo_.table_entries);
    entry->waiters.push_back(std::move(handler));
    cache_.insert(entry);
    file_->debug_event(blkdbg_event::l2_load);
    async_read_table_sparse(*file_, offset, entry->t, [this, entry](std::error_code ec) mutable {
        if (ec)
            cache_.erase(entry->offset);  // can't trust a failed read
        else
            entry->loaded = true;
        auto waiters = std::move(entry->waiters);
        // Let go of the table before the waiters run: they may go on (a
        // walk over tables of up to 1 GiB) to load the next table, which
        // evicts this one only if nobody else holds it.
        entry.reset();
        for (auto& w : waiters) std::move(w)(ec);
    });
}

l2_ref metadata::cached_table(std::uint64_t l1_index, bool& missing, bool& invalid) {
    missing = invalid = false;
    const std::uint64_t off = (*l1_)[l1_index];
    if (off == 0) {
        missing = true;
        return nullptr;
    }
    if (!valid_l2_offset(off)) {
        invalid = true;
        return nullptr;
    }
    auto e = cache_.find(off);
    if (e && !e->loaded) return nullptr;
    return e;
}

boost::asio::awaitable<std::error_code> metadata::sync_co(bool durable) {
    co_return co_await co::op([this, durable](op_handler h) { writeback_.sync(durable, std::move(h)); });
}

// Unlink everything (L1 all zeros, durable), then drop the space. Power
// failing between the two leaves leaks, never dangling entries.
boost::asio::awaitable<std::error_code> metadata::unlink_all() {
    co_await sync_co(false);  // no round may write a table while we drop them
    writeback_.discard();
    // The whole on-disk L1 (entries past the image size too: check reads
    // them) becomes zeros, written 1 MiB at a time from the shared zero block
    // rather than from a whole empty table. Power failing between two pieces
    // leaves some entries zero and the rest as they were: every table still
    // linked is intact, the unlinked ones are leaks, which check reports and
    // nothing reads.
    const auto z = zero_block();
    for (std::uint64_t done = 0; done < geo_.table_bytes;) {
        const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(geo_.table_bytes - done, z.size()));
        if (auto ec = co_await co::write(*file_, header_.l1_table_offset + done, z.data(), n)) co_return ec;
        done += n;
    }
    if (auto ec = co_await co::flush(*file_)) co_return ec;
    std::fill(l1_->data(), l1_->data() + l1_->size(), 0);
    cache_.clear_unused();
    // Nothing past `end` is referenced any more: new clusters go there even
    // if the file can't be cut back now (a failing or full disk); close
    // tries again. Until the cut succeeds those bytes may hold old data, so
    // the allocator's physical size stays and new clusters below it are
    // written whole (prefill), as over any garbage.
    const std::uint64_t end = std::max(geo_.header_bytes, header_.l1_table_offset + geo_.table_bytes);
    alloc_.give_back(end);
    if (auto ec = co_await co::resize(*file_, end)) co_return ec;
    alloc_.trimmed(!file_->fixed_size());  // an export keeps its old bytes
    co_return co_await co::flush(*file_);
}

// ---------------------------------------------------------------------------
// L1 entries past those in memory
// ---------------------------------------------------------------------------

l1_pieces::l1_pieces(metadata& m) : m_(m), piece_(0) {}

boost::asio::awaitable<std::error_code> l1_pieces::load(std::uint32_t first) {
    const std::uint32_t entries = m_.geo().table_entries;
    assert(first < entries);  // callers walk the table's own entries
    const std::uint32_t n = std::min(std::min(entries, metadata::piece_entries), entries - first);
    if (n != piece_.size()) piece_ = table(n);
    first_ = first;
    size_ = 0;  // nothing held until the read succeeds
    if (auto ec = co_await m_.read_l1_piece(first, piece_)) co_return ec;
    size_ = n;
    co_return std::error_code{};
}

boost::asio::awaitable<std::error_code> l1_pieces::store() {
    const std::uint64_t at = m_.hdr().l1_table_offset + std::uint64_t{first_} * sizeof(std::uint64_t);
    co_return co_await co::write_table(m_.file(), at, piece_, 0, size_, m_.io_align());
}

}  // namespace qed::detail
