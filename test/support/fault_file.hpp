// SPDX-License-Identifier: BSL-1.0
// A block file that fails chosen operations: the n-th read, write, flush or
// resize (counted from 0 per kind) completes with a chosen error instead of
// reaching the inner file. One-shot by default; `persistent` fails every
// operation of that kind from n on (a dead disk).
#pragma once

#include <array>
#include <boost/asio/post.hpp>
#include <cerrno>

#include "qed/block_file.hpp"

namespace qed::test {

struct fault_plan {
    enum kind { read = 0, write = 1, flush = 2, resize = 3 };
    std::array<long, 4> fail_at{-1, -1, -1, -1};
    std::array<long, 4> count{0, 0, 0, 0};
    std::error_code error = std::make_error_code(std::errc::io_error);
    bool persistent = false;
    long failures = 0;  ///< how many operations were failed

    bool should_fail(kind k) {
        const long n = count[k]++;
        const bool fail = fail_at[k] >= 0 && (persistent ? n >= fail_at[k] : n == fail_at[k]);
        if (fail) ++failures;
        return fail;
    }
    static const char* name(kind k) {
        static const char* names[] = {"read", "write", "flush", "resize"};
        return names[k];
    }
};

class fault_file final : public block_file {
public:
    fault_file(std::shared_ptr<block_file> inner, std::shared_ptr<fault_plan> plan)
        : inner_(std::move(inner)), plan_(std::move(plan)) {}

    executor_type get_executor() const override { return inner_->get_executor(); }

    void async_read_at(std::uint64_t off, std::span<const boost::asio::mutable_buffer> b, io_handler h) override {
        if (plan_->should_fail(fault_plan::read)) return fail(std::move(h));
        inner_->async_read_at(off, b, std::move(h));
    }
    void async_write_at(std::uint64_t off, std::span<const boost::asio::const_buffer> b, io_handler h) override {
        if (plan_->should_fail(fault_plan::write)) return fail(std::move(h));
        inner_->async_write_at(off, b, std::move(h));
    }
    void async_flush(op_handler h) override {
        if (plan_->should_fail(fault_plan::flush)) return fail_op(std::move(h));
        inner_->async_flush(std::move(h));
    }
    // Punching a hole changes contents like a write: counted and failed as one.
    void async_punch_hole(std::uint64_t off, std::uint64_t len, op_handler h) override {
        if (plan_->should_fail(fault_plan::write)) return fail_op(std::move(h));
        inner_->async_punch_hole(off, len, std::move(h));
    }
    void async_resize(std::uint64_t size, op_handler h) override {
        if (plan_->should_fail(fault_plan::resize)) return fail_op(std::move(h));
        inner_->async_resize(size, std::move(h));
    }
    std::uint64_t size(std::error_code& ec) const override { return inner_->size(ec); }
    std::size_t alignment() const noexcept override { return inner_->alignment(); }
    std::error_code allocation(std::uint64_t off, std::uint64_t len, bool& data, std::uint64_t& run) const override {
        return inner_->allocation(off, len, data, run);
    }
    file_identity identity() const noexcept override { return inner_->identity(); }
    bool read_only() const noexcept override { return inner_->read_only(); }
    const char* backend_name() const noexcept override { return "fault"; }

private:
    void fail(io_handler h) {
        boost::asio::post(get_executor(), [h = std::move(h), ec = plan_->error]() mutable { std::move(h)(ec, 0); });
    }
    void fail_op(op_handler h) {
        boost::asio::post(get_executor(), [h = std::move(h), ec = plan_->error]() mutable { std::move(h)(ec); });
    }

    std::shared_ptr<block_file> inner_;
    std::shared_ptr<fault_plan> plan_;
};

}  // namespace qed::test
