// SPDX-License-Identifier: BSL-1.0
// A block file of fixed capacity, like an NBD export: size() is the
// capacity of the storage below, growing past it fails with ENOSPC,
// shrinking keeps the bytes, and fixed_size() is true, so the image layer
// finds the end of its data from its own tables. Every read, write, flush
// and punch goes to the inner file (e.g. a power_loss_file); a resize does
// no I/O at all, as on an export.
#pragma once

#include <boost/asio/post.hpp>
#include <cerrno>
#include <memory>

#include "qed/block_file.hpp"

namespace qed::test {

class fixed_size_file final : public block_file {
public:
    explicit fixed_size_file(std::shared_ptr<block_file> inner) : inner_(std::move(inner)) {
        std::error_code ec;
        capacity_ = inner_->size(ec);
    }

    executor_type get_executor() const override { return inner_->get_executor(); }

    void async_read_at(std::uint64_t off, std::span<const boost::asio::mutable_buffer> b, io_handler h) override {
        inner_->async_read_at(off, b, std::move(h));
    }
    void async_write_at(std::uint64_t off, std::span<const boost::asio::const_buffer> b, io_handler h) override {
        if (off + boost::asio::buffer_size(b) > capacity_) return refuse(std::move(h));
        inner_->async_write_at(off, b, std::move(h));
    }
    void async_write_fua_at(std::uint64_t off, std::span<const boost::asio::const_buffer> b, io_handler h) override {
        if (off + boost::asio::buffer_size(b) > capacity_) return refuse(std::move(h));
        inner_->async_write_fua_at(off, b, std::move(h));
    }
    void async_flush(op_handler h) override { inner_->async_flush(std::move(h)); }
    void async_resize(std::uint64_t size, op_handler h) override {
        const std::error_code ec =
            size > capacity_ ? std::error_code(ENOSPC, std::generic_category()) : std::error_code{};
        boost::asio::post(get_executor(), [h = std::move(h), ec]() mutable { std::move(h)(ec); });
    }
    void async_punch_hole(std::uint64_t offset, std::uint64_t length, op_handler h) override {
        inner_->async_punch_hole(offset, length, std::move(h));
    }

    std::uint64_t size(std::error_code& ec) const override {
        ec.clear();
        return capacity_;
    }
    std::size_t alignment() const noexcept override { return inner_->alignment(); }
    std::error_code allocation(std::uint64_t offset, std::uint64_t length, bool& data,
                               std::uint64_t& run) const override {
        // An export reports everything as data: the image must not trust holes.
        data = true;
        run = length;
        (void)offset;
        return {};
    }
    bool fixed_size() const noexcept override { return true; }
    file_identity identity() const noexcept override { return inner_->identity(); }
    bool read_only() const noexcept override { return inner_->read_only(); }
    const char* backend_name() const noexcept override { return "fixed-size"; }

private:
    void refuse(io_handler h) {
        boost::asio::post(get_executor(), [h = std::move(h)]() mutable {
            std::move(h)(std::error_code(ENOSPC, std::generic_category()), std::size_t{0});
        });
    }

    std::shared_ptr<block_file> inner_;
    std::uint64_t capacity_ = 0;
};

}  // namespace qed::test
