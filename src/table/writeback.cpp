// SPDX-License-Identifier: BSL-1.0
#include "table/writeback.hpp"

#include <algorithm>
#include <boost/asio/post.hpp>
#include <cassert>

#include "block_file/completion.hpp"
#include "format/layout.hpp"

namespace qed::detail {
namespace {

void set_bits(std::vector<std::uint64_t>& bits, std::size_t nbits, std::size_t first, std::size_t last) {
    if (bits.empty()) bits.assign((nbits + 63) / 64, 0);
    for (std::size_t i = first; i <= last; ++i) bits[i / 64] |= std::uint64_t{1} << (i % 64);
}

}  // namespace

// One round: a named step at a time, each step's I/Os in parallel.
// Ownership: created by start_round(), deletes itself in finish().
class table_writeback::round {
public:
    round(table_writeback& owner, std::vector<run> l2, std::vector<run> l1, std::vector<op_handler> waiters,
          bool durable, std::shared_ptr<void> keep_alive)
        : w_(owner),
          l2_(std::move(l2)),
          l1_(std::move(l1)),
          waiters_(std::move(waiters)),
          durable_(durable),
          keep_alive_(std::move(keep_alive)) {}

    void step(std::error_code ec = {}) {
        for (;;) {
            if (ec && !error_) error_ = ec;
            if (error_) at_ = state::done;
            switch (at_) {
                case state::flush_data:
                    at_ = state::tables;
                    // Data (and backing prefill) durable before any L2 entry to it.
                    if (!l2_.empty() && w_.target_.flush_before_l2 && w_.target_.flush_before_l2()) {
                        w_.target_.file->async_flush([this](std::error_code fec) {
                            if (!fec && w_.target_.flushed) w_.target_.flushed();
                            step(fec);
                        });
                        return;
                    }
                    break;
                case state::tables:
                    at_ = state::flush_tables;
                    if (!l2_.empty()) return write(l2_);
                    break;
                case state::flush_tables:
                    at_ = state::l1;
                    // New tables (written by their batch) durable before L1 points at them.
                    if (!l1_.empty()) return flush();
                    break;
                case state::l1:
                    at_ = state::flush_end;
                    if (!l1_.empty()) return write(l1_);
                    break;
                case state::flush_end:
                    at_ = state::done;
                    if (durable_) return flush();
                    break;
                case state::done:
                    return finish();
            }
        }
    }

private:
    enum class state { flush_data, tables, flush_tables, l1, flush_end, done };

    void flush() {
        w_.target_.file->async_flush([this](std::error_code ec) { step(ec); });
    }
    void write(const std::vector<run>& runs) {
        group_.open();
        for (const auto& r : runs) {
            const std::uint64_t base = r.table ? r.table->offset : w_.target_.l1_offset;
            const boost::asio::const_buffer b(r.bytes->get(), w_.run_bytes(r));
            group_.add();
            w_.target_.file->async_write_at(base + r.first * w_.target_.align, {&b, 1},
                                            [this, r](std::error_code ec, std::size_t) {
                                                if (ec) w_.remark(r);
                                                if (group_.done(ec)) step(group_.error());
                                            });
        }
        if (group_.close()) step(group_.error());  // (runs is never empty)
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

    table_writeback& w_;
    std::vector<run> l2_, l1_;
    std::vector<op_handler> waiters_;
    bool durable_;
    std::shared_ptr<void> keep_alive_;
    state at_ = state::flush_data;
    fan_in group_;
    std::error_code error_;
};

void table_writeback::mark_table(const l2_ref& t) {
    // A table is listed once, from its first dirty sector until a round takes them.
    if (std::find(tables_.begin(), tables_.end(), t) == tables_.end()) tables_.push_back(t);
}

void table_writeback::mark(const l2_ref& t, std::uint32_t first, std::uint32_t count) {
    const bool was_clean = t->dirty_bits.empty();
    const std::size_t n = sectors_of(t->t.byte_size());
    set_bits(t->dirty_bits, n, std::size_t{first} * 8 / target_.align,
             (std::size_t{first + count} * 8 - 1) / target_.align);
    if (was_clean) tables_.push_back(t);
    assert(std::count(tables_.begin(), tables_.end(), t) == 1);  // a dirty table is listed exactly once
    retry_ = true;
}

void table_writeback::mark_l1(std::uint32_t first, std::uint32_t count) {
    set_bits(l1_bits_, sectors_of(target_.l1->byte_size()), std::size_t{first} * 8 / target_.align,
             (std::size_t{first + count} * 8 - 1) / target_.align);
    retry_ = true;
}

void table_writeback::discard() {
    for (auto& t : tables_) t->dirty_bits.clear();
    tables_.clear();
    l1_bits_.clear();
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
        if (!l1_bits_.empty()) collect(nullptr, l1_bits_, sectors_of(target_.l1->byte_size()));
    } else {
        for (auto& t : tables_) collect(t, t->dirty_bits, sectors_of(t->t.byte_size()));
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
    convert_entries(t.data() + first_entry, reinterpret_cast<std::uint64_t*>(r.bytes->get()), bytes / 8);
}

void table_writeback::remark(const run& r) {
    const std::size_t bytes = r.table ? r.table->t.byte_size() : target_.l1->byte_size();
    auto& bits = r.table ? r.table->dirty_bits : l1_bits_;
    set_bits(bits, sectors_of(bytes), r.first, r.first + r.count - 1);
    if (r.table) mark_table(r.table);
}

void table_writeback::start_round() {
    running_ = true;
    auto waiters = std::move(next_waiters_);
    next_waiters_.clear();
    const bool durable = next_durable_;
    next_durable_ = false;
    auto l2 = take_runs(false);
    auto l1 = take_runs(true);
    auto* r = new round(*this, std::move(l2), std::move(l1), std::move(waiters), durable,
                        target_.keep_alive ? target_.keep_alive() : nullptr);
    r->step();
}

void table_writeback::round_done(std::error_code ec, std::vector<op_handler> waiters) {
    running_ = false;
    if (ec) retry_ = false;  // a failing disk: wait for new changes or a sync
    for (auto& w : waiters) std::move(w)(ec);
    if (!running_ && (!next_waiters_.empty() || (dirty() && retry_))) start_round();
}

}  // namespace qed::detail
