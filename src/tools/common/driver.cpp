// SPDX-License-Identifier: BSL-1.0
#include "common/driver.hpp"

#include <cstdio>

#include "common/image_opts.hpp"
#include "qed/node_options.hpp"

namespace qed::tools {

std::string program_name = "qed";

void report(std::string_view line) {
    std::fflush(stdout);
    std::fprintf(stderr, "%s: %.*s\n", program_name.c_str(), static_cast<int>(line.size()), line.data());
    std::fflush(stderr);
}

bool driver::run_until(const std::function<bool()>& done) {
    while (!done()) {
        if (ioc_.stopped()) ioc_.restart();
        if (ioc_.run_one() == 0) {
            ioc_.restart();
            return done();
        }
    }
    return true;
}

std::error_code never_completed() {
    return std::make_error_code(std::errc::state_not_recoverable);
}

// ---- log collection --------------------------------------------------------

log_sink log_collector::sink() {
    return [s = state_](std::string_view line) {
        if (s->pass_through)
            report(line);
        else
            s->lines.emplace_back(line);
    };
}

void log_collector::pass_through() {
    state_->pass_through = true;
    for (const auto& l : state_->lines) report(l);
    state_->lines.clear();
}

std::vector<std::string> log_collector::lines() const {
    return state_->lines;
}

const char* qemu_header_refusal(std::error_code ec) {
    if (ec.category() != qed::category()) return nullptr;
    switch (static_cast<errc>(ec.value())) {
        case errc::bad_magic:
            return "Image not in QED format";
        case errc::invalid_cluster_size:
            return "QED cluster size is invalid";
        case errc::invalid_table_size:
            return "QED table size is invalid";
        // qemu finds a header too large for the file through the L1 offset.
        case errc::invalid_header_size:
        case errc::invalid_l1_offset:
        case errc::l1_table_past_eof:
            return "QED table offset is invalid";
        case errc::image_size_unaligned:
        case errc::image_too_large:
            return "QED image size is invalid";
        default:
            return nullptr;
    }
}

std::string describe(const std::string& path, std::error_code ec) {
    if (ec == never_completed()) return path + ": internal error: an operation never completed";
    return path + ": " + ec.message();
}

open_result open_image(driver& d, const std::string& path, open_options options) {
    if (options.throttle_groups.empty()) options.throttle_groups = throttle_groups();  // from --object
    log_collector logs;
    options.log = logs.sink();
    // As qemu-img and qemu-io, nothing is said of an NBD connection that was
    // lost and re-established within reconnect-delay (requests that fail
    // after it say so in `log`).
    options.notice = [](std::string_view) {};
    auto r = await<std::error_code, image>(
        d, [&](auto h) { image::async_open(d.executor(), path, std::move(options), std::move(h)); });
    open_result out;
    if (!r) {
        out.ec = never_completed();
        out.error = describe(path, out.ec);
        return out;
    }
    out.ec = std::get<0>(*r);
    if (out.ec && (is_json_name(path) || path.rfind("ssh:", 0) == 0)) {
        // QEMU's form for names it can't show as a path: the name as the
        // user wrote it (an --image-opts list too), then the driver's line
        // without the name the library put in front of it.
        const auto lines = logs.lines();
        std::string why = lines.empty() ? out.ec.message() : lines.back();
        std::vector<std::string> prefixes{path + ": "};
        std::string ignored;
        if (auto tree = parse_json_options(path, ignored)) {
            prefixes.push_back(json_name(*tree) + ": ");
            prefixes.push_back(node_display_name(*tree) + ": ");
        }
        for (const auto& p : prefixes) {
            if (why.size() > p.size() && why.compare(0, p.size(), p) == 0) {
                why.erase(0, p.size());
                break;
            }
        }
        out.reason = why;
        out.error = "Could not open '" + name_as_given(path) + "': " + why;
        return out;
    }
    if (out.ec) {
        const auto lines = logs.lines();
        out.error = lines.empty() ? describe(path, out.ec) : lines.back();
        // A header the image's own open refused: qemu's words, which scripts
        // match (the library's detail goes to programs that log everything).
        const std::string own = path + ": ";
        const bool about_top =
            out.error.rfind(own, 0) == 0 && out.error.compare(own.size(), 27, "Could not open backing file") != 0;
        // qemu says "QED header size is too large" where the header area
        // passes the format's limit (the library's line starts with it), and
        // "QED table offset is invalid" where it only overruns the file.
        static constexpr std::string_view too_large = "QED header size is too large";
        if (about_top && out.ec == errc::invalid_header_size &&
            out.error.compare(own.size(), too_large.size(), too_large) == 0)
            out.error = own + std::string(too_large);
        else if (const char* q = qemu_header_refusal(out.ec); q && about_top)
            out.error = own + q;
        return out;
    }
    out.img = std::move(std::get<1>(*r));
    logs.pass_through();
    return out;
}

// ---- synchronous operations --------------------------------------------------

namespace {

template <class Start>
std::error_code await_ec(driver& d, Start start) {
    auto r = await<std::error_code>(d, std::move(start));
    return r ? std::get<0>(*r) : never_completed();
}

template <class Start>
std::error_code await_io(driver& d, Start start) {
    auto r = await<std::error_code, std::size_t>(d, std::move(start));
    return r ? std::get<0>(*r) : never_completed();
}

}  // namespace

std::error_code create_image(driver& d, const std::string& path, create_options options, std::string& error) {
    log_collector logs;
    options.log = logs.sink();
    const auto ec =
        await_ec(d, [&](auto h) { image::async_create(d.executor(), path, std::move(options), std::move(h)); });
    if (ec) {
        const auto lines = logs.lines();
        error = lines.empty() ? describe(path, ec) : lines.back();
    }
    return ec;
}

std::error_code close_image(driver& d, image& img) {
    if (!img) return {};
    auto ec = await_ec(d, [&](auto h) { img.async_close(std::move(h)); });
    img = image();
    return ec;
}

std::error_code read(driver& d, image& img, std::uint64_t offset, void* data, std::size_t length) {
    return await_io(d, [&](auto h) { img.async_read_at(offset, boost::asio::buffer(data, length), std::move(h)); });
}

std::error_code write(driver& d, image& img, std::uint64_t offset, const void* data, std::size_t length) {
    return await_io(d, [&](auto h) { img.async_write_at(offset, boost::asio::buffer(data, length), std::move(h)); });
}

std::error_code write_zeroes(driver& d, image& img, std::uint64_t offset, std::uint64_t length, zero_options options) {
    return await_ec(d, [&](auto h) { img.async_write_zeroes(offset, length, options, std::move(h)); });
}

std::error_code flush(driver& d, image& img) {
    return await_ec(d, [&](auto h) { img.async_flush(std::move(h)); });
}

std::error_code grow(driver& d, image& img, std::uint64_t new_size) {
    return await_ec(d, [&](auto h) { img.async_grow(new_size, std::move(h)); });
}

std::error_code change_backing_file(driver& d, image& img, const std::string& name,
                                    std::optional<image_format> format) {
    return await_ec(d, [&](auto h) { img.async_change_backing_file(name, format, std::move(h)); });
}

std::error_code make_empty(driver& d, image& img) {
    return await_ec(d, [&](auto h) { img.async_make_empty(std::move(h)); });
}

std::error_code check(driver& d, image& img, check_options options, check_result& out) {
    auto r = await<std::error_code, check_result>(d, [&](auto h) { img.async_check(options, std::move(h)); });
    if (!r) return never_completed();
    out = std::move(std::get<1>(*r));
    return std::get<0>(*r);
}

std::error_code block_status(driver& d, image& img, std::uint64_t offset, std::uint64_t length,
                             std::vector<extent>& out) {
    // Asked in pieces, so one call never walks an unbounded stretch of
    // tables; a piece that came back as one or two extents (nothing there)
    // doubles the next one (and it stays large), so empty space costs
    // O(log size) calls, an empty 8 EiB image a few dozen, and allocated
    // space what its metadata costs.
    std::uint64_t piece = std::uint64_t{8} << 30;
    const std::uint64_t end = offset + length;
    for (std::uint64_t pos = offset; pos < end;) {
        const std::uint64_t n = std::min(piece, end - pos);
        auto r = await<std::error_code, std::vector<extent>>(
            d, [&](auto h) { img.async_block_status(pos, n, std::move(h)); });
        if (!r) return never_completed();
        if (auto ec = std::get<0>(*r)) return ec;
        std::uint64_t covered = 0;
        for (const auto& e : std::get<1>(*r)) {
            append_extent(out, e);
            covered += e.length;
        }
        // The library promises extents covering the whole range.
        if (covered != n) return std::make_error_code(std::errc::io_error);
        pos += n;
        if (std::get<1>(*r).size() <= 2 && piece <= (std::uint64_t{1} << 62)) piece *= 2;
    }
    return {};
}

image chain_member(const image& top, unsigned depth) {
    image img = top;
    for (unsigned i = 0; i < depth && img; ++i) img = img.backing();
    return img;
}

}  // namespace qed::tools
