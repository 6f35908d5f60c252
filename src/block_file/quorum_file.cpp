// SPDX-License-Identifier: BSL-1.0
// QEMU's quorum driver (quorum_file.hpp says what it does).
#include "block_file/quorum_file.hpp"

#include <algorithm>
#include <atomic>
#include <boost/asio/post.hpp>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <new>

#include "block_file/posix_io.hpp"
#include "qed/error.hpp"

namespace qed::detail {
namespace {

namespace asio = boost::asio;

struct free_deleter {
    void operator()(std::byte* p) const noexcept { std::free(p); }
};
using byte_buffer = std::unique_ptr<std::byte[], free_deleter>;

byte_buffer allocate(std::size_t n, std::size_t align) {
    const std::size_t a = std::max<std::size_t>(align, alignof(std::max_align_t));
    const std::size_t size = std::max((n + a - 1) / a * a, a);
    auto* p = static_cast<std::byte*>(std::aligned_alloc(a, size));
    if (!p) throw std::bad_alloc();
    return byte_buffer(p);
}

std::atomic<std::uint64_t> next_quorum_id{1};

/// QEMU's vote: among versions in order of first appearance, the one with
/// the most votes; on a tie the later one (QEMU keeps its list newest first
/// and takes the first with the most votes).
std::size_t winner(const std::vector<std::size_t>& votes) {
    std::size_t best = 0;
    for (std::size_t v = 1; v < votes.size(); ++v)
        if (votes[v] >= votes[best]) best = v;
    return best;
}

/// The error most failed children gave (QEMU's quorum_vote_error).
std::error_code error_vote(const std::vector<std::error_code>& results) {
    std::vector<std::error_code> errors;
    std::vector<std::size_t> votes;
    for (const auto& ec : results) {
        if (!ec) continue;
        auto it = std::find(errors.begin(), errors.end(), ec);
        if (it == errors.end()) {
            errors.push_back(ec);
            votes.push_back(1);
        } else {
            ++votes[static_cast<std::size_t>(it - errors.begin())];
        }
    }
    if (errors.empty()) return errno_code(EIO);
    return errors[winner(votes)];
}

std::size_t successes(const std::vector<std::error_code>& results) {
    return static_cast<std::size_t>(std::count_if(results.begin(), results.end(), [](const auto& ec) { return !ec; }));
}

class quorum_file final : public block_file, public std::enable_shared_from_this<quorum_file> {
public:
    quorum_file(std::vector<std::shared_ptr<block_file>> children, quorum_options o, std::size_t align)
        : children_(std::move(children)), o_(std::move(o)), align_(align), id_{~std::uint64_t{2}, next_quorum_id++} {
        std::string names;
        for (const auto& n : o_.names) names += (names.empty() ? "" : ", ") + n;
        label_ = "quorum (" + names + ")";
    }

    executor_type get_executor() const override { return children_.front()->get_executor(); }

    void async_read_at(std::uint64_t offset, std::span<const asio::mutable_buffer> buffers,
                       io_handler handler) override {
        auto op = std::make_shared<read_op>(offset, buffers, std::move(handler), children_.size());
        if (o_.fifo) return read_fifo(std::move(op), 0);
        for (std::size_t i = 0; i < children_.size(); ++i) op->copies.push_back(allocate(op->length, align_));
        for (std::size_t i = 0; i < children_.size(); ++i) {
            const asio::mutable_buffer b(op->copies[i].get(), op->length);
            children_[i]->async_read_at(offset, {&b, 1},
                                        [self = shared_from_this(), op, i](boost::system::error_code ec, std::size_t) {
                                            op->results[i] = ec;
                                            if (--op->pending == 0) self->vote(op);
                                        });
        }
    }

    void async_write_at(std::uint64_t offset, std::span<const asio::const_buffer> buffers,
                        io_handler handler) override {
        const std::size_t n = total(buffers);
        fan_out(
            "write", offset, n,
            [offset, buffers](block_file& f, op_handler h) {
                f.async_write_at(
                    offset, buffers,
                    [h = std::move(h)](boost::system::error_code ec, std::size_t) mutable { std::move(h)(ec); });
            },
            with_bytes(std::move(handler), n));
    }

    void async_write_fua_at(std::uint64_t offset, std::span<const asio::const_buffer> buffers,
                            io_handler handler) override {
        const std::size_t n = total(buffers);
        fan_out(
            "write", offset, n,
            [offset, buffers](block_file& f, op_handler h) {
                f.async_write_fua_at(
                    offset, buffers,
                    [h = std::move(h)](boost::system::error_code ec, std::size_t) mutable { std::move(h)(ec); });
            },
            with_bytes(std::move(handler), n));
    }

    void async_flush(op_handler handler) override {
        fan_out(
            "flush", 0, 0, [](block_file& f, op_handler h) { f.async_flush(std::move(h)); }, std::move(handler));
    }

    void async_resize(std::uint64_t size, op_handler handler) override {
        fan_out(
            "resize", size, 0, [size](block_file& f, op_handler h) { f.async_resize(size, std::move(h)); },
            std::move(handler));
    }

    void async_punch_hole(std::uint64_t offset, std::uint64_t length, op_handler handler) override {
        fan_out(
            "write-zeroes", offset, length,
            [offset, length](block_file& f, op_handler h) { f.async_punch_hole(offset, length, std::move(h)); },
            std::move(handler), /*quiet_unsupported=*/true);
    }

    void async_close(op_handler handler) override {
        struct state {
            std::size_t pending;
            std::error_code first;
            op_handler done;
        };
        auto st = std::make_shared<state>(state{children_.size(), {}, std::move(handler)});
        for (auto& c : children_) {
            c->async_close([st, c](boost::system::error_code ec) {
                if (ec && !st->first) st->first = ec;
                if (--st->pending == 0) std::move(st->done)(st->first);
            });
        }
    }

    std::uint64_t size(std::error_code& ec) const override {
        const std::uint64_t first = children_.front()->size(ec);
        if (ec) return 0;
        for (std::size_t i = 1; i < children_.size(); ++i) {
            const std::uint64_t s = children_[i]->size(ec);
            if (ec) return 0;
            if (s != first) {
                ec = errno_code(EIO);
                return 0;
            }
        }
        return first;
    }

    std::size_t alignment() const noexcept override { return align_; }

    // QEMU's quorum_co_block_status: a hole (reads as zeros) only where every
    // child says so, for the shortest of their runs; else data, for the
    // longest of the children's data runs.
    std::error_code allocation(std::uint64_t offset, std::uint64_t length, bool& data,
                               std::uint64_t& run) const override {
        std::uint64_t zero_run = length, data_run = 0;
        for (const auto& c : children_) {
            bool d = true;
            std::uint64_t r = length;
            if (c->allocation(offset, length, d, r)) {
                data_run = length;
                break;
            }
            if (d)
                data_run = std::max(data_run, r);
            else
                zero_run = std::min(zero_run, r);
        }
        data = data_run != 0;
        run = data ? data_run : zero_run;
        return {};
    }

    bool fixed_size() const noexcept override {
        return std::any_of(children_.begin(), children_.end(), [](const auto& c) { return c->fixed_size(); });
    }
    file_identity identity() const noexcept override { return id_; }
    bool read_only() const noexcept override {
        return std::any_of(children_.begin(), children_.end(), [](const auto& c) { return c->read_only(); });
    }
    const char* backend_name() const noexcept override { return "quorum"; }

private:
    struct read_op {
        read_op(std::uint64_t off, std::span<const asio::mutable_buffer> b, io_handler h, std::size_t children)
            : offset(off), out(b.begin(), b.end()), handler(std::move(h)), results(children), pending(children) {
            for (const auto& x : out) length += x.size();
        }
        std::uint64_t offset;
        std::size_t length = 0;
        std::vector<asio::mutable_buffer> out;
        io_handler handler;
        std::vector<byte_buffer> copies;  // one per child (quorum pattern)
        std::vector<std::error_code> results;
        std::size_t pending;
    };

    template <class Buffers>
    static std::size_t total(const Buffers& buffers) {
        std::size_t n = 0;
        for (const auto& b : buffers) n += b.size();
        return n;
    }

    static op_handler with_bytes(io_handler h, std::size_t n) {
        return [h = std::move(h), n](boost::system::error_code ec) mutable { std::move(h)(ec, ec ? 0 : n); };
    }

    std::string what_at(const char* what, std::uint64_t offset, std::uint64_t length) const {
        if (std::strcmp(what, "flush") == 0) return label_ + ": flush";
        if (std::strcmp(what, "resize") == 0) return label_ + ": resize to " + std::to_string(offset) + " bytes";
        return label_ + ": " + what + " of " + std::to_string(length) + " bytes at offset " + std::to_string(offset);
    }

    void log(const std::string& line) const {
        if (o_.log) o_.log(line);
    }

    /// Start `start` on every child; `done` gets success when at least
    /// vote-threshold of them succeeded, else the error most of them gave.
    template <class Start>
    void fan_out(const char* what, std::uint64_t offset, std::uint64_t length, Start start, op_handler done,
                 bool quiet_unsupported = false) {
        struct state {
            std::vector<std::error_code> results;
            std::size_t pending;
            op_handler done;
        };
        auto st = std::make_shared<state>(
            state{std::vector<std::error_code>(children_.size()), children_.size(), std::move(done)});
        for (std::size_t i = 0; i < children_.size(); ++i) {
            start(*children_[i], [self = shared_from_this(), st, i, what, offset, length,
                                  quiet_unsupported](boost::system::error_code ec) {
                st->results[i] = ec;
                if (--st->pending) return;
                const std::size_t ok = successes(st->results);
                if (ok >= self->o_.threshold) return std::move(st->done)(std::error_code{});
                const std::error_code e = error_vote(st->results);
                // Hole punching the children can't do is done by the caller
                // with zeros instead: not a failure worth a line.
                if (!(quiet_unsupported && e == errc::not_supported))
                    self->log(self->what_at(what, offset, length) + ": " + std::to_string(ok) + " of " +
                              std::to_string(st->results.size()) + " children succeeded, vote-threshold " +
                              std::to_string(self->o_.threshold) + ": " + e.message());
                std::move(st->done)(e);
            });
        }
    }

    void finish(const std::shared_ptr<read_op>& op, std::error_code ec) {
        std::move(op->handler)(ec, ec ? 0 : op->length);
    }

    void read_fifo(std::shared_ptr<read_op> op, std::size_t i) {
        children_[i]->async_read_at(op->offset, op->out,
                                    [self = shared_from_this(), op, i](boost::system::error_code ec, std::size_t) {
                                        if (!ec) return self->finish(op, {});
                                        if (i + 1 < self->children_.size()) return self->read_fifo(op, i + 1);
                                        self->log(self->what_at("read", op->offset, op->length) +
                                                  ": every child failed, the last with: " + ec.message());
                                        self->finish(op, ec);
                                    });
    }

    void vote(const std::shared_ptr<read_op>& op) {
        const std::size_t ok = successes(op->results);
        if (ok < o_.threshold) {
            const std::error_code e = error_vote(op->results);
            log(what_at("read", op->offset, op->length) + ": " + std::to_string(ok) + " of " +
                std::to_string(children_.size()) + " children succeeded, vote-threshold " +
                std::to_string(o_.threshold) + ": " + e.message());
            return finish(op, e);
        }
        // Versions: the first child of each, and how many children agree.
        std::vector<std::size_t> first, votes;
        std::vector<std::size_t> version_of(children_.size(), SIZE_MAX);
        for (std::size_t i = 0; i < children_.size(); ++i) {
            if (op->results[i]) continue;
            std::size_t v = 0;
            while (v < first.size() && std::memcmp(op->copies[first[v]].get(), op->copies[i].get(), op->length) != 0)
                ++v;
            if (v == first.size()) {
                first.push_back(i);
                votes.push_back(0);
            }
            ++votes[v];
            version_of[i] = v;
        }
        if (o_.blkverify && first.size() > 1) {
            const std::byte* a = op->copies[first[0]].get();
            const std::byte* b = op->copies[first[1]].get();
            std::size_t at = 0;
            while (a[at] == b[at]) ++at;
            // QEMU's line (it then ends the process; we fail the read).
            log("quorum: offset=" + std::to_string(op->offset) + " bytes=" + std::to_string(op->length) +
                " contents mismatch at offset " + std::to_string(op->offset + at));
            return finish(op, errno_code(EIO));
        }
        const std::size_t w = winner(votes);
        if (votes[w] < o_.threshold) {
            log(what_at("read", op->offset, op->length) + ": no version of the data has vote-threshold " +
                std::to_string(o_.threshold) + " identical copies (" + std::to_string(first.size()) +
                " versions from " + std::to_string(ok) + " children, the largest " + std::to_string(votes[w]) + ")");
            return finish(op, errno_code(EIO));
        }
        const std::byte* data = op->copies[first[w]].get();
        std::size_t at = 0;
        for (const auto& b : op->out) {
            std::memcpy(b.data(), data + at, b.size());
            at += b.size();
        }
        if (!o_.rewrite_corrupted || first.size() == 1) return finish(op, {});
        // Put the winner back where another version was read (QEMU ignores
        // errors there: it is only a correction attempt); the read completes
        // once every rewrite did.
        std::vector<std::size_t> stale;
        for (std::size_t i = 0; i < children_.size(); ++i)
            if (!op->results[i] && version_of[i] != w) stale.push_back(i);
        auto pending = std::make_shared<std::size_t>(stale.size());
        const asio::const_buffer b(data, op->length);
        for (const std::size_t i : stale) {
            children_[i]->async_write_at(
                op->offset, {&b, 1}, [self = shared_from_this(), op, pending](boost::system::error_code, std::size_t) {
                    if (--*pending == 0) self->finish(op, {});
                });
        }
    }

    std::vector<std::shared_ptr<block_file>> children_;
    quorum_options o_;
    std::size_t align_;
    file_identity id_;
    std::string label_;
};

}  // namespace

std::shared_ptr<block_file> make_quorum_file(std::vector<std::shared_ptr<block_file>> children, quorum_options options,
                                             std::string& why) {
    const std::size_t n = children.size();
    if (n < 1) {
        why = "Number of provided children must be 1 or more";
        return nullptr;
    }
    if (options.threshold < 1) {
        why = "Parameter 'vote-threshold' expects a value >= 1";
        return nullptr;
    }
    if (options.threshold > n) {
        why = "threshold may not exceed children count";
        return nullptr;
    }
    if (options.fifo) {
        options.blkverify = false;  // QEMU reads neither with read-pattern=fifo
        options.rewrite_corrupted = false;
    }
    if (options.blkverify && (n != 2 || options.threshold != 2)) {
        why = "blkverify=on can only be set if there are exactly two files and vote-threshold is 2";
        return nullptr;
    }
    if (options.rewrite_corrupted && options.blkverify) {
        why = "rewrite-corrupted=on cannot be used with blkverify=on";
        return nullptr;
    }
    const bool read_only = std::any_of(children.begin(), children.end(), [](const auto& c) { return c->read_only(); });
    if (options.rewrite_corrupted && read_only) {
        why = "Block node is read-only (rewrite-corrupted=on writes to the children)";
        return nullptr;
    }
    options.names.resize(n);
    for (std::size_t i = 0; i < n; ++i)
        if (options.names[i].empty()) options.names[i] = "child " + std::to_string(i);
    std::size_t align = 1;
    std::vector<std::uint64_t> sizes;
    for (const auto& c : children) {
        align = std::max(align, c->alignment());
        std::error_code ec;
        sizes.push_back(c->size(ec));
        if (ec) {
            why = "Could not refresh total sector count: " + ec.message();
            return nullptr;
        }
    }
    if (std::adjacent_find(sizes.begin(), sizes.end(), std::not_equal_to<>()) != sizes.end()) {
        std::string list;
        for (std::size_t i = 0; i < n; ++i)
            list += (i ? ", " : "") + options.names[i] + ": " + std::to_string(sizes[i]) + " bytes";
        why = "Could not refresh total sector count: the quorum's children differ in size (" + list + ")";
        return nullptr;
    }
    return std::make_shared<quorum_file>(std::move(children), std::move(options), align);
}

}  // namespace qed::detail
