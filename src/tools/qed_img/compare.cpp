// SPDX-License-Identifier: BSL-1.0
// qed-img compare: do two images read the same? Exit 0 identical, 1
// different (with the first differing offset), 2 error.
#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstring>

#include "common/driver.hpp"
#include "common/image_opts.hpp"
#include "common/jobs.hpp"
#include "qed_img/commands.hpp"
#include "qed_img/copy_engine.hpp"
#include "qed_img/options.hpp"

namespace qed::tools::img {
namespace {

constexpr int exit_error = 2;
constexpr std::uint64_t cell_size = 2u << 20;

int error(const std::string& line) {
    report(line);
    return exit_error;
}

/// Whether [off, off + len) reads as zeros according to `extents` (sorted,
/// covering the image).
bool reads_zero(const std::vector<extent>& extents, std::uint64_t off, std::uint64_t len) {
    // Extents are sorted: binary search for the one holding `off`.
    auto it = std::upper_bound(extents.begin(), extents.end(), off,
                               [](std::uint64_t v, const extent& e) { return v < e.offset; });
    if (it == extents.begin()) return false;
    --it;
    for (; it != extents.end() && it->offset < off + len; ++it)
        if (!it->zero) return false;
    return true;
}

/// The first 512-byte sector where the buffers differ (relative), if any.
std::optional<std::uint64_t> first_difference(const std::byte* a, const std::byte* b, std::uint64_t n) {
    for (std::uint64_t pos = 0; pos < n; pos += sector_size) {
        const std::size_t k = static_cast<std::size_t>(std::min<std::uint64_t>(sector_size, n - pos));
        if (b ? std::memcmp(a + pos, b + pos, k) != 0 : !is_zero(a + pos, k)) return pos;
    }
    return std::nullopt;
}

struct side {
    image img;
    std::vector<extent> extents;
};

/// The parts of [begin, end) where `a` or `b` (when given) may read
/// anything but zeros: only those need reading.
std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges_to_read(const side& a, const side* b, std::uint64_t begin,
                                                                    std::uint64_t end) {
    std::vector<std::pair<std::uint64_t, std::uint64_t>> out;
    auto add = [&out](std::uint64_t from, std::uint64_t to) {
        if (!out.empty() && out.back().second >= from)
            out.back().second = std::max(out.back().second, to);
        else
            out.emplace_back(from, to);
    };
    auto collect = [&](const std::vector<extent>& extents) {
        std::vector<std::pair<std::uint64_t, std::uint64_t>> v;
        for (const auto& e : extents) {
            const std::uint64_t from = std::max(e.offset, begin), to = std::min(e.offset + e.length, end);
            if (!e.zero && from < to) v.emplace_back(from, to);
        }
        return v;
    };
    auto x = collect(a.extents);
    if (b) {
        auto y = collect(b->extents);
        std::vector<std::pair<std::uint64_t, std::uint64_t>> merged(x.size() + y.size());
        std::merge(x.begin(), x.end(), y.begin(), y.end(), merged.begin());
        x = std::move(merged);
    }
    for (const auto& [from, to] : x) add(from, to);
    return out;
}

/// Compare [begin, end) of `a` with `b` (or with zeros when `b` is null).
/// Returns the lowest differing offset found, in `mismatch`.
std::error_code compare_range(driver& d, const side& a, const side* b, std::uint64_t begin, std::uint64_t end,
                              std::optional<std::uint64_t>& mismatch, const std::function<void(double)>& progress) {
    // Cells of at most cell_size over the ranges that need reading, cut
    // along the cell grid; handed out in order as jobs start (a large image
    // has too many to list up front).
    const auto ranges = ranges_to_read(a, b, begin, end);
    std::uint64_t count = 0;
    for (const auto& [from, to] : ranges) count += (to - 1) / cell_size - from / cell_size + 1;
    std::size_t range_index = 0;
    std::uint64_t cursor = ranges.empty() ? 0 : ranges[0].first;
    auto next_cell = [&]() -> std::pair<std::uint64_t, std::uint64_t> {
        if (cursor >= ranges[range_index].second) cursor = ranges[++range_index].first;
        const std::uint64_t off = cursor;
        cursor = std::min(ranges[range_index].second, (off / cell_size + 1) * cell_size);
        return {off, cursor - off};
    };
    job_options o;
    o.depth = 16;
    // Cells start in order, so once a difference is known no later cell can
    // hold an earlier one: stop starting new cells.
    o.stop = [&mismatch] { return mismatch.has_value(); };
    o.progress = [&](std::uint64_t done) {
        if (progress) progress(100.0 * static_cast<double>(done) / static_cast<double>(count));
    };
    auto job = [&](std::uint64_t, job_done done) {
        const auto [off, len] = next_cell();
        const bool a_zero = reads_zero(a.extents, off, len);
        const bool b_zero = !b || reads_zero(b->extents, off, len);
        // Read only the side(s) that are not known zeros.
        struct buffers {
            aligned_buffer x, y;
        };
        auto bufs = std::make_shared<buffers>();
        const side* reader1 = a_zero ? b : &a;
        const side* reader2 = (a_zero || b_zero) ? nullptr : b;
        bufs->x = aligned_buffer(static_cast<std::size_t>(len));
        if (reader2) bufs->y = aligned_buffer(static_cast<std::size_t>(len));
        auto finish = [bufs, off, len, two = reader2 != nullptr, &mismatch, done](std::error_code ec) {
            if (!ec) {
                if (auto rel = first_difference(bufs->x.data(), two ? bufs->y.data() : nullptr, len)) {
                    if (!mismatch || off + *rel < *mismatch) mismatch = off + *rel;
                }
            }
            done(ec);
        };
        image img1 = reader1->img;
        img1.async_read_at(off, boost::asio::buffer(bufs->x.data(), static_cast<std::size_t>(len)),
                           [bufs, off, len, reader2, finish](std::error_code ec, std::size_t) {
                               if (ec || !reader2) return finish(ec);
                               image img2 = reader2->img;
                               img2.async_read_at(off,
                                                  boost::asio::buffer(bufs->y.data(), static_cast<std::size_t>(len)),
                                                  [finish](std::error_code ec2, std::size_t) { finish(ec2); });
                           });
    };
    return run_jobs(d, count, job, o);
}

/// First offset where the allocation status (present, zero, data) differs.
std::optional<std::uint64_t> status_mismatch(const std::vector<extent>& a, const std::vector<extent>& b) {
    std::size_t i = 0, j = 0;
    while (i < a.size() && j < b.size()) {
        const extent& x = a[i];
        const extent& y = b[j];
        const std::uint64_t at = std::max(x.offset, y.offset);
        if (x.present != y.present || x.zero != y.zero || x.data != y.data) return at;
        const std::uint64_t x_end = x.offset + x.length, y_end = y.offset + y.length;
        if (x_end <= y_end) ++i;
        if (y_end <= x_end) ++j;
    }
    return std::nullopt;
}

}  // namespace

int run_compare(const words& words) {
    auto args = parse("compare", words,
                      {{'f', "", true},
                       {'F', "", true},
                       {'s', "", false},
                       {'q', "", false},
                       {'p', "", false},
                       {'T', "", true},
                       {'U', "force-share", false},
                       {0, "object", true},
                       {0, "image-opts", false}});
    if (!args) return exit_error;
    if (args->has("image-opts") && args->has("F")) return error("--image-opts and -F are mutually exclusive");
    if (std::string why; !apply_image_options(*args, 2, "f", why)) return error(why);
    std::optional<image_format> fmt1, fmt2;
    bool direct = false;
    if (!format_value(args->last("f"), fmt1) || !format_value(args->last("F"), fmt2) ||
        !cache_value(args->last("T"), direct))
        return exit_error;
    if (!positional_count("compare", *args, 2, 2)) return exit_error;
    const bool quiet = args->has("q");
    const bool strict = args->has("s");
    const std::string path1 = args->positional[0], path2 = args->positional[1];

    driver d;
    open_options o;
    o.read_only = true;
    o.force_share = args->has("force-share");
    o.direct = direct;
    o.format = fmt1;
    auto r1 = open_image(d, path1, o);
    if (r1.ec) return error(r1.error);
    o.format = fmt2.has_value() ? fmt2 : fmt1;
    auto r2 = open_image(d, path2, o);
    if (r2.ec) {
        close_image(d, r1.img);
        return error(r2.error);
    }
    side a{r1.img, {}}, b{r2.img, {}};
    auto done = [&](int status, const std::string& line) {
        if (!quiet && !line.empty()) std::printf("%s\n", line.c_str());
        close_image(d, a.img);
        close_image(d, b.img);
        return status;
    };
    auto io_error = [&](const std::string& path, std::error_code ec) {
        close_image(d, a.img);
        close_image(d, b.img);
        return error(path + ": " + ec.message());
    };
    const std::uint64_t size1 = a.img.size(), size2 = b.img.size();
    if (size1 != size2) {
        if (strict) return done(1, "Strict mode: Image size mismatch!");
    }
    if (auto ec = block_status(d, a.img, 0, size1, a.extents)) return io_error(path1, ec);
    if (auto ec = block_status(d, b.img, 0, size2, b.extents)) return io_error(path2, ec);

    progress_meter meter(args->has("p") && !quiet);
    meter.update(0);
    const std::uint64_t common = std::min(size1, size2);
    std::optional<std::uint64_t> mismatch;
    if (auto ec = compare_range(d, a, &b, 0, common, mismatch, [&](double p) {
            meter.update(p * static_cast<double>(common) / static_cast<double>(std::max(size1, size2)));
        }))
        return io_error(path1 + " / " + path2, ec);
    std::optional<std::uint64_t> status;
    if (strict) status = status_mismatch(a.extents, b.extents);
    if (status && (!mismatch || *status <= *mismatch)) {
        meter.finish();
        return done(1, "Strict mode: Offset " + std::to_string(*status) + " block status mismatch!");
    }
    if (!mismatch && size1 != size2) {
        // The longer image must read zeros past the end of the shorter one.
        if (!quiet) std::printf("Warning: Image size mismatch!\n");
        const side& longer = size1 > size2 ? a : b;
        if (auto ec = compare_range(d, longer, nullptr, common, std::max(size1, size2), mismatch, {}))
            return io_error(size1 > size2 ? path1 : path2, ec);
    }
    meter.finish();
    if (mismatch) return done(1, "Content mismatch at offset " + std::to_string(*mismatch) + "!");
    return done(0, "Images are identical.");
}

}  // namespace qed::tools::img
