// SPDX-License-Identifier: BSL-1.0
#include "request/aiocb.hpp"

#include "image/qed_image.hpp"

#include <algorithm>
#include <cstring>

namespace qed::detail {
namespace {

// Write-zeroes over allocated clusters is split so the zero iovecs of one
// run stay modest.
constexpr std::uint64_t max_zero_run = 64ull << 20;

const_buffers zero_buffers(std::uint64_t len) {
    const auto z = zero_block();
    const_buffers out;
    while (len) {
        const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(len, z.size()));
        out.emplace_back(z.data(), n);
        len -= n;
    }
    return out;
}

void fill_zero(const mutable_buffers& bufs) {
    for (const auto& b : bufs) std::memset(b.data(), 0, b.size());
}

}  // namespace

aiocb::aiocb(std::shared_ptr<qed_image> img, kind k, std::uint64_t pos, std::uint64_t len)
    : img_(std::move(img)), kind_(k), start_(pos), pos_(pos), end_(pos + len) {}

void aiocb::start_read(std::shared_ptr<qed_image> img, std::uint64_t pos, mutable_buffers buffers,
                       io_handler handler) {
    const std::uint64_t len = total_size(buffers);
    auto* a = new aiocb(std::move(img), kind::read, pos, len);
    a->read_buffers_ = std::move(buffers);
    a->io_handler_.swap(handler);  // (Boost 1.81: any_completion_handler move-assignment recurses)
    a->next_io();
}

void aiocb::start_write(std::shared_ptr<qed_image> img, std::uint64_t pos, const_buffers buffers,
                        write_options options, io_handler handler) {
    const std::uint64_t len = total_size(buffers);
    auto* a = new aiocb(std::move(img), kind::write, pos, len);
    a->write_buffers_ = std::move(buffers);
    a->fua_ = options.fua;
    a->io_handler_.swap(handler);  // (Boost 1.81: any_completion_handler move-assignment recurses)
    a->next_io();
}

void aiocb::start_write_zeroes(std::shared_ptr<qed_image> img, std::uint64_t pos, std::uint64_t len,
                               zero_options options, op_handler handler) {
    auto* a = new aiocb(std::move(img), kind::write_zeroes, pos, len);
    a->fua_ = options.fua;
    a->may_unmap_ = options.may_unmap;
    a->op_handler_.swap(handler);
    a->next_io();
}

void aiocb::start_discard(std::shared_ptr<qed_image> img, std::uint64_t pos, std::uint64_t len,
                          op_handler handler) {
    auto* a = new aiocb(std::move(img), kind::discard, pos, len);
    a->op_handler_.swap(handler);
    a->next_io();
}

void aiocb::next_io() {
    // Runs answered from memory (zeros, holes without a backing file) loop
    // here instead of recursing.
    for (;;) {
        if (pos_ >= end_) return finish({});
        const lookup r = find_cluster(*img_, l2_, pos_, end_ - pos_);
        if (r.ec) return finish(r.ec);
        if (r.need_table) {
            went_async_ = true;
            load_l2(*img_, r.table_offset, [this](std::error_code ec) {
                if (ec) return finish(ec);
                next_io();
            });
            return;
        }
        cur_len_ = r.run.length;
        bool pending = false;
        switch (kind_) {
        case kind::read: pending = do_read(r.run); break;
        case kind::write: pending = do_write(r.run); break;
        case kind::write_zeroes: pending = do_write_zeroes(r.run); break;
        case kind::discard: pending = do_discard(r.run); break;
        }
        if (pending) {
            went_async_ = true;
            return;
        }
        pos_ += cur_len_;
    }
}

bool aiocb::do_read(const cluster_run& run) {
    auto bufs = slice(read_buffers_, pos_ - start_, cur_len_);
    switch (run.what) {
    case cluster_run::kind::data:
        img_->file_->debug_event(blkdbg_event::read_aio);
        img_->file_->async_read_at(run.host_offset, bufs,
                                   [this](std::error_code ec, std::size_t) { run_done(ec); });
        return true;
    case cluster_run::kind::zero:
        fill_zero(bufs);  // zero clusters hide the backing file
        return false;
    case cluster_run::kind::unallocated:
    case cluster_run::kind::no_table:
        return img_->read_backing(pos_, bufs, [this](std::error_code ec) { run_done(ec); });
    }
    return false;
}

bool aiocb::do_write(const cluster_run& run) {
    if (run.what == cluster_run::kind::data) {
        // In place: the cluster is already linked, nobody to wait for.
        auto bufs = slice(write_buffers_, pos_ - start_, cur_len_);
        img_->file_->debug_event(blkdbg_event::write_aio);
        img_->file_->async_write_at(run.host_offset, bufs,
                                    [this](std::error_code ec, std::size_t) { run_done(ec); });
        return true;
    }
    claim_.data = slice(write_buffers_, pos_ - start_, cur_len_);
    enqueue(alloc_claim::mode::data, cur_len_);
    return true;
}

bool aiocb::do_write_zeroes(const cluster_run& run) {
    const geometry& g = img_->geo_;
    switch (run.what) {
    case cluster_run::kind::data: {
        cur_len_ = std::min(cur_len_, max_zero_run);
        const std::uint64_t host = run.host_offset;
        img_->file_->debug_event(blkdbg_event::write_aio);
        if (!may_unmap_) {
            img_->file_->async_write_at(host, zero_buffers(cur_len_),
                                        [this](std::error_code ec, std::size_t) { run_done(ec); });
            return true;
        }
        // The cluster stays allocated; its storage is given back to the
        // filesystem. Where holes can't be punched, zeros are written.
        img_->file_->async_punch_hole(host, cur_len_, [this, host](std::error_code ec) {
            if (ec != make_error_code(errc::not_supported)) return run_done(ec);
            img_->file_->async_write_at(host, zero_buffers(cur_len_),
                                        [this](std::error_code wec, std::size_t) { run_done(wec); });
        });
        return true;
    }
    case cluster_run::kind::zero:
        return false;  // already reads as zeros, whole or partial
    case cluster_run::kind::unallocated:
    case cluster_run::kind::no_table:
        break;
    }
    if (!may_unmap_) {
        enqueue(alloc_claim::mode::zero_data, cur_len_);  // NO_HOLE: real zeros
        return true;
    }
    // Whole clusters become zero clusters; a partial cluster at either end
    // is written as zeros.
    const std::uint64_t in_cluster = g.offset_in_cluster(pos_);
    if (in_cluster != 0) {
        enqueue(alloc_claim::mode::zero_data, std::min<std::uint64_t>(cur_len_, g.cluster_size - in_cluster));
    } else if (cur_len_ >= g.cluster_size) {
        enqueue(alloc_claim::mode::zero_clusters, g.start_of_cluster(cur_len_));
    } else {
        enqueue(alloc_claim::mode::zero_data, cur_len_);
    }
    return true;
}

// Discard: the whole data clusters of this run give their storage back, in
// place. Nothing else is touched: no table entry changes, no allocation, no
// NEED_CHECK, so discard never waits for the allocating-write queue.
//
// Crash reasoning: the only on-disk step is the hole punch (fallocate
// PUNCH_HOLE | KEEP_SIZE) over data bytes of clusters that stay referenced.
// If power fails before, during or after it, every file-system block of
// those clusters holds either its old bytes or zeros, and the image's
// metadata is exactly what it was: the image opens clean and each discarded
// cluster reads old data or zeros, both of which discard allows. Like a
// write, the punch is durable after the next completed flush.
bool aiocb::do_discard(const cluster_run& run) {
    if (run.what != cluster_run::kind::data) return false;  // zero/unallocated: nothing stored to give back
    const geometry& g = img_->geo_;
    const std::uint64_t run_end = pos_ + cur_len_;
    // Whole clusters only; the image's last cluster counts as whole when the
    // range reaches the end of the image (its tail is past the guest size).
    const std::uint64_t first = g.start_of_cluster(pos_) == pos_ ? pos_ : g.start_of_cluster(pos_) + g.cluster_size;
    const std::uint64_t last = run_end == img_->header_.image_size ? run_end : g.start_of_cluster(run_end);
    if (first >= last) return false;  // partial clusters only: left alone
    const std::uint64_t host = run.host_offset + (first - pos_);
    img_->file_->async_punch_hole(host, last - first, [this](std::error_code ec) {
        // Files without hole punching keep the data: discard is a hint.
        if (ec == make_error_code(errc::not_supported)) ec = {};
        run_done(ec);
    });
    return true;
}

void aiocb::enqueue(alloc_claim::mode how, std::uint64_t len) {
    cur_len_ = len;
    claim_.pos = pos_;
    claim_.len = len;
    claim_.how = how;
    if (how != alloc_claim::mode::data) claim_.data.clear();
    else if (total_size(claim_.data) != len) claim_.data = slice(write_buffers_, pos_ - start_, len);
    went_async_ = true;  // the queue may start our batch right now; its I/O is asynchronous
    img_->alloc_queue_.enqueue(this);
}

void aiocb::run_done(std::error_code ec) {
    if (ec) return finish(ec);
    pos_ += cur_len_;
    next_io();
}

void aiocb::finish(std::error_code ec) {
    if (!ec && fua_) {
        // Force unit access: the data is durable before we report success.
        fua_ = false;
        went_async_ = true;
        img_->sync([this](std::error_code e) { finish(e); });  // data and the table updates linking it
        return;
    }
    std::shared_ptr<qed_image> img = std::move(img_);
    l2_.reset();
    img->cache_.trim();
    const bool async = went_async_;
    const std::size_t bytes = ec ? 0 : static_cast<std::size_t>(end_ - start_);
    io_handler ioh = std::move(io_handler_);
    op_handler oph = std::move(op_handler_);
    delete this;
    // A request answered entirely from memory still completes later, never
    // inside the call that started it.
    auto deliver = [&](auto&& h, auto&&... args) {
        if (async) boost::asio::dispatch(img->get_executor(), boost::asio::append(std::move(h), args...));
        else boost::asio::post(img->get_executor(), boost::asio::append(std::move(h), args...));
    };
    if (ioh) deliver(std::move(ioh), ec, bytes);
    else deliver(std::move(oph), ec);
    img->request_done();
}

}  // namespace qed::detail
