// SPDX-License-Identifier: BSL-1.0
// A block file that can lose power.
//
// Every write and resize goes to the inner file at once (so reads see it)
// and is remembered in a log of unflushed operations, with its submission
// sequence number and whether it completed. A flush, when it completes,
// makes durable the operations that had completed before it started: they
// are applied to a separate "durable" storage and leave the log. Operations
// still in flight when a flush starts are not covered by it.
//
// The test cuts power at the k-th operation submitted (reads, writes,
// flushes and resizes all count): that operation and every later one fail
// with EIO, completions still in flight are delivered as EIO (their writes
// stay "submitted, not completed"), and nothing changes any more. The
// image as it is after the crash is then built from the durable storage
// plus a chosen subset of the logged operations (see power_loss_state::
// image_after), so a test can try every way the unflushed writes may land.
//
// Completions can be delayed by a random (seeded) number of executor hops,
// so operations in flight complete out of order, as on a real device.
//
// Not thread-safe; single-threaded io_context only. QED_PL_TRACE=1 prints
// every operation, completion and flush to stderr.
#pragma once

#include <algorithm>
#include <boost/asio/post.hpp>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <set>
#include <vector>

#include "qed/block_file.hpp"

namespace qed::test {

/// One write, resize or hole punch that was not yet made durable by a flush.
struct logged_op {
    enum kind { write, resize, punch };
    std::uint64_t seq = 0;  ///< submission index among all operations
    kind what = write;
    std::uint64_t offset = 0;      ///< write, punch
    std::vector<std::byte> bytes;  ///< write
    std::uint64_t size = 0;        ///< new size of a resize; length of a punch
    bool completed = false;        ///< its handler reported success
};

/// What survives of one logged operation: all of it, none, or (writes)
/// only some of its 512-byte sectors.
struct kept_op {
    std::size_t index = 0;      ///< into power_loss_state::log
    std::vector<bool> sectors;  ///< empty: the whole operation; else per sector
};

/// The shared state of one power_loss_file (kept after the file is gone).
struct power_loss_state {
    std::shared_ptr<memory_storage> durable;
    std::vector<logged_op> log;   ///< unflushed operations, in submission order
    std::uint64_t submitted = 0;  ///< operations submitted so far
    std::int64_t cut_at = -1;     ///< the operation at which power fails (-1: never)
    bool crashed = false;
    std::uint64_t flushes_folded = 0;  ///< flushes that made something durable
    std::mt19937 rng{1};               ///< completion delays
    unsigned max_hops = 0;             ///< completions are delayed 0..max_hops executor hops
    bool trace = std::getenv("QED_PL_TRACE") != nullptr;
    /// Writes and flushes for which this returns true are held in flight
    /// (a held write has reached the file, a held flush has taken its
    /// snapshot of what it covers) but don't complete until release_held():
    /// lets a test keep one operation pending while others go on.
    /// Arguments: "write" or "flush", offset, length.
    std::function<bool(const char* what, std::uint64_t offset, std::uint64_t len)> hold;
    std::vector<boost::asio::any_completion_handler<void()>> held;

    /// Cut the power now: every operation from here on fails.
    void cut() { crashed = true; }
    /// Let the held completions run (as failures if the power is off).
    void release_held(const boost::asio::any_io_executor& ex) {
        auto h = std::move(held);
        held.clear();
        for (auto& f : h) boost::asio::post(ex, std::move(f));
    }

    /// Build the image after the crash: the durable bytes plus `keep`
    /// (applied in submission order). The file size is the durable size,
    /// changed by kept resizes and grown by kept writes.
    std::shared_ptr<memory_storage> image_after(const std::vector<kept_op>& keep) const {
        auto out = durable->clone();
        std::vector<kept_op> sorted = keep;
        std::sort(sorted.begin(), sorted.end(), [](const kept_op& a, const kept_op& b) { return a.index < b.index; });
        for (const auto& k : sorted) apply(*out, log[k.index], k.sectors);
        return out;
    }

    static void apply(memory_storage& st, const logged_op& op, const std::vector<bool>& sectors = {}) {
        if (op.what == logged_op::resize) {
            st.resize(op.size);
            return;
        }
        if (op.what == logged_op::punch) {
            st.punch(op.offset, op.size);
            return;
        }
        if (sectors.empty()) {
            st.write(op.offset, op.bytes);
            return;
        }
        // Tear at absolute 512-byte boundaries.
        std::uint64_t pos = op.offset;
        const std::uint64_t end = op.offset + op.bytes.size();
        std::size_t i = 0;
        while (pos < end) {
            const std::uint64_t next = std::min(end, (pos / 512 + 1) * 512);
            if (i < sectors.size() && sectors[i])
                st.write(pos, {op.bytes.data() + (pos - op.offset), static_cast<std::size_t>(next - pos)});
            pos = next;
            ++i;
        }
    }
    /// Number of 512-byte pieces a write can be torn into (1: resizes and
    /// punches land whole or not at all).
    static std::size_t pieces(const logged_op& op) {
        if (op.what != logged_op::write || op.bytes.empty()) return 1;
        const std::uint64_t first = op.offset / 512, last = (op.offset + op.bytes.size() - 1) / 512;
        return static_cast<std::size_t>(last - first + 1);
    }
};

class power_loss_file final : public block_file, public std::enable_shared_from_this<power_loss_file> {
public:
    /// `inner` must be a file over `current`; the durable image starts as a
    /// copy of what `current` holds now.
    power_loss_file(std::shared_ptr<block_file> inner, const memory_storage& current,
                    std::shared_ptr<power_loss_state> state)
        : inner_(std::move(inner)), st_(std::move(state)) {
        if (!st_->durable) st_->durable = current.clone();
    }

    executor_type get_executor() const override { return inner_->get_executor(); }

    void async_read_at(std::uint64_t off, std::span<const boost::asio::mutable_buffer> b, io_handler h) override {
        if (power_fails("read", off, boost::asio::buffer_size(b))) return fail(std::move(h));
        inner_->async_read_at(off, b,
                              [self = shared_from_this(), h = std::move(h)](std::error_code ec, std::size_t n) mutable {
                                  self->deliver(self->hops(), [self, h = std::move(h), ec, n]() mutable {
                                      if (self->st_->crashed) return std::move(h)(eio(), std::size_t{0});
                                      std::move(h)(ec, n);
                                  });
                              });
    }

    void async_write_at(std::uint64_t off, std::span<const boost::asio::const_buffer> b, io_handler h) override {
        if (power_fails("write", off, boost::asio::buffer_size(b))) return fail(std::move(h));
        logged_op op;
        op.seq = st_->submitted - 1;
        op.offset = off;
        for (const auto& x : b) {
            const auto* p = static_cast<const std::byte*>(x.data());
            op.bytes.insert(op.bytes.end(), p, p + x.size());
        }
        const std::uint64_t seq = op.seq;
        const bool hold = st_->hold && st_->hold("write", off, op.bytes.size());
        st_->log.push_back(std::move(op));
        inner_->async_write_at(
            off, b,
            [self = shared_from_this(), seq, hold, h = std::move(h)](std::error_code ec, std::size_t n) mutable {
                auto done = [self, seq, h = std::move(h), ec, n]() mutable {
                    if (self->st_->crashed) return std::move(h)(eio(), std::size_t{0});
                    self->settle(seq, ec);
                    std::move(h)(ec, n);
                };
                if (hold) {
                    self->st_->held.emplace_back(std::move(done));
                    return;
                }
                self->deliver(self->hops(), std::move(done));
            });
    }

    void async_flush(op_handler h) override {
        if (power_fails("flush")) return fail_op(std::move(h));
        // What this flush covers: the operations completed before it started.
        std::vector<std::uint64_t> covered;
        for (const auto& op : st_->log)
            if (op.completed) covered.push_back(op.seq);
        const bool hold = st_->hold && st_->hold("flush", 0, 0);
        inner_->async_flush([self = shared_from_this(), hold, covered = std::move(covered),
                             h = std::move(h)](std::error_code ec) mutable {
            auto done = [self, covered = std::move(covered), h = std::move(h), ec]() mutable {
                if (self->st_->crashed) return std::move(h)(eio());
                if (!ec) self->fold(covered);
                std::move(h)(ec);
            };
            if (hold) {
                self->st_->held.emplace_back(std::move(done));
                return;
            }
            self->deliver(self->hops(), std::move(done));
        });
    }

    void async_resize(std::uint64_t size, op_handler h) override {
        if (power_fails("resize", size)) return fail_op(std::move(h));
        logged_op op;
        op.seq = st_->submitted - 1;
        op.what = logged_op::resize;
        op.size = size;
        const std::uint64_t seq = op.seq;
        st_->log.push_back(std::move(op));
        inner_->async_resize(size, metadata_done(seq, std::move(h)));
    }

    void async_punch_hole(std::uint64_t offset, std::uint64_t length, op_handler h) override {
        if (power_fails("punch", offset, length)) return fail_op(std::move(h));
        logged_op op;
        op.seq = st_->submitted - 1;
        op.what = logged_op::punch;
        op.offset = offset;
        op.size = length;
        const std::uint64_t seq = op.seq;
        st_->log.push_back(std::move(op));
        inner_->async_punch_hole(offset, length, metadata_done(seq, std::move(h)));
    }

    std::uint64_t size(std::error_code& ec) const override { return inner_->size(ec); }
    std::size_t alignment() const noexcept override { return inner_->alignment(); }
    std::error_code allocation(std::uint64_t offset, std::uint64_t length, bool& data,
                               std::uint64_t& run) const override {
        return inner_->allocation(offset, length, data, run);
    }
    file_identity identity() const noexcept override { return inner_->identity(); }
    bool read_only() const noexcept override { return inner_->read_only(); }
    const char* backend_name() const noexcept override { return "power-loss"; }

private:
    static std::error_code eio() { return std::make_error_code(std::errc::io_error); }

    /// Completion of a resize or punch: delayed, failed after the crash,
    /// marked completed on success (an unsupported punch is not logged as done).
    op_handler metadata_done(std::uint64_t seq, op_handler h) {
        return [self = shared_from_this(), seq, h = std::move(h)](std::error_code ec) mutable {
            self->deliver(self->hops(), [self, seq, h = std::move(h), ec]() mutable {
                if (self->st_->crashed) return std::move(h)(eio());
                self->settle(seq, ec);
                std::move(h)(ec);
            });
        };
    }

    /// Count the operation being submitted; true when the power is off.
    bool power_fails(const char* what, std::uint64_t off = 0, std::uint64_t len = 0) {
        const std::uint64_t n = st_->submitted++;
        if (st_->trace)
            std::fprintf(stderr, "[pl] #%llu %s %llu+%llu%s\n", static_cast<unsigned long long>(n), what,
                         static_cast<unsigned long long>(off), static_cast<unsigned long long>(len),
                         st_->crashed || (st_->cut_at >= 0 && n >= static_cast<std::uint64_t>(st_->cut_at))
                             ? " (power off)"
                             : "");
        if (!st_->crashed && st_->cut_at >= 0 && n >= static_cast<std::uint64_t>(st_->cut_at)) st_->crashed = true;
        return st_->crashed;
    }
    unsigned hops() {
        if (st_->max_hops == 0) return 0;
        return std::uniform_int_distribution<unsigned>(0, st_->max_hops)(st_->rng);
    }
    template <class F>
    void deliver(unsigned n, F f) {
        if (n == 0) return f();
        boost::asio::post(get_executor(), [self = shared_from_this(), n, f = std::move(f)]() mutable {
            self->deliver(n - 1, std::move(f));
        });
    }
    /// The inner file finished an operation: done, or (an error of the inner
    /// file itself, e.g. a punch it can't do) it changed nothing.
    void settle(std::uint64_t seq, std::error_code ec) {
        if (st_->trace)
            std::fprintf(stderr, "[pl] #%llu done%s\n", static_cast<unsigned long long>(seq), ec ? " (failed)" : "");
        for (auto it = st_->log.begin(); it != st_->log.end(); ++it) {
            if (it->seq != seq) continue;
            if (ec)
                st_->log.erase(it);
            else
                it->completed = true;
            return;
        }
    }
    void fold(const std::vector<std::uint64_t>& covered) {
        if (covered.empty()) return;
        const std::set<std::uint64_t> s(covered.begin(), covered.end());
        std::vector<logged_op> rest;
        for (auto& op : st_->log) {
            if (s.count(op.seq))
                power_loss_state::apply(*st_->durable, op);
            else
                rest.push_back(std::move(op));
        }
        st_->log = std::move(rest);
        ++st_->flushes_folded;
        if (st_->trace) {
            std::fprintf(stderr, "[pl] flush done: durable now");
            for (auto q : covered) std::fprintf(stderr, " #%llu", static_cast<unsigned long long>(q));
            std::fprintf(stderr, "\n");
        }
    }
    void fail(io_handler h) {
        boost::asio::post(get_executor(), [h = std::move(h)]() mutable { std::move(h)(eio(), std::size_t{0}); });
    }
    void fail_op(op_handler h) {
        boost::asio::post(get_executor(), [h = std::move(h)]() mutable { std::move(h)(eio()); });
    }

    std::shared_ptr<block_file> inner_;
    std::shared_ptr<power_loss_state> st_;
};

}  // namespace qed::test
