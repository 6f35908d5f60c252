// SPDX-License-Identifier: BSL-1.0
// QEMU's null-co driver: a file of a given size that stores nothing.
#include <atomic>
#include <boost/asio/post.hpp>
#include <cerrno>
#include <cstring>

#include "block_file/posix_io.hpp"
#include "qed/block_file.hpp"

namespace qed {
namespace {

namespace asio = boost::asio;

std::atomic<std::uint64_t> next_null_id{1};

class null_file final : public block_file {
public:
    null_file(asio::any_io_executor ex, std::uint64_t size, bool read_only)
        : ex_(std::move(ex)), size_(size), read_only_(read_only), id_(next_null_id++) {}

    executor_type get_executor() const override { return ex_; }

    void async_read_at(std::uint64_t, std::span<const asio::mutable_buffer> buffers, io_handler handler) override {
        std::size_t n = 0;
        for (const auto& b : buffers) {
            std::memset(b.data(), 0, b.size());
            n += b.size();
        }
        complete(std::move(handler), {}, n);
    }

    void async_write_at(std::uint64_t, std::span<const asio::const_buffer> buffers, io_handler handler) override {
        if (read_only_) return complete(std::move(handler), detail::errno_code(EBADF), 0);
        std::size_t n = 0;
        for (const auto& b : buffers) n += b.size();
        complete(std::move(handler), {}, n);
    }

    void async_flush(op_handler handler) override { done(std::move(handler), {}); }

    void async_resize(std::uint64_t size, op_handler handler) override {
        if (read_only_) return done(std::move(handler), detail::errno_code(EBADF));
        size_ = size;
        done(std::move(handler), {});
    }

    void async_punch_hole(std::uint64_t, std::uint64_t, op_handler handler) override {
        done(std::move(handler), read_only_ ? detail::errno_code(EBADF) : std::error_code{});
    }

    std::uint64_t size(std::error_code& ec) const override {
        ec.clear();
        return size_;
    }
    // Reads are zeros, but as QEMU's null-co (read-zeroes off) the blocks
    // count as data: the default allocation().
    file_identity identity() const noexcept override { return {~std::uint64_t{0} - 1, id_}; }
    bool read_only() const noexcept override { return read_only_; }
    const char* backend_name() const noexcept override { return "null"; }

private:
    void complete(io_handler h, std::error_code ec, std::size_t n) {
        asio::post(ex_, [h = std::move(h), ec, n]() mutable { std::move(h)(ec, n); });
    }
    void done(op_handler h, std::error_code ec) {
        asio::post(ex_, [h = std::move(h), ec]() mutable { std::move(h)(ec); });
    }

    asio::any_io_executor ex_;
    std::uint64_t size_;
    bool read_only_;
    std::uint64_t id_;
};

}  // namespace

bool is_null_name(std::string_view name) noexcept {
    return name.starts_with("null-co:") || name.starts_with("null-aio:");
}

std::shared_ptr<block_file> make_null_file(const asio::any_io_executor& ex, std::uint64_t size, bool read_only) {
    return std::make_shared<null_file>(ex, size, read_only);
}

}  // namespace qed
