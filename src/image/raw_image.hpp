// SPDX-License-Identifier: BSL-1.0
// A raw image: guest offset == file offset. Used on its own (tools, NBD
// server, benchmarks) and as a backing file.
#pragma once

#include "image/device.hpp"

namespace qed::detail {

/// Ownership: shared (device's enable_shared_from_this) by the public handles,
/// an image above it in a chain, and operations in flight; it owns its file.
class raw_image final : public device {
public:
    raw_image(boost::asio::any_io_executor ex, std::shared_ptr<block_file> file, std::string filename,
              open_options options);

    /// Read the size. Synchronous: nothing to parse.
    std::error_code open();

    image_info info() const override;
    std::uint64_t size() const override { return size_; }
    bool is_open() const noexcept override { return !closed_; }
    void read(std::uint64_t offset, mutable_buffers buffers, io_handler handler) override;
    void write(std::uint64_t offset, const_buffers buffers, write_options options, io_handler handler) override;
    void write_zeroes(std::uint64_t offset, std::uint64_t length, zero_options options, op_handler handler) override;
    void discard(std::uint64_t offset, std::uint64_t length, op_handler handler) override;
    void flush(op_handler handler) override;
    void block_status(std::uint64_t offset, std::uint64_t length, unsigned depth, status_handler handler) override;
    void grow(std::uint64_t new_size, op_handler handler) override;
    void close(op_handler handler) override;

private:
    std::error_code check_io(std::uint64_t offset, std::uint64_t length, bool writing) const;
    void zero_step(std::uint64_t offset, std::uint64_t end, bool fua, op_handler handler);
    void status_step(std::uint64_t pos, std::uint64_t end, unsigned depth, std::shared_ptr<std::vector<extent>> out,
                     status_handler handler);

    std::shared_ptr<block_file> file_;
    std::string filename_;
    open_options options_;
    std::uint64_t size_ = 0;  ///< file size rounded up to 512
    bool closed_ = false;
};

}  // namespace qed::detail
