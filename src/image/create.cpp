// SPDX-License-Identifier: BSL-1.0
// Creating images. A new QED image is byte-for-byte what
// `qemu-img create -f qed` writes with the same options: the header (and
// backing name) in the first cluster, a zeroed L1 table right after it.
#include <boost/asio/co_spawn.hpp>
#include <cstring>

#include "format/layout.hpp"
#include "image/backing.hpp"
#include "image/device.hpp"
#include "image/file_protocol.hpp"
#include "table/co_io.hpp"

namespace qed::detail {
namespace {

boost::asio::awaitable<std::error_code> create_image(boost::asio::any_io_executor ex, std::string path,
                                                     create_options o) {
    path = without_file_protocol(path);
    if (!o.opener) o.opener = default_opener(ex);
    if (o.size && *o.size > max_addressable_size) co_return errc::image_too_large;
    if (!o.size && o.backing_file.empty()) co_return errc::invalid_argument;  // no size to take
    std::uint64_t size = o.size ? (*o.size + sector_size - 1) / sector_size * sector_size : 0;

    if (o.format == image_format::qed) {
        if (!is_valid_cluster_size(o.cluster_size)) co_return errc::invalid_cluster_size;
        if (!is_valid_table_size(o.table_size)) co_return errc::invalid_table_size;
        if (o.backing_file.size() > max_backing_name_size)
            co_return errc::backing_name_too_long;  // we could not open it
    } else if (!o.backing_file.empty()) {
        co_return errc::not_supported;  // raw images have no backing file
    }

    // No size given with a backing file: take the backing file's size.
    if (!o.size) {
        open_options bo;
        bo.read_only = true;
        bo.opener = o.opener;
        bo.backend = o.backend;
        bo.locking = o.locking;
        bo.log = o.log;
        auto [ec, dev] =
            co_await open_device(ex, resolve_backing_path(path, o.backing_file), o.backing_format, bo, 1, {});
        if (ec) co_return ec;
        size = dev->size();
        device* d = dev.get();
        co_await co::op([d](op_handler h) { d->close(std::move(h)); });
    }

    // Everything is validated before the file is created (or truncated):
    // a refused create leaves an existing file alone.
    if (o.format == image_format::qed && size > max_image_size(o.cluster_size, o.table_size))
        co_return errc::image_too_large;
    file_options fo;
    fo.read_only = false;
    fo.create = true;
    fo.backend = o.backend;
    fo.locking = o.locking;
    fo.log = o.log;
    std::error_code ec;
    auto file = o.opener(path, fo, ec);
    if (!file) co_return ec ? ec : std::make_error_code(std::errc::io_error);

    if (o.format == image_format::raw) {
        if ((ec = co_await co::resize(*file, size))) co_return ec;
        co_return co_await co::flush(*file);
    }

    header h;
    h.cluster_size = o.cluster_size;
    h.table_size = o.table_size;
    // One header cluster, as QEMU does; more only if a long backing name needs them.
    const std::uint64_t header_bytes_needed = header_struct_size + o.backing_file.size();
    h.header_size = static_cast<std::uint32_t>((header_bytes_needed + o.cluster_size - 1) / o.cluster_size);
    h.l1_table_offset = std::uint64_t{h.header_size} * o.cluster_size;
    h.image_size = size;
    if (!o.backing_file.empty()) {
        h.features |= feature_backing_file;
        if (o.backing_format == image_format::raw) h.features |= feature_backing_format_no_probe;
        h.backing_filename_offset = header_struct_size;
        h.backing_filename_size = static_cast<std::uint32_t>(o.backing_file.size());
    }
    const std::size_t block_len = (header_bytes_needed + sector_size - 1) / sector_size * sector_size;
    const std::uint64_t file_size = h.l1_table_offset + std::uint64_t{o.cluster_size} * o.table_size;
    if (file->fixed_size()) {
        // An NBD export keeps whatever it held: check it is large enough
        // (ENOSPC), then write the rest of the header clusters and the L1
        // table as zeros before the header, so that until the header is in
        // place the export does not look like a QED image with a stale L1.
        if ((ec = co_await co::resize(*file, file_size))) co_return ec;
        const auto z = zero_block();
        for (std::uint64_t pos = block_len; pos < file_size;) {
            const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(file_size - pos, z.size()));
            if ((ec = co_await co::write(*file, pos, z.data(), n))) co_return ec;
            pos += n;
        }
    }
    auto block = allocate_aligned(block_len, true);
    encode_first_block({block.get(), block_len}, h, o.backing_file);
    if ((ec = co_await co::write(*file, 0, block.get(), block_len))) co_return ec;
    // The rest of the header cluster(s) and the L1 table are zeros.
    if ((ec = co_await co::resize(*file, file_size))) co_return ec;
    co_return co_await co::flush(*file);
}

}  // namespace

void initiate_create(const boost::asio::any_io_executor& ex, std::string path, create_options options,
                     op_handler handler) {
    co::run(ex, create_image(ex, std::move(path), std::move(options)),
            [ex, h = std::move(handler)](std::error_code ec) mutable {
                boost::asio::dispatch(ex, boost::asio::append(std::move(h), ec));
            });
}

}  // namespace qed::detail
