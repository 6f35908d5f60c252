// SPDX-License-Identifier: BSL-1.0
// The interface every image format implements (QED, raw). The public
// qed::image handle forwards to it; a QED image reads its backing file
// through it too.
//
// Threading: every member function is called on get_executor() (the
// public entry points post there first); completion handlers are invoked
// through complete(), never inside the call that started the operation.
#pragma once

#include <boost/asio/append.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>

#include "block_file/completion.hpp"
#include "qed/image.hpp"

namespace qed::detail {

class device : public std::enable_shared_from_this<device> {
public:
    explicit device(boost::asio::any_io_executor ex) : ex_(std::move(ex)) {}
    virtual ~device() = default;
    device(const device&) = delete;
    device& operator=(const device&) = delete;

    const boost::asio::any_io_executor& get_executor() const noexcept { return ex_; }

    virtual image_info info() const = 0;
    virtual std::uint64_t size() const = 0;
    virtual std::shared_ptr<device> backing() const { return nullptr; }
    virtual bool is_open() const noexcept = 0;

    virtual void read(std::uint64_t offset, mutable_buffers buffers, io_handler handler) = 0;
    virtual void write(std::uint64_t offset, const_buffers buffers, write_options options, io_handler handler) = 0;
    virtual void write_zeroes(std::uint64_t offset, std::uint64_t length, zero_options options, op_handler handler) = 0;
    /// See image::async_discard.
    virtual void discard(std::uint64_t offset, std::uint64_t length, op_handler handler) = 0;
    virtual void flush(op_handler handler) = 0;
    /// Extents of [offset, offset + length); `depth` is this device's level in the chain.
    virtual void block_status(std::uint64_t offset, std::uint64_t length, unsigned depth, status_handler handler) = 0;
    virtual void check(check_options options, check_handler handler);
    virtual void change_backing_file(std::string name, std::optional<image_format> format, op_handler handler);
    virtual void grow(std::uint64_t new_size, op_handler handler) = 0;
    virtual void make_empty(op_handler handler);
    virtual void close(op_handler handler) = 0;

protected:
    /// Invoke a user handler on its associated executor (ours by default).
    /// (Asio's dispatch/post through our executor hand the call on to the
    /// handler's associated executor when it has its own.)
    template <class Handler, class... Args>
    void complete(Handler handler, Args&&... args) const {
        complete_never_inline(ex_, false, std::move(handler), std::forward<Args>(args)...);
    }
    /// Same, but always through the executor's queue (for results known at once).
    template <class Handler, class... Args>
    void complete_later(Handler handler, Args&&... args) const {
        complete_never_inline(ex_, true, std::move(handler), std::forward<Args>(args)...);
    }

    boost::asio::any_io_executor ex_;
};

/// Checks every request must pass: 512-byte alignment and image bounds.
std::error_code validate_request(std::uint64_t offset, std::uint64_t length, std::uint64_t image_size) noexcept;

}  // namespace qed::detail
