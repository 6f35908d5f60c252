// SPDX-License-Identifier: BSL-1.0
// A block file that runs the operations in flight in a random (seeded)
// order: each operation is queued, and a pump starts one at random at a
// time. Writes land when they run, not when they are issued, so requests
// in flight genuinely race. Deterministic for a given seed.
#pragma once

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/post.hpp>
#include <boost/container/small_vector.hpp>
#include <random>
#include <vector>

#include "qed/block_file.hpp"

namespace qed::test {

class chaos_file final : public block_file, public std::enable_shared_from_this<chaos_file> {
public:
    chaos_file(std::shared_ptr<block_file> inner, unsigned seed) : inner_(std::move(inner)), rng_(seed) {}

    executor_type get_executor() const override { return inner_->get_executor(); }

    void async_read_at(std::uint64_t off, std::span<const boost::asio::mutable_buffer> b, io_handler h) override {
        boost::container::small_vector<boost::asio::mutable_buffer, 8> bufs(b.begin(), b.end());
        queue([this, off, bufs = std::move(bufs), h = std::move(h)]() mutable {
            inner_->async_read_at(off, {bufs.data(), bufs.size()}, std::move(h));
        });
    }
    void async_write_at(std::uint64_t off, std::span<const boost::asio::const_buffer> b, io_handler h) override {
        boost::container::small_vector<boost::asio::const_buffer, 8> bufs(b.begin(), b.end());
        queue([this, off, bufs = std::move(bufs), h = std::move(h)]() mutable {
            inner_->async_write_at(off, {bufs.data(), bufs.size()}, std::move(h));
        });
    }
    void async_flush(op_handler h) override {
        queue([this, h = std::move(h)]() mutable { inner_->async_flush(std::move(h)); });
    }
    void async_resize(std::uint64_t size, op_handler h) override {
        queue([this, size, h = std::move(h)]() mutable { inner_->async_resize(size, std::move(h)); });
    }
    std::uint64_t size(std::error_code& ec) const override { return inner_->size(ec); }
    std::size_t alignment() const noexcept override { return inner_->alignment(); }
    file_identity identity() const noexcept override { return inner_->identity(); }
    bool read_only() const noexcept override { return inner_->read_only(); }
    const char* backend_name() const noexcept override { return "chaos"; }

private:
    using task = boost::asio::any_completion_handler<void()>;

    template <class F>
    void queue(F f) {
        pending_.emplace_back(std::move(f));
        if (!pump_scheduled_) {
            pump_scheduled_ = true;
            post_pump();
        }
    }
    void post_pump() {
        boost::asio::post(get_executor(), [weak = weak_from_this()] {
            if (auto self = weak.lock()) self->pump();
        });
    }
    void pump() {
        pump_scheduled_ = false;
        if (pending_.empty()) return;
        std::uniform_int_distribution<std::size_t> pick(0, pending_.size() - 1);
        const std::size_t i = pick(rng_);
        task t(std::move(pending_[i]));
        // Swap-remove without move-assignment (Boost 1.81's any_completion_handler
        // move-assignment is broken).
        if (i != pending_.size() - 1) pending_[i].swap(pending_.back());
        pending_.pop_back();
        std::move(t)();
        if (!pending_.empty() && !pump_scheduled_) {
            pump_scheduled_ = true;
            post_pump();
        }
    }

    std::shared_ptr<block_file> inner_;
    std::mt19937 rng_;
    std::vector<task> pending_;
    bool pump_scheduled_ = false;
};

}  // namespace qed::test
