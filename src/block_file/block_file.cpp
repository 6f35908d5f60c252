// SPDX-License-Identifier: BSL-1.0
// Defaults of the block file seam.
#include "qed/block_file.hpp"

#include "qed/error.hpp"

#include <boost/asio/post.hpp>

namespace qed {

void block_file::async_punch_hole(std::uint64_t, std::uint64_t, op_handler handler) {
    boost::asio::post(get_executor(), [h = std::move(handler)]() mutable {
        std::move(h)(make_error_code(errc::not_supported));
    });
}

}  // namespace qed
