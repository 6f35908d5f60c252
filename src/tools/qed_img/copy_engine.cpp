// SPDX-License-Identifier: BSL-1.0
#include "qed_img/copy_engine.hpp"

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "common/jobs.hpp"

namespace qed::tools::img {
namespace {

using step = step_fn;

/// `done`, noting in the plan which image failed first.
job_done noting(const copy_plan& plan, copy_side side, job_done done) {
    return [&plan, side, done = std::move(done)](std::error_code ec) {
        if (ec && plan.failed == copy_side::none) plan.failed = side;
        done(ec);
    };
}

constexpr std::uint64_t sector = 512;

/// --salvage: [off, end) of the source one sector at a time, in order;
/// what can't be read is zeros and one warning.
void salvage_from(const copy_plan& plan, std::uint64_t off, std::uint64_t end, std::byte* p, job_done done) {
    if (off >= end) return done({});
    const std::uint64_t n = std::min(sector - off % sector, end - off);
    image img = plan.source;
    img.async_read_at(off, boost::asio::buffer(p, static_cast<std::size_t>(n)),
                      [&plan, off, end, n, p, done = std::move(done)](std::error_code ec, std::size_t) mutable {
                          if (ec) {
                              std::memset(p, 0, static_cast<std::size_t>(n));
                              if (plan.warn)
                                  plan.warn("error while reading offset " + std::to_string(off) + ": " + ec.message());
                          }
                          salvage_from(plan, off + n, end, p + n, std::move(done));
                      });
}

void read_into(const copy_plan& plan, copy_side side, std::uint64_t off, std::byte* p, std::uint64_t n, job_done done) {
    image img = side == copy_side::reference ? plan.reference : plan.source;
    img.async_read_at(off, boost::asio::buffer(p, static_cast<std::size_t>(n)),
                      [&plan, side, off, p, n, done = std::move(done)](std::error_code ec, std::size_t) mutable {
                          if (ec && plan.salvage && side == copy_side::source)
                              return salvage_from(plan, off, off + n, p, std::move(done));
                          noting(plan, side, std::move(done))(ec);
                      });
}

void write_from(const copy_plan& plan, std::uint64_t off, const std::byte* p, std::uint64_t n, job_done done) {
    image img = plan.target;
    img.async_write_at(
        off, boost::asio::buffer(p, static_cast<std::size_t>(n)),
        [done = noting(plan, copy_side::target, std::move(done))](std::error_code ec, std::size_t) { done(ec); });
}

void zero_range(const copy_plan& plan, std::uint64_t off, std::uint64_t n, job_done done) {
    image img = plan.target;
    img.async_write_zeroes(off, n, zero_options{}, noting(plan, copy_side::target, std::move(done)));
}

/// One cell of the grid: its segments and the buffers they use.
struct cell {
    std::uint64_t start = 0;
    std::vector<segment> parts;
    aligned_buffer source;
    aligned_buffer reference;
};

/// What to write for a run of blocks.
struct write_run {
    std::uint64_t offset, length;
    bool zero;
};

void add_run(std::vector<write_run>& runs, std::uint64_t off, std::uint64_t len, bool zero) {
    if (!runs.empty() && runs.back().zero == zero && runs.back().offset + runs.back().length == off) {
        runs.back().length += len;
        return;
    }
    runs.push_back({off, len, zero});
}

/// Decide the writes of a cell whose reads are done.
std::vector<write_run> plan_writes(const copy_plan& plan, const cell& c) {
    std::vector<write_run> runs;
    for (const auto& s : c.parts) {
        if (s.what == segment::action::zero) {
            add_run(runs, s.offset, s.length, true);
            continue;
        }
        if (s.what == segment::action::copy && !plan.detect_zeroes) {
            add_run(runs, s.offset, s.length, false);
            continue;
        }
        // Block by block, blocks aligned on the guest address.
        const std::uint64_t end = s.offset + s.length;
        for (std::uint64_t pos = s.offset; pos < end;) {
            const std::uint64_t next = std::min(end, (pos / plan.zero_block + 1) * plan.zero_block);
            const std::byte* src = c.source.data() + (pos - c.start);
            const std::size_t n = static_cast<std::size_t>(next - pos);
            const bool zero = is_zero(src, n);
            if (s.what == segment::action::copy) {
                if (!(zero && plan.target_reads_zeros)) add_run(runs, pos, next - pos, zero);
            } else if (std::memcmp(src, c.reference.data() + (pos - c.start), n) != 0) {
                add_run(runs, pos, next - pos, zero);
            }
            pos = next;
        }
    }
    return runs;
}

void run_cell(const copy_plan& plan, std::shared_ptr<cell> c, job_done done) {
    bool needs_source = false, needs_reference = false;
    for (const auto& s : c->parts) {
        needs_source |= s.what != segment::action::zero;
        needs_reference |= s.what == segment::action::update;
    }
    if (needs_source) c->source = aligned_buffer(static_cast<std::size_t>(plan.cell_size));
    if (needs_reference) {
        c->reference = aligned_buffer(static_cast<std::size_t>(plan.cell_size));
        std::memset(c->reference.data(), 0, c->reference.size());
    }

    auto reads = std::make_shared<std::vector<step>>();
    for (const auto& s : c->parts) {
        if (s.what == segment::action::zero) continue;
        std::byte* p = c->source.data() + (s.offset - c->start);
        reads->push_back([&plan, s, p](job_done d) { read_into(plan, copy_side::source, s.offset, p, s.length, d); });
        if (s.what != segment::action::update || !plan.reference) continue;
        // The reference may be shorter: what lies past its end reads as zeros.
        if (s.offset >= plan.reference_size) continue;
        const std::uint64_t n = std::min(s.length, plan.reference_size - s.offset);
        std::byte* q = c->reference.data() + (s.offset - c->start);
        reads->push_back([&plan, s, q, n](job_done d) { read_into(plan, copy_side::reference, s.offset, q, n, d); });
    }
    run_steps(reads, [&plan, c, done](std::error_code ec) {
        if (ec) return done(ec);
        auto writes = std::make_shared<std::vector<step>>();
        for (const auto& r : plan_writes(plan, *c)) {
            if (r.zero) {
                writes->push_back([&plan, r](job_done d) { zero_range(plan, r.offset, r.length, d); });
            } else {
                const std::byte* p = c->source.data() + (r.offset - c->start);
                writes->push_back([&plan, r, p](job_done d) { write_from(plan, r.offset, p, r.length, d); });
            }
        }
        // The cell (and its buffers) lives until its last write is done.
        run_steps(writes, [c, done](std::error_code wec) { done(wec); });
    });
}

}  // namespace

void size_cells(copy_plan& plan, std::uint64_t cluster_size, unsigned max_depth) {
    constexpr std::uint64_t base = 2u << 20;
    constexpr std::uint64_t budget = 256u << 20;
    plan.cell_size = std::max<std::uint64_t>(base, cluster_size);
    const std::uint64_t fit = std::max<std::uint64_t>(1, budget / plan.cell_size);
    plan.depth = static_cast<unsigned>(std::max<std::uint64_t>(1, std::min<std::uint64_t>(max_depth, fit)));
}

namespace {

/// Hands out the cells of the grid that hold work, in order, one at a time
/// (a large image has too many cells to list them all up front).
class cell_cursor {
public:
    cell_cursor(const std::vector<segment>& segments, std::uint64_t cell_size)
        : segments_(segments), cell_size_(cell_size) {}

    /// Cells that hold at least one segment's bytes.
    std::uint64_t count() const {
        std::uint64_t n = 0;
        std::uint64_t last = UINT64_MAX;
        for (const auto& s : segments_) {
            if (s.length == 0) continue;
            const std::uint64_t first = s.offset / cell_size_;
            const std::uint64_t end = (s.offset + s.length - 1) / cell_size_;
            n += end - first + 1 - (first == last ? 1 : 0);
            last = end;
        }
        return n;
    }

    /// The next cell with its parts of the segments.
    std::shared_ptr<cell> next() {
        auto c = std::make_shared<cell>();
        const std::size_t n = segments_.size();
        while (index_ < n) {  // skip what is done
            const segment& s = segments_[index_];
            pos_ = std::max(pos_, s.offset);
            if (pos_ < s.offset + s.length) break;
            ++index_;
        }
        if (index_ == n) return c;
        c->start = pos_ / cell_size_ * cell_size_;
        const std::uint64_t cell_end = c->start + cell_size_;
        while (index_ < n) {
            const segment& s = segments_[index_];
            const std::uint64_t from = std::max(pos_, s.offset);
            if (from >= cell_end) break;
            const std::uint64_t to = std::min(cell_end, s.offset + s.length);
            if (to > from) c->parts.push_back({from, to - from, s.what});
            if (s.offset + s.length > cell_end) {
                pos_ = cell_end;
                break;
            }
            pos_ = s.offset + s.length;
            ++index_;
        }
        return c;
    }

private:
    const std::vector<segment>& segments_;
    std::uint64_t cell_size_;
    std::size_t index_ = 0;
    std::uint64_t pos_ = 0;
};

}  // namespace

std::string copy_failure(const copy_plan& plan, std::error_code ec, const std::string& source_name,
                         const std::string& reference_name, const std::string& target_name) {
    switch (plan.failed) {
        case copy_side::source:
            return source_name + ": read failed: " + ec.message();
        case copy_side::reference:
            return reference_name + ": read failed: " + ec.message();
        case copy_side::target:
            return target_name + ": write failed: " + ec.message();
        case copy_side::none:
            break;
    }
    return target_name + ": copy failed: " + ec.message();  // not an image operation (never_completed)
}

std::error_code run_copy(driver& d, const copy_plan& plan, const std::vector<segment>& segments) {
    plan.failed = copy_side::none;
    cell_cursor cursor(segments, plan.cell_size);
    std::uint64_t total = 0;
    for (const auto& s : segments) total += s.length;
    std::uint64_t done_bytes = 0;
    job_options o;
    o.depth = plan.depth;
    auto job = [&plan, &cursor, &done_bytes, total](std::uint64_t, job_done done) {
        // Jobs start in index order, so the i-th job takes the i-th cell.
        auto c = cursor.next();
        std::uint64_t bytes = 0;
        for (const auto& p : c->parts) bytes += p.length;
        run_cell(plan, std::move(c), [&plan, &done_bytes, bytes, total, done](std::error_code ec) {
            done_bytes += bytes;
            if (plan.progress) plan.progress(done_bytes, total);
            done(ec);
        });
    };
    return run_jobs(d, cursor.count(), job, o);
}

void progress_meter::update(double percent) {
    if (!enabled_) return;
    if (shown_ >= 0 && percent < shown_ + 1.0 && percent < 100.0) return;
    if (percent == shown_) return;
    shown_ = percent;
    std::printf("    (%3.2f/100%%)\r", percent);
    std::fflush(stdout);
}

void progress_meter::finish() {
    if (!enabled_) return;
    std::printf("    (100.00/100%%)\r\n");
    std::fflush(stdout);
}

}  // namespace qed::tools::img
