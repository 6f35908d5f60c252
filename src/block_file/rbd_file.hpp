// SPDX-License-Identifier: BSL-1.0
// The Ceph RBD backend: a block file whose bytes are an RBD image, on
// librbd's asynchronous API (rbd_file.cpp).
#pragma once

#include <string_view>

#include "qed/block_file.hpp"

namespace qed::detail {

/// QEMU's syntax: rbd:POOL[/NAMESPACE]/IMAGE[@SNAPSHOT][:id=USER][:conf=PATH][:KEY=VALUE...]
/// (a '\' escapes a ':' or '@' inside a field; other KEYs are Ceph options).
bool is_rbd_name(std::string_view name) noexcept;

/// Connect to the cluster and open the image (synchronously, like open(2)).
/// With options.create the image is created (or, if it exists, cut to
/// size 0). Null with `ec` set and a line in options.log on failure.
std::shared_ptr<block_file> open_rbd_file(const boost::asio::any_io_executor& ex, const std::string& name,
                                          const file_options& options, std::error_code& ec);

}  // namespace qed::detail
