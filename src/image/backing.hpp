// SPDX-License-Identifier: BSL-1.0
// Opening images by path: format probing, backing-file name resolution and
// the backing chain (depth limit, loop detection, allowed directory).
#pragma once

#include <boost/asio/awaitable.hpp>
#include <utility>
#include <vector>

#include "image/device.hpp"

namespace qed::detail {

/// A backing name relative to the image's directory, or absolute as is.
/// For an image named by a json: name, the directory is that of its node
/// tree (node_directory); where it has none, the result is empty and `why`
/// (when given) says why, in QEMU's words.
std::string resolve_backing_path(const std::string& image_path, const std::string& backing_name,
                                 std::string* why = nullptr);

/// Detect the format from the first bytes of a file. Refuses formats we
/// recognise but do not read (qcow2, vmdk...), rather than reading them as raw.
std::error_code probe_format(const std::byte* first_bytes, std::size_t n, image_format& out, std::string& detail);

using device_result = std::pair<std::error_code, std::shared_ptr<device>>;

/// Open one image by path (and, for QED, the chain below it). `depth` is its
/// level (0 = the image the user asked for); `chain` the identities above it.
boost::asio::awaitable<device_result> open_device(boost::asio::any_io_executor ex, std::string path,
                                                  std::optional<image_format> format, open_options options,
                                                  unsigned depth, std::vector<file_identity> chain);

/// Open a backing file of an image (read-only, confined and depth-limited).
boost::asio::awaitable<device_result> open_backing_chain(boost::asio::any_io_executor ex, std::string path,
                                                         std::optional<image_format> format, const open_options& parent,
                                                         unsigned depth, std::vector<file_identity> chain);

/// Open an image on an already open file.
boost::asio::awaitable<device_result> open_on_file(boost::asio::any_io_executor ex, std::shared_ptr<block_file> file,
                                                   std::string name, std::optional<image_format> format,
                                                   open_options options, unsigned depth,
                                                   std::vector<file_identity> chain);

/// What default_opener() holds: real files through open_file().
struct default_file_opener {
    boost::asio::any_io_executor ex;  ///< the files' executor
    std::shared_ptr<block_file> operator()(const std::string& path, const file_options& fo, std::error_code& ec) const {
        return open_file(ex, path, fo, ec);
    }
};

/// The default opener: real files through open_file().
file_opener default_opener(const boost::asio::any_io_executor& ex);

using file_result = std::pair<std::error_code, std::shared_ptr<block_file>>;

/// Open `path` through `opener`. With the default opener, an ssh:// name is
/// connected on the blocking pool while the io_context goes on (libssh
/// blocks); any other name, or another opener, is one synchronous call.
boost::asio::awaitable<file_result> open_through(boost::asio::any_io_executor ex, file_opener opener, std::string path,
                                                 file_options fo);

}  // namespace qed::detail
