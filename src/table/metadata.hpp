// SPDX-License-Identifier: BSL-1.0
// A QED image's metadata as its file holds it: the header (and the block it
// sits in), the geometry, the L1 table, the L2 cache, the write-back of
// table updates and the cluster allocator, with the rules for which offsets
// an entry may hold.
//
// It knows nothing of requests, the request gate or the need-check timer:
// cluster lookup, requests and check read and change the image through it,
// and the image above decides when (its policy: read-only, corrupt, when
// NEED_CHECK may go).
#pragma once

#include <boost/asio/awaitable.hpp>
#include <functional>
#include <memory>
#include <string>

#include "format/layout.hpp"
#include "table/allocator.hpp"
#include "table/l2_cache.hpp"
#include "table/writeback.hpp"

namespace qed::detail {

/// Ownership: one per open QED image, a member of it; it owns the image's
/// file (until release_file()), L1 table, L2 cache and write-back. Used on
/// the image's executor only.
class metadata {
public:
    /// `keep_alive` gives a reference to the owner, held by write-back rounds
    /// in flight (the owner may be dropped by its users meanwhile).
    metadata(boost::asio::any_io_executor ex, std::shared_ptr<block_file> file,
             std::function<std::shared_ptr<void>()> keep_alive);

    // ---- opening -----------------------------------------------------------
    /// Read and validate the header and the backing file name, read the L1
    /// entries covering the image, and find where new clusters go. The L2
    /// cache keeps at most `cache_tables` tables and `cache_bytes` bytes of
    /// them (at least one table). On failure `detail` may hold a one-line
    /// reason (else the error's message says it).
    boost::asio::awaitable<std::error_code> load(std::size_t cache_tables, std::uint64_t cache_bytes,
                                                 std::string& detail);

    const boost::asio::any_io_executor& get_executor() const noexcept { return ex_; }
    block_file& file() const noexcept { return *file_; }
    bool has_file() const noexcept { return file_ != nullptr; }
    /// Let go of the file now (its descriptor and locks), not when the
    /// image goes: called once, at close, after the last operation.
    void release_file() noexcept { file_.reset(); }

    // ---- the header ----------------------------------------------------------
    const header& hdr() const noexcept { return header_; }
    const geometry& geo() const noexcept { return geo_; }
    /// Granularity of metadata writes (512, or the O_DIRECT block size).
    std::size_t io_align() const noexcept { return io_align_; }
    /// The backing file name as stored in the header ("" without one).
    const std::string& backing_name() const noexcept { return backing_name_; }

    /// Write `h` over the 64-byte header (the rest of the first block --
    /// backing name, unknown extensions -- as read); in-memory state changes
    /// only on success.
    void write_header(const header& h, op_handler handler);
    boost::asio::awaitable<std::error_code> write_header_co(const header& h);
    /// Set NEED_CHECK before the first allocation: written now; the next
    /// write-back round flushes it before any table entry reaches the disk.
    void set_need_check(op_handler handler);
    /// Clear NEED_CHECK: every table update durable first (skipped when the
    /// caller has just made everything durable: `synced`), then the header,
    /// then a flush. The caller decides that the image may be marked clean.
    boost::asio::awaitable<std::error_code> clear_need_check(bool synced);
    /// Point the header at backing file `name` ("" for none; `raw`: its
    /// format is raw, never probed), switching atomically (see
    /// place_backing_name): errc::backing_name_too_long when it can't.
    boost::asio::awaitable<std::error_code> write_backing_name(const std::string& name, bool raw);
    /// Whether write_backing_name() could store `name` (nothing changes).
    std::error_code check_backing_name(const std::string& name) const noexcept;
    /// Clear the autoclear bits this program does not maintain (a newer
    /// program then knows not to trust what they describe).
    boost::asio::awaitable<std::error_code> clear_unknown_autoclear();

    // ---- where entries may point ------------------------------------------
    layout rules() const noexcept { return {geo_, header_.l1_table_offset, alloc_.end()}; }
    bool valid_data_offset(std::uint64_t off) const noexcept { return rules().valid_data_offset(off); }
    bool valid_l2_offset(std::uint64_t off) const noexcept { return rules().valid_l2_offset(off); }
    bool inside_l1(std::uint64_t off, std::uint64_t len) const noexcept { return rules().inside_l1(off, len); }

    // ---- tables ------------------------------------------------------------
    /// The L1 entries that cover the image size (rounded up to whole write
    /// blocks), not the whole table: a 1 GiB L1 of a small image costs only
    /// the entries it uses. Entries past it are read from disk in pieces by
    /// whatever needs them (check, find_used_end).
    table& l1() noexcept { return *l1_; }
    const table& l1() const noexcept { return *l1_; }
    /// Read on-disk L1 entries [first, first + piece.size()) into `piece`:
    /// zeros without reading where the file has a hole.
    boost::asio::awaitable<std::error_code> read_l1_piece(std::uint32_t first, table& piece);
    /// The file has a hole at [off, off + len) (reads as zeros): a piece of
    /// a table there holds only zero entries and need not be read. False
    /// when the file can't tell.
    bool reads_as_zeros(std::uint64_t off, std::uint64_t len) const;
    /// Entries per piece when tables are walked from disk (1 MiB).
    static constexpr std::uint32_t piece_entries = (1u << 20) / sizeof(std::uint64_t);
    /// Bring the L1 entries an image of `new_size` bytes uses into memory
    /// (read from disk, as they are: what check saw and repaired). Nothing on
    /// disk changes.
    boost::asio::awaitable<std::error_code> cover_size(std::uint64_t new_size);

    l2_cache& cache() noexcept { return cache_; }
    /// Load the L2 table at `offset` into the cache, sharing a load already
    /// in flight; the handler runs when it is there, or on error (never
    /// inside this call).
    void load_l2(std::uint64_t offset, op_handler handler);
    /// The table of L1 entry `l1_index` if it is in memory, else null;
    /// `missing`: the entry is 0 (no table yet); `invalid`: it points where
    /// no table may be.
    l2_ref cached_table(std::uint64_t l1_index, bool& missing, bool& invalid);

    table_writeback& writeback() noexcept { return writeback_; }
    /// Everything changed so far written (and, `durable`, flushed).
    void sync(bool durable, op_handler handler) { writeback_.sync(durable, std::move(handler)); }
    boost::asio::awaitable<std::error_code> sync_co(bool durable);

    /// Unlink every table (the whole on-disk L1 becomes zeros, durably) and
    /// give the space back (the file is cut after the L1 table).
    boost::asio::awaitable<std::error_code> unlink_all();

    cluster_allocator& alloc() noexcept { return alloc_; }
    const cluster_allocator& alloc() const noexcept { return alloc_; }

private:
    /// Fixed-size storage: where the used part ends, from the tables.
    boost::asio::awaitable<std::error_code> find_used_end();

    boost::asio::any_io_executor ex_;
    std::shared_ptr<block_file> file_;
    std::function<std::shared_ptr<void>()> keep_alive_;
    header header_;
    aligned_bytes header_block_;  ///< first io_align_ bytes of the file, as on disk
    std::size_t io_align_ = sector_size;
    geometry geo_;
    std::string backing_name_;
    std::unique_ptr<table> l1_;
    l2_cache cache_{1};
    table_writeback writeback_;
    cluster_allocator alloc_;
    /// NEED_CHECK is written but not yet flushed: the next write-back round
    /// flushes before it writes any table entry.
    bool need_check_unflushed_ = false;
};

/// The on-disk L1 entries past those metadata::l1() holds (entries beyond
/// the image size: nothing looks them up, but a table they link still owns
/// its clusters), walked one piece of up to 1 MiB at a time.
/// Ownership: a value of the walk that uses it.
class l1_pieces {
public:
    explicit l1_pieces(metadata& m);
    /// Entry `i` is in the piece held now.
    bool holds(std::uint32_t i) const noexcept { return i >= first_ && i - first_ < size_; }
    /// Read the piece starting at entry `first` (zeros where the file has a hole).
    boost::asio::awaitable<std::error_code> load(std::uint32_t first);
    /// Write the piece held back (whole; it is whole write blocks).
    boost::asio::awaitable<std::error_code> store();
    std::uint64_t& operator[](std::uint32_t i) noexcept { return piece_[i - first_]; }

private:
    metadata& m_;
    table piece_;
    std::uint32_t first_ = 0, size_ = 0;
};

}  // namespace qed::detail
