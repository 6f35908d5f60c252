// SPDX-License-Identifier: BSL-1.0
// Defaults of the block file seam.
#include "qed/block_file.hpp"

#include <algorithm>
#include <boost/asio/post.hpp>

#include "qed/error.hpp"

namespace qed {

void block_file::async_write_fua_at(std::uint64_t offset, std::span<const boost::asio::const_buffer> buffers,
                                    io_handler handler) {
    // Both handlers run on the executor, after the initiating calls returned.
    async_write_at(offset, buffers, [this, h = std::move(handler)](std::error_code ec, std::size_t n) mutable {
        if (ec) return std::move(h)(ec, std::size_t{0});
        async_flush(
            [h = std::move(h), n](std::error_code fec) mutable { std::move(h)(fec, fec ? std::size_t{0} : n); });
    });
}

void block_file::async_punch_hole(std::uint64_t, std::uint64_t, op_handler handler) {
    boost::asio::post(get_executor(),
                      [h = std::move(handler)]() mutable { std::move(h)(make_error_code(errc::not_supported)); });
}

void block_file::async_block_status(std::uint64_t offset, std::uint64_t length, file_status_handler handler) {
    bool data = true;
    std::uint64_t run = length;
    if (allocation(offset, length, data, run)) {
        data = true;
        run = length;
    }
    std::vector<file_extent> runs{{std::max<std::uint64_t>(std::min(run, length), 1), data, !data}};
    boost::asio::post(get_executor(), [h = std::move(handler), runs = std::move(runs)]() mutable {
        std::move(h)(boost::system::error_code{}, std::move(runs));
    });
}

void block_file::async_close(op_handler handler) {
    boost::asio::post(get_executor(), [h = std::move(handler)]() mutable { std::move(h)(std::error_code{}); });
}

}  // namespace qed
