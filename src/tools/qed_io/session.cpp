// SPDX-License-Identifier: BSL-1.0
#include "qed_io/session.hpp"

#include <limits.h>
#include <stdlib.h>
#include <unistd.h>

#include <boost/asio/post.hpp>
#include <cctype>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <memory>

#include "common/image_opts.hpp"
#include "common/jobs.hpp"
#include "common/sizes.hpp"
#include "qed/node_options.hpp"

namespace qed::tools::io {

bool session::open(const std::string& path, open_options options, bool by_options) {
    auto r = open_image(driver_, path, options);
    if (r.ec) {
        if (!r.reason.empty()) {  // qemu-io's form: the name as given, or none for open -o
            report(!by_options ? "can't open device " + name_as_given(path) + ": " + r.reason
                               : "can't open: " + r.reason);
        } else {
            // qemu-io names no device for an image given by its options, and
            // the library's line starts with the json: name they make.
            std::string why = r.error;
            if (by_options && why.rfind(path + ": ", 0) == 0) why.erase(0, path.size() + 2);
            report(!by_options ? "can't open device " + why : "can't open: " + why);
        }
        return false;
    }
    img_ = r.img;
    path_ = path;
    const image_info info = img_.info();
    // A json: name whose top node names its driver chose the format.
    bool named_format = false;
    if (is_json_name(path)) {
        std::string why;
        const auto tree = parse_json_options(path, why);
        named_format = tree && tree->count("driver");
    }
    probed_raw_ = !options.format && !named_format && info.format == image_format::raw && !info.read_only;
    if (probed_raw_) {
        // qemu-io's warning, word for word: scripts and users know it.
        report("warning: Image format was not specified for '" + info.filename +
               "' and probing guessed raw.\n"
               "         Automatically detecting the format is dangerous for raw images, write operations on "
               "block 0 will be restricted.\n"
               "         Specify the 'raw' format explicitly to remove the restrictions.");
    }
    return true;
}

bool session::open_snapshot(const std::string& path, open_options options) {
    open_options ro = options;
    ro.read_only = true;
    ro.open_backing = false;
    auto base = open_image(driver_, path, ro);
    if (base.ec) {
        report("can't open device " + base.error);
        return false;
    }
    const image_info info = base.img.info();
    close_image(driver_, base.img);
    char real[PATH_MAX];
    if (!::realpath(info.filename.c_str(), real)) {
        report("can't open device " + describe(path, std::error_code(errno, std::system_category())));
        return false;
    }
    const char* tmp = std::getenv("TMPDIR");
    std::string overlay = std::string(tmp && *tmp ? tmp : "/var/tmp") + "/qed-io-snapshot.XXXXXX";
    const int fd = ::mkstemp(overlay.data());
    if (fd < 0) {
        report("snapshot: " + describe(overlay, std::error_code(errno, std::system_category())));
        return false;
    }
    ::close(fd);
    create_options co;
    co.size = info.virtual_size;
    co.backing_file = real;
    co.backing_format = info.format;
    co.backend = options.backend;
    std::string error;
    if (create_image(driver_, overlay, co, error)) {
        ::unlink(overlay.c_str());
        report("snapshot: could not create the temporary overlay " + error);
        return false;
    }
    open_options oo = options;
    oo.read_only = false;
    oo.format = image_format::qed;
    auto r = open_image(driver_, overlay, oo);
    ::unlink(overlay.c_str());  // the open image keeps it; nothing stays behind
    if (r.ec) {
        report("can't open device " + r.error);
        return false;
    }
    img_ = r.img;
    path_ = path;
    probed_raw_ = false;  // the image itself is never written
    return true;
}

bool session::close() {
    drain();
    if (!img_) return true;
    if (auto ec = close_image(driver_, img_)) {
        report(describe(path_, ec));
        return false;
    }
    return true;
}

void session::drain() {
    driver_.run_until([this] { return in_flight_ == 0; });
}

std::error_code session::wait(const std::function<void(done_fn)>& start) {
    auto result = std::make_shared<std::optional<std::error_code>>();
    start([result](std::error_code ec) { *result = ec; });
    if (!driver_.run_until([&result] { return result->has_value(); })) return never_completed();
    return **result;
}

namespace {

constexpr std::uint64_t sector = sector_size;

std::uint64_t align_down(std::uint64_t v) {
    return v / sector * sector;
}
std::uint64_t align_up(std::uint64_t v) {
    return (v + sector - 1) / sector * sector;
}

std::error_code check_range(const image& img, std::uint64_t offset, std::uint64_t length) {
    const std::uint64_t size = img.size();
    if (offset > size || length > size - offset) return make_error_code(errc::out_of_range);
    return {};
}

/// The library completes every operation later, never inline; a failure we
/// find ourselves is delivered the same way.
void complete_later(image& img, done_fn done, std::error_code ec) {
    boost::asio::post(img.get_executor(), [done, ec] { done(ec); });
}

/// Whether these first bytes of a raw file would make it probe as an image
/// format (qemu refuses such writes to block 0 of a probed raw image: the
/// guest could otherwise make the host read its file as, say, a QED image
/// with a backing file of the guest's choosing).
bool would_change_format(const std::byte* p, std::uint64_t n) {
    static const std::string_view magics[] = {{"QED\0", 4}, "QFI\xfb",  "KDMV",
                                              "vhdxfile",   "conectix", "WithoutFreeSpace"};
    for (const auto m : magics)
        if (n >= m.size() && std::memcmp(p, m.data(), m.size()) == 0) return true;
    return false;
}

}  // namespace

void session::read(std::uint64_t offset, std::uint64_t length, std::byte* out, done_fn done) {
    if (auto ec = check_range(img_, offset, length)) return complete_later(img_, done, ec);
    if (length == 0) return complete_later(img_, done, {});
    image img = img_;
    if (offset % sector == 0 && length % sector == 0) {
        img.async_read_at(offset, boost::asio::buffer(out, static_cast<std::size_t>(length)),
                          [done](std::error_code ec, std::size_t) { done(ec); });
        return;
    }
    // Read the whole sectors around the range into a bounce buffer.
    const std::uint64_t a0 = align_down(offset), a1 = align_up(offset + length);
    auto bounce = std::make_shared<aligned_buffer>(static_cast<std::size_t>(a1 - a0));
    img.async_read_at(a0, boost::asio::buffer(bounce->data(), bounce->size()),
                      [bounce, out, skip = offset - a0, length, done](std::error_code ec, std::size_t) {
                          if (!ec) std::memcpy(out, bounce->data() + skip, static_cast<std::size_t>(length));
                          done(ec);
                      });
}

void session::write(std::uint64_t offset, std::uint64_t length, const std::byte* in, bool fua, done_fn done) {
    if (auto ec = check_range(img_, offset, length)) return complete_later(img_, done, ec);
    if (length == 0) return complete_later(img_, done, {});
    image img = img_;
    const write_options wo{fua};
    if (offset % sector == 0 && length % sector == 0) {
        if (probed_raw_ && offset == 0 && would_change_format(in, length))
            return complete_later(img_, done, std::make_error_code(std::errc::operation_not_permitted));
        img.async_write_at(offset, boost::asio::buffer(in, static_cast<std::size_t>(length)), wo,
                           [done](std::error_code ec, std::size_t) { done(ec); });
        return;
    }
    // Read-modify-write of the sectors at either end (the middle is
    // overwritten anyway, so only the partial sectors are read).
    const std::uint64_t a0 = align_down(offset), a1 = align_up(offset + length);
    auto bounce = std::make_shared<aligned_buffer>(static_cast<std::size_t>(a1 - a0));
    const bool head = offset != a0;
    const bool tail = offset + length != a1 && (a1 - sector != a0 || !head);
    auto finish = [img, bounce, a0, offset, length, in, wo, done, restricted = probed_raw_]() mutable {
        std::memcpy(bounce->data() + (offset - a0), in, static_cast<std::size_t>(length));
        if (restricted && a0 == 0 && would_change_format(bounce->data(), bounce->size()))
            return complete_later(img, done, std::make_error_code(std::errc::operation_not_permitted));
        img.async_write_at(a0, boost::asio::buffer(bounce->data(), bounce->size()), wo,
                           [bounce, done](std::error_code ec, std::size_t) { done(ec); });
    };
    auto read_tail = [img, bounce, a0, a1, tail, finish, done]() mutable {
        if (!tail) return finish();
        img.async_read_at(a1 - sector, boost::asio::buffer(bounce->data() + (a1 - sector - a0), sector),
                          [finish, done](std::error_code ec, std::size_t) mutable {
                              if (ec) return done(ec);
                              finish();
                          });
    };
    if (!head) return read_tail();
    img.async_read_at(a0, boost::asio::buffer(bounce->data(), sector),
                      [read_tail, done](std::error_code ec, std::size_t) mutable {
                          if (ec) return done(ec);
                          read_tail();
                      });
}

void session::write_zeroes(std::uint64_t offset, std::uint64_t length, bool fua, done_fn done) {
    if (auto ec = check_range(img_, offset, length)) return complete_later(img_, done, ec);
    if (length == 0) return complete_later(img_, done, {});
    // Whole sectors become zeros through the library (zero clusters where a
    // whole cluster is covered); partial sectors at the ends are written.
    const std::uint64_t end = offset + length;
    const std::uint64_t head_end = std::min(align_up(offset), end);
    const std::uint64_t tail_start = std::max(align_down(end), head_end);
    auto zeros = std::make_shared<std::vector<std::byte>>(sector);
    auto steps = std::make_shared<std::vector<step_fn>>();
    if (head_end > offset)
        steps->push_back([this, zeros, offset, head_end, fua](job_done d) {
            write(offset, head_end - offset, zeros->data(), fua, d);
        });
    if (tail_start > head_end)
        steps->push_back([img = img_, head_end, tail_start, fua](job_done d) mutable {
            img.async_write_zeroes(head_end, tail_start - head_end, zero_options{true, fua}, d);
        });
    if (end > tail_start)
        steps->push_back([this, zeros, tail_start, end, fua](job_done d) {
            write(tail_start, end - tail_start, zeros->data(), fua, d);
        });
    run_steps(steps, done);
}

// ---- output ------------------------------------------------------------------

namespace {

std::string time_string(std::chrono::steady_clock::duration d) {
    const double secs = std::chrono::duration<double>(d).count();
    const auto total = static_cast<unsigned long long>(secs);
    const unsigned hundredths = static_cast<unsigned>((secs - static_cast<double>(total)) * 100.0);
    char buf[64];
    if (total >= 3600)
        std::snprintf(buf, sizeof buf, "%llu:%02llu:%02llu.%02u", total / 3600, total / 60 % 60, total % 60,
                      hundredths);
    else if (total >= 60)
        std::snprintf(buf, sizeof buf, "%llu:%02llu.%02u", total / 60, total % 60, hundredths);
    else
        std::snprintf(buf, sizeof buf, "%02llu.%02u sec", total, hundredths);
    return buf;
}

}  // namespace

void print_transfer(const char* verb, std::uint64_t offset, std::uint64_t count, bool quiet,
                    std::chrono::steady_clock::duration elapsed) {
    if (quiet) return;
    std::printf("%s %" PRIu64 "/%" PRIu64 " bytes at offset %" PRIu64 "\n", verb, count, count, offset);
    double secs = std::chrono::duration<double>(elapsed).count();
    if (secs <= 0) secs = 1e-9;
    std::printf("%s, %d ops; %s (%s/sec and %.4f ops/sec)\n", io_size_string(static_cast<double>(count)).c_str(), 1,
                time_string(elapsed).c_str(), io_size_string(static_cast<double>(count) / secs).c_str(), 1.0 / secs);
}

void dump_buffer(const std::byte* p, std::uint64_t offset, std::uint64_t n) {
    for (std::uint64_t line = 0; line < n; line += 16) {
        const std::uint64_t k = std::min<std::uint64_t>(16, n - line);
        std::printf("%08" PRIx64 ": ", offset + line);
        for (std::uint64_t j = 0; j < k; ++j) std::printf(" %02x", std::to_integer<unsigned>(p[line + j]));
        std::printf("  ");
        for (std::uint64_t j = 0; j < k; ++j) {
            // qemu-io shows only letters and digits; scripts compare the column.
            const int c = std::to_integer<int>(p[line + j]);
            std::putchar(std::isalnum(c) ? c : '.');
        }
        std::printf("\n");
    }
}

std::string error_text(std::error_code ec) {
    // Requests outside the image fail with EIO in qemu-io; say the same.
    if (ec == make_error_code(errc::out_of_range)) return std::strerror(EIO);
    if (ec == never_completed()) return "internal error: the request never completed";
    return ec.message();
}

}  // namespace qed::tools::io
