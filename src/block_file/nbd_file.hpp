// SPDX-License-Identifier: BSL-1.0
// The NBD backend: a block file whose bytes are an NBD export, on libnbd's
// asynchronous API driven by the file's executor (nbd_file.cpp).
#pragma once

#include <string_view>

#include "qed/block_file.hpp"

namespace qed::detail {

/// nbd://, nbds://, nbd+unix://, nbds+unix://, nbd+vsock://, nbds+vsock:// names
/// (the URI syntax libnbd's nbd_connect_uri parses).
bool is_nbd_name(std::string_view name) noexcept;

/// Connect to the export named by `uri` (synchronously, like open(2)).
/// Null with `ec` set (and a line in options.log) when that fails, or
/// when a read-write open meets a read-only export (EROFS).
std::shared_ptr<block_file> open_nbd_file(const boost::asio::any_io_executor& ex, const std::string& uri,
                                          const file_options& options, std::error_code& ec);

}  // namespace qed::detail
