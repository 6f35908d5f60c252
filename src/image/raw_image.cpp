// SPDX-License-Identifier: BSL-1.0
#include "image/raw_image.hpp"

#include <algorithm>

#include "table/table.hpp"

namespace qed::detail {

raw_image::raw_image(boost::asio::any_io_executor ex, std::shared_ptr<block_file> file, std::string filename,
                     open_options options)
    : device(std::move(ex)), file_(std::move(file)), filename_(std::move(filename)), options_(std::move(options)) {}

std::error_code raw_image::open() {
    std::error_code ec;
    const std::uint64_t bytes = file_->size(ec);
    if (ec) {
        if (options_.log) options_.log(filename_ + ": " + ec.message());
        return ec;
    }
    // A file whose size is not a multiple of 512 reads as zeros up to the
    // next sector boundary (as QEMU does).
    size_ = (bytes + sector_size - 1) / sector_size * sector_size;
    return {};
}

image_info raw_image::info() const {
    image_info i;
    i.filename = filename_;
    i.format = image_format::raw;
    i.virtual_size = size_;
    std::error_code ec;
    i.file_size = file_ ? file_->size(ec) : 0;
    i.read_only = options_.read_only;
    i.backend = file_ ? file_->backend_name() : "";
    i.request_alignment = sector_size;
    return i;
}

std::error_code raw_image::check_io(std::uint64_t offset, std::uint64_t length, bool writing) const {
    if (closed_) return errc::closed;
    if (writing && options_.read_only) return errc::read_only;
    return validate_request(offset, length, size_);
}

void raw_image::read(std::uint64_t offset, mutable_buffers buffers, io_handler handler) {
    if (auto ec = check_io(offset, total_size(buffers), false))
        return complete_later(std::move(handler), ec, std::size_t{0});
    auto self = shared_from_this();
    file_->debug_event(blkdbg_event::read_aio);
    file_->async_read_at(offset, buffers,
                         [this, self, h = std::move(handler)](std::error_code ec, std::size_t n) mutable {
                             complete(std::move(h), ec, ec ? std::size_t{0} : n);
                         });
}

void raw_image::write(std::uint64_t offset, const_buffers buffers, write_options options, io_handler handler) {
    if (auto ec = check_io(offset, total_size(buffers), true))
        return complete_later(std::move(handler), ec, std::size_t{0});
    auto self = shared_from_this();
    // The file stays alive until the write (and its flush) complete, even
    // if the image is closed meanwhile.
    auto done = [this, self, file = file_, h = std::move(handler)](std::error_code ec, std::size_t n) mutable {
        complete(std::move(h), ec, ec ? std::size_t{0} : n);
    };
    file_->debug_event(blkdbg_event::write_aio);
    // FUA goes to the file: an NBD export gets the flag on the write itself.
    if (options.fua)
        file_->async_write_fua_at(offset, buffers, std::move(done));
    else
        file_->async_write_at(offset, buffers, std::move(done));
}

void raw_image::write_zeroes(std::uint64_t offset, std::uint64_t length, zero_options options, op_handler handler) {
    if (auto ec = check_io(offset, length, true)) return complete_later(std::move(handler), ec);
    if (length == 0) return complete_later(std::move(handler), std::error_code{});
    if (!options.may_unmap) return zero_step(offset, offset + length, options.fua, std::move(handler));
    // May unmap: punch a hole (the file keeps its size); write zeros where
    // holes aren't supported.
    auto self = shared_from_this();
    file_->async_punch_hole(
        offset, length,
        [this, self, offset, length, fua = options.fua, h = std::move(handler)](std::error_code ec) mutable {
            if (ec == make_error_code(errc::not_supported))
                return zero_step(offset, offset + length, fua, std::move(h));
            if (ec || !fua) return complete(std::move(h), ec);
            if (!file_) return complete(std::move(h), make_error_code(errc::closed));  // closed while in flight
            file_->async_flush(
                [this, self, h = std::move(h)](std::error_code fec) mutable { complete(std::move(h), fec); });
        });
}

// A raw file has no clusters: the whole range is punched. It changes data
// bytes only (no metadata of ours): after a crash each block reads old data
// or zeros. Files that can't punch holes keep the data (discard is a hint).
void raw_image::discard(std::uint64_t offset, std::uint64_t length, op_handler handler) {
    if (auto ec = check_io(offset, length, true)) return complete_later(std::move(handler), ec);
    if (length == 0) return complete_later(std::move(handler), std::error_code{});
    auto self = shared_from_this();
    file_->async_punch_hole(offset, length, [this, self, h = std::move(handler)](std::error_code ec) mutable {
        if (ec == make_error_code(errc::not_supported)) ec = {};
        complete(std::move(h), ec);
    });
}

// Zeros in pieces of at most 64 MiB (64 iovecs of the shared zero block).
void raw_image::zero_step(std::uint64_t offset, std::uint64_t end, bool fua, op_handler handler) {
    if (!file_) return complete(std::move(handler), make_error_code(errc::closed));  // closed while in flight
    const auto z = zero_block();
    const std::uint64_t n = std::min<std::uint64_t>(end - offset, 64 * z.size());
    const_buffers bufs;
    for (std::uint64_t left = n; left;) {
        const std::size_t k = static_cast<std::size_t>(std::min<std::uint64_t>(left, z.size()));
        bufs.emplace_back(z.data(), k);
        left -= k;
    }
    auto self = shared_from_this();
    file_->async_write_at(
        offset, bufs,
        [this, self, offset, n, end, fua, h = std::move(handler)](std::error_code ec, std::size_t) mutable {
            if (ec) return complete(std::move(h), ec);
            if (offset + n < end) return zero_step(offset + n, end, fua, std::move(h));
            if (!fua) return complete(std::move(h), std::error_code{});
            if (!file_) return complete(std::move(h), make_error_code(errc::closed));  // closed while in flight
            file_->async_flush(
                [this, self, h = std::move(h)](std::error_code fec) mutable { complete(std::move(h), fec); });
        });
}

void raw_image::flush(op_handler handler) {
    if (closed_) return complete_later(std::move(handler), make_error_code(errc::closed));
    auto self = shared_from_this();
    file_->async_flush(
        [this, self, h = std::move(handler)](std::error_code ec) mutable { complete(std::move(h), ec); });
}

void raw_image::block_status(std::uint64_t offset, std::uint64_t length, unsigned depth, status_handler handler) {
    if (auto ec = check_io(offset, length, false)) return complete_later(std::move(handler), ec, std::vector<extent>{});
    status_step(offset, offset + length, depth, std::make_shared<std::vector<extent>>(), std::move(handler));
}

// Every byte of a raw file is "present"; what the file says of a range
// (holes, zeros, or a failure: blkdebug's block-status rules, an image
// below) is its status. The file answers a first part at a time.
void raw_image::status_step(std::uint64_t pos, std::uint64_t end, unsigned depth,
                            std::shared_ptr<std::vector<extent>> out, status_handler handler) {
    if (pos >= end) return complete(std::move(handler), std::error_code{}, std::move(*out));
    if (!file_) return complete(std::move(handler), make_error_code(errc::closed), std::vector<extent>{});
    auto self = shared_from_this();
    file_->async_block_status(pos, end - pos,
                              [this, self, pos, end, depth, out, h = std::move(handler)](
                                  std::error_code ec, std::vector<file_extent> runs) mutable {
                                  if (ec) return complete(std::move(h), ec, std::vector<extent>{});
                                  if (runs.empty()) runs.push_back({end - pos, true, false});  // nothing said: data
                                  std::uint64_t at = pos;
                                  for (const auto& r : runs) {
                                      if (at >= end) break;
                                      bool data = r.data;
                                      bool zero = r.zero;
                                      std::uint64_t run = std::max<std::uint64_t>(std::min(r.length, end - at), 1);
                                      // Extents are whole sectors, as requests are: a file whose
                                      // size is not a multiple of 512 ends in a partial data
                                      // sector (the rest of it reads as zeros), which counts as
                                      // data. A hole ending inside a sector (never seen on a real
                                      // filesystem) gives the sector to data.
                                      if (const std::uint64_t stop = at + run; stop % sector_size && stop < end) {
                                          const std::uint64_t down = stop / sector_size * sector_size;
                                          if (!data && down > at) {
                                              run = down - at;
                                          } else {
                                              data = true;
                                              zero = false;
                                              run = std::min(end, down + sector_size) - at;
                                          }
                                      }
                                      append_extent(*out, extent{at, run, depth, true, zero, data, at});
                                      at += run;
                                      // A run rounded up past the next one: ask again from here.
                                      if (run != std::min(r.length, end - (at - run))) break;
                                  }
                                  status_step(at, end, depth, out, std::move(h));
                              });
}

void raw_image::grow(std::uint64_t new_size, op_handler handler) {
    if (closed_) return complete_later(std::move(handler), make_error_code(errc::closed));
    if (options_.read_only) return complete_later(std::move(handler), make_error_code(errc::read_only));
    if (new_size < size_) return complete_later(std::move(handler), make_error_code(errc::shrink_not_supported));
    auto self = shared_from_this();
    file_->async_resize(new_size, [this, self, new_size, h = std::move(handler)](std::error_code ec) mutable {
        if (!ec) size_ = (new_size + sector_size - 1) / sector_size * sector_size;
        complete(std::move(h), ec);
    });
}

void raw_image::close(op_handler handler) {
    if (closed_) return complete_later(std::move(handler), make_error_code(errc::closed));
    closed_ = true;
    // The file goes at close (its descriptor, and so the image locks, with it).
    auto self = shared_from_this();
    // Then the file's own close (an image below a nested format closes).
    auto release = [this, self, h = std::move(handler)](std::error_code ec) mutable {
        file_->async_close([this, self, ec, h = std::move(h)](std::error_code cec) mutable {
            file_.reset();
            complete(std::move(h), ec ? ec : cec);
        });
    };
    if (options_.read_only) return release(std::error_code{});
    file_->async_flush(std::move(release));
}

}  // namespace qed::detail
