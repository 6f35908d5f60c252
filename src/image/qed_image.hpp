// SPDX-License-Identifier: BSL-1.0
// A QED image: its header, L1 table, L2 cache, allocation point, the
// allocating-write queue and the need-check timer. The layers that act on
// it live in their own folders:
//   cluster/find_cluster   L1 -> L2 cache -> L2 read: where guest bytes live
//   request/aiocb          one request's walk over its range, run by run
//   request/allocating_write  the queue and the batch that allocates clusters
//   check/check            consistency check and repair
//   image/qed_open, qed_image, create   open, header updates, timer, close
#pragma once

#include "image/device.hpp"
#include "request/allocating_write.hpp"
#include "table/l2_cache.hpp"
#include "table/writeback.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>

#include <deque>

namespace qed::detail {

class aiocb;

/// A unit of work waiting for the image (move-only, no arguments).
using task = boost::asio::any_completion_handler<void()>;

class qed_image final : public device {
public:
    qed_image(boost::asio::any_io_executor ex, std::shared_ptr<block_file> file, std::string filename,
              open_options options);
    ~qed_image() override;

    /// Open sequence: header, backing name, L1, autoclear, backing chain,
    /// check + repair when dirty. `depth` is this image's level in a chain
    /// and `chain` the identities of the images above it.
    boost::asio::awaitable<std::error_code> open(unsigned depth, std::vector<file_identity> chain);

    // ---- device interface ------------------------------------------------
    image_info info() const override;
    std::uint64_t size() const override { return header_.image_size; }
    std::shared_ptr<device> backing() const override { return backing_; }
    bool is_open() const noexcept override { return !closed_; }
    void read(std::uint64_t offset, mutable_buffers buffers, io_handler handler) override;
    void write(std::uint64_t offset, const_buffers buffers, write_options options, io_handler handler) override;
    void write_zeroes(std::uint64_t offset, std::uint64_t length, zero_options options,
                      op_handler handler) override;
    void discard(std::uint64_t offset, std::uint64_t length, op_handler handler) override;
    void flush(op_handler handler) override;
    void block_status(std::uint64_t offset, std::uint64_t length, unsigned depth,
                      status_handler handler) override;
    void check(check_options options, check_handler handler) override;
    void change_backing_file(std::string name, std::optional<image_format> format, op_handler handler) override;
    void grow(std::uint64_t new_size, op_handler handler) override;
    void make_empty(op_handler handler) override;
    void close(op_handler handler) override;

    // ---- state shared by the layers (all touched on the executor only) ---
    std::shared_ptr<block_file> file_;
    std::shared_ptr<device> backing_;
    std::string filename_;
    open_options options_;
    header header_;
    geometry geo_;
    std::string backing_name_;       ///< as stored in the header
    std::string backing_full_;       ///< resolved path
    std::optional<image_format> backing_format_;
    /// The L1 entries that cover the image size (rounded up to whole write
    /// blocks), not the whole table: a 1 GiB L1 of a small image costs only
    /// the entries it uses. Entries past it are read from disk in pieces by
    /// whatever needs them (check, find_used_end); grow reads in the newly
    /// covered ones.
    std::unique_ptr<table> l1_;
    /// How many L1 entries l1_ holds for an image of `size` bytes.
    std::uint32_t l1_entries_for(std::uint64_t size) const noexcept {
        const std::uint64_t span = geo_.l2_span();
        std::uint64_t n = size / span + (size % span != 0);
        const std::uint64_t per_block = io_align_ / sizeof(std::uint64_t);
        n = std::max<std::uint64_t>(n, 1);
        n = (n + per_block - 1) / per_block * per_block;
        return static_cast<std::uint32_t>(std::min<std::uint64_t>(n, geo_.table_entries));
    }
    /// Read on-disk L1 entries [first, first + piece.size()) into `piece`.
    boost::asio::awaitable<std::error_code> read_l1_piece(std::uint32_t first, table& piece);
    /// The file has a hole at [off, off + len) (reads as zeros): a piece of
    /// a table there holds only zero entries and need not be read. False
    /// when the file can't tell (then the piece is read).
    bool reads_as_zeros(std::uint64_t off, std::uint64_t len) const {
        bool data = true;
        std::uint64_t run = 0;
        if (file_->allocation(off, len, data, run)) return false;
        return !data && run >= len;
    }
    /// Entries per piece when L1 entries past l1_ are read from disk (1 MiB).
    static constexpr std::uint32_t l1_piece_entries = (1u << 20) / sizeof(std::uint64_t);
    l2_cache cache_;
    std::size_t io_align_ = sector_size;  ///< granularity of metadata writes
    aligned_bytes header_block_;          ///< first io_align_ bytes of the file, as on disk

    /// Where the next clusters go (cluster aligned). Everything below is
    /// either referenced, leaked, or the header/L1.
    std::uint64_t file_end_ = 0;
    /// How far the file may hold bytes (at least file_end_). Bytes at or
    /// above it read as zeros, so new clusters there need no zero-fill.
    /// On a fixed-size file (an NBD export) that is always its capacity.
    std::uint64_t physical_size_ = 0;
    /// Unreferenced bytes past file_end_ left by a failed allocation; close truncates them.
    bool tail_garbage_ = false;
    /// Check found corruption it could not repair: NEED_CHECK must stay set.
    bool corrupt_ = false;
    /// Opened dirty without a check (repair_on_open off): nobody knows the
    /// image is consistent, so NEED_CHECK must stay until a check says so.
    bool unchecked_dirty_ = false;
    /// NEED_CHECK may be cleared (close, timer): nothing suggests damage.
    bool may_clear_need_check() const noexcept { return !corrupt_ && !unchecked_dirty_ && !options_.read_only; }
    bool closed_ = false;
    bool closing_ = false;

    allocating_write_queue alloc_queue_;

    // ---- the request gate ------------------------------------------------
    // Requests run concurrently; an exclusive operation (check, grow,
    // change backing file, make empty, close) waits until none are in
    // flight and holds new ones back while it runs. Everything that has to
    // wait takes effect in issue order: a request issued after an exclusive
    // operation runs after it and before any exclusive operation issued
    // later (one FIFO for both kinds).
    template <class F>
    void run_request(F&& f) {
        if (exclusive_running_ || !gate_waiting_.empty()) {
            gate_waiting_.push_back({false, task(std::forward<F>(f))});
            return;
        }
        ++in_flight_;
        std::forward<F>(f)();
    }
    void request_done();
    void run_exclusive(task t);
    void exclusive_done();

    // ---- header and need-check --------------------------------------------
    /// Write the 64-byte header (and nothing else) from header_; in-memory
    /// state is only committed by the caller on success.
    void write_header(const header& h, op_handler handler);
    boost::asio::awaitable<std::error_code> write_header_co(const header& h);
    /// NEED_CHECK is written but not yet flushed: the next write-back round
    /// flushes before it writes any table entry.
    bool need_check_unflushed_ = false;
    /// Set NEED_CHECK on disk before the first allocation.
    void mark_dirty(op_handler handler);
    /// Called by the allocating-write queue when it drains.
    void start_need_check_timer();
    void cancel_need_check_timer();

    // ---- table updates not yet on disk (see table/writeback.hpp) ----------
    table_writeback writeback_;
    /// Everything changed so far written and flushed (a full flush).
    void sync(op_handler handler) { writeback_.sync(true, std::move(handler)); }
    boost::asio::awaitable<std::error_code> sync_co(bool durable);

    /// Read `buffers` at guest `pos` from the backing chain (zeros past its
    /// end, or when there is none). Returns false when done at once.
    bool read_backing(std::uint64_t pos, const mutable_buffers& buffers, op_handler handler);

    /// A data cluster offset is usable: aligned, after the header, inside
    /// the file, and not inside the L1 table (a guest write there would
    /// overwrite metadata).
    bool valid_data_offset(std::uint64_t off) const noexcept {
        return geo_.valid_cluster_offset(off, file_end_) && !inside_l1(off, geo_.cluster_size);
    }
    /// An L2 table offset is usable: the whole table inside the file, clear
    /// of the header and of the L1 table.
    bool valid_l2_offset(std::uint64_t off) const noexcept {
        return geo_.valid_table_offset(off, file_end_) && !inside_l1(off, geo_.table_bytes);
    }
    bool inside_l1(std::uint64_t off, std::uint64_t len) const noexcept {
        return off < header_.l1_table_offset + geo_.table_bytes && header_.l1_table_offset < off + len;
    }

    std::uint64_t new_clusters(std::uint64_t n) {
        const std::uint64_t at = file_end_;
        file_end_ += n * geo_.cluster_size;
        return at;
    }

    void log(const std::string& line) const {
        if (options_.log) options_.log(line);
    }

private:
    /// Start what waits at the gate, in order, as far as it may start now.
    void pump_gate();
    void on_need_check_timer();
    boost::asio::awaitable<std::error_code> clear_need_check();
    boost::asio::awaitable<std::error_code> do_close();
    /// Fixed-size files: set file_end_ from what the tables reference.
    boost::asio::awaitable<std::error_code> find_used_end();
    boost::asio::awaitable<std::error_code> do_grow(std::uint64_t new_size);
    boost::asio::awaitable<std::error_code> do_change_backing_file(std::string name, std::optional<image_format> format);
    boost::asio::awaitable<std::error_code> do_make_empty();
    boost::asio::awaitable<std::error_code> do_check(check_options options, std::shared_ptr<check_result> out);
    boost::asio::awaitable<std::error_code> do_block_status(std::uint64_t offset, std::uint64_t length, unsigned depth,
                                                            std::shared_ptr<std::vector<extent>> out);

    boost::asio::steady_timer need_check_timer_;
    bool timer_armed_ = false;
    unsigned in_flight_ = 0;
    bool exclusive_running_ = false;
    struct gate_entry {
        bool exclusive;
        task run;
    };
    std::deque<gate_entry> gate_waiting_;
};

}  // namespace qed::detail
