// SPDX-License-Identifier: BSL-1.0
#include "table/writeback.hpp"

#include <boost/asio/post.hpp>

#include <algorithm>
#include <bit>

namespace qed::detail {
namespace {

void set_bits(std::vector<std::uint64_t>& bits, std::size_t nbits, std::size_t first, std::size_t last) {
    if (bits.empty()) bits.assign((nbits + 63) / 64, 0);
    for (std::size_t i = first; i <= last; ++i) bits[i / 64] |= std::uint64_t{1} << (i % 64);
}

}  // namespace

// One round: a named step at a time, each step's I/Os in parallel.
class table_writeback::round {
public:
    round(table_writeback& owner, std::vector<run> l2, std::vector<run> l1, std::vector<op_handler> waiters,
          bool durable)
        : w_(owner), l2_(std::move(l2)), l1_(std::move(l1)), waiters_(std::move(waiters)), durable_(durable) {}

    void next() {
        for (;;) {
            if (error_) at_ = step::done;
            switch (at_) {
            case step::flush_data:
                at_ = step::tables;
                // Data (and backing prefill) durable before any L2 entry to it.
                if (!l2_.empty() && w_.target_.flush_before_l2 && w_.target_.flush_before_l2()) {
                    pending_ = 1;
                    w_.target_.file->async_flush([this](std::error_code ec) {
                        if (!ec && w_.target_.flushed) w_.target_.flushed();
                        one_done(ec);
                    });
                    return;
                }
                break;
            case step::tables:
                at_ = step::flush_tables;
                if (!l2_.empty()) return write(l2_);
                break;
            case step::flush_tables:
                at_ = step::l1;
                // New tables (written whole by their batch) durable before L1 points at them.
                if (!l1_.empty()) return flush();
                break;
            case step::l1:
                at_ = step::flush_end;
                if (!l1_.empty()) return write(l1_);
                break;
            case step::flush_end:
                at_ = step::done;
                if (durable_) return flush();
                break;
            case step::done:
                return finish();
            }
        }
    }

private:
    enum class step { flush_data, tables, flush_tables, l1, flush_end, done };

    void flush() {
        pending_ = 1;
        w_.target_.file->async_flush([this](std::error_code ec) { one_done(ec); });
    }
    void write(const std::vector<run>& runs) {
        pending_ = static_cast<unsigned>(runs.size());
        for (const auto& r : runs) {
            const std::uint64_t base = r.table ? r.table->offset : w_.target_.l1_offset;
            const std::size_t bytes = w_.run_bytes(r);
            const boost::asio::const_buffer b(r.bytes->get(), bytes);
            w_.target_.file->async_write_at(base + r.first * w_.target_.align, {&b, 1},
                                            [this, r](std::error_code ec, std::size_t) {
                                                if (ec) w_.remark(r);
                                                one_done(ec);
                                            });
        }
    }
    void one_done(std::error_code ec) {
        if (ec && !error_) error_ = ec;
        if (--pending_ == 0) next();
    }
    void finish() {
        if (error_) {  // whatever this round did not get onto the disk goes back
            for (const auto& r : l2_) w_.remark(r);
            for (const auto& r : l1_) w_.remark(r);
        }
        table_writeback& w = w_;
        auto waiters = std::move(waiters_);
        const std::error_code ec = error_;
        auto alive = std::move(keep_alive_);  // the owner outlives this call
        delete this;
        w.round_done(ec, std::move(waiters));
    }

public:
    std::shared_ptr<void> keep_alive_;

private:

    table_writeback& w_;
    std::vector<run> l2_, l1_;
    std::vector<op_handler> waiters_;
    bool durable_;
    step at_ = step::flush_data;
    unsigned pending_ = 0;
    std::error_code error_;
};

void table_writeback::mark(const l2_ref& t, std::uint32_t first, std::uint32_t count) {
    const std::size_t n = sectors_of(t->t.byte_size());
    set_bits(t->dirty_bits, n, std::size_t{first} * 8 / target_.align,
             (std::size_t{first + count} * 8 - 1) / target_.align);
    if (!t->dirty) {
        t->dirty = true;
        tables_.push_back(t);
    }
    retry_ = true;
}

void table_writeback::mark_l1(std::uint32_t first, std::uint32_t count) {
    set_bits(l1_bits_, sectors_of(target_.l1->byte_size()), std::size_t{first} * 8 / target_.align,
             (std::size_t{first + count} * 8 - 1) / target_.align);
    l1_dirty_ = true;
    retry_ = true;
}

void table_writeback::discard() {
    for (auto& t : tables_) {
        t->dirty = false;
        t->dirty_bits.clear();
    }
    tables_.clear();
    l1_bits_.clear();
    l1_dirty_ = false;
}

void table_writeback::kick() {
    if (!running_ && dirty() && retry_) start_round();
}

void table_writeback::sync(bool durable, op_handler handler) {
    next_waiters_.push_back(std::move(handler));
    next_durable_ |= durable;
    if (!running_) start_round();
}

// Contiguous dirty sectors become one write each; the flags are cleared now,
// so changes made while the round runs are picked up by the next one.
std::vector<table_writeback::run> table_writeback::take_runs(bool l1) {
    std::vector<run> out;
    auto collect = [&](const l2_ref& t, std::vector<std::uint64_t>& bits, std::size_t nbits) {
        for (std::size_t i = 0; i < nbits;) {
            if (!((bits[i / 64] >> (i % 64)) & 1)) {
                ++i;
                continue;
            }
            std::size_t j = i;
            while (j < nbits && ((bits[j / 64] >> (j % 64)) & 1)) ++j;
            run r{t, i, j - i, nullptr};
            snapshot(r);
            out.push_back(std::move(r));
            i = j;
        }
        bits.clear();
    };
    if (l1) {
        if (l1_dirty_) collect(nullptr, l1_bits_, sectors_of(target_.l1->byte_size()));
        l1_dirty_ = false;
    } else {
        for (auto& t : tables_) {
            collect(t, t->dirty_bits, sectors_of(t->t.byte_size()));
            t->dirty = false;
        }
        tables_.clear();
    }
    return out;
}

std::size_t table_writeback::run_bytes(const run& r) const {
    const std::size_t size = r.table ? r.table->t.byte_size() : target_.l1->byte_size();
    return std::min(r.count * target_.align, size - r.first * target_.align);
}

// Copy the run's sectors, in on-disk (little-endian) order.
void table_writeback::snapshot(run& r) const {
    const table& t = r.table ? r.table->t : *target_.l1;
    const std::size_t bytes = run_bytes(r);
    r.bytes = std::make_shared<aligned_bytes>(allocate_aligned(bytes, false));
    const std::size_t first_entry = r.first * target_.align / 8;
    auto* out = reinterpret_cast<std::uint64_t*>(r.bytes->get());
    for (std::size_t i = 0; i < bytes / 8; ++i) {
        std::uint64_t v = t[first_entry + i];
        if constexpr (std::endian::native == std::endian::big) v = __builtin_bswap64(v);
        out[i] = v;
    }
}

void table_writeback::remark(const run& r) {
    const std::size_t bytes = r.table ? r.table->t.byte_size() : target_.l1->byte_size();
    auto& bits = r.table ? r.table->dirty_bits : l1_bits_;
    set_bits(bits, sectors_of(bytes), r.first, r.first + r.count - 1);
    if (r.table) {
        if (!r.table->dirty) {
            r.table->dirty = true;
            tables_.push_back(r.table);
        }
    } else {
        l1_dirty_ = true;
    }
}

void table_writeback::start_round() {
    running_ = true;
    auto waiters = std::move(next_waiters_);
    next_waiters_.clear();
    const bool durable = next_durable_;
    next_durable_ = false;
    auto l2 = take_runs(false);
    auto l1 = take_runs(true);
    auto* r = new round(*this, std::move(l2), std::move(l1), std::move(waiters), durable);
    if (target_.keep_alive) r->keep_alive_ = target_.keep_alive();
    r->next();
}

void table_writeback::round_done(std::error_code ec, std::vector<op_handler> waiters) {
    running_ = false;
    if (ec) retry_ = false;  // a failing disk: wait for new changes or a sync
    for (auto& w : waiters) std::move(w)(ec);
    if (!running_ && (!next_waiters_.empty() || (dirty() && retry_))) start_round();
}

}  // namespace qed::detail
