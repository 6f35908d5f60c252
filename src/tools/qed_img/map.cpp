// SPDX-License-Identifier: BSL-1.0
// qed-img map: where each guest range comes from (which chain level, data,
// zeros or nothing) and where it lives in the file.
#include <cinttypes>
#include <cstdio>

#include "common/driver.hpp"
#include "common/image_opts.hpp"
#include "qed_img/commands.hpp"
#include "qed_img/options.hpp"

namespace qed::tools::img {
namespace {

void print_json(const std::vector<extent>& extents) {
    std::printf("[");
    for (std::size_t k = 0; k < extents.size(); ++k) {
        const extent& e = extents[k];
        std::printf("%s{ \"start\": %" PRIu64 ", \"length\": %" PRIu64
                    ", \"depth\": %u, \"present\": %s, \"zero\": %s, "
                    "\"data\": %s",
                    k ? ",\n" : "", e.offset, e.length, e.depth, e.present ? "true" : "false",
                    e.zero ? "true" : "false", e.data ? "true" : "false");
        if (e.host_offset) std::printf(", \"offset\": %" PRIu64, *e.host_offset);
        std::printf("}");
    }
    std::printf("]\n");
}

void print_human(const image& top, const std::vector<extent>& extents) {
    // Only data is listed; runs that continue each other in one file merge.
    struct row {
        std::uint64_t start, length, host;
        std::string file;
    };
    std::vector<row> rows;
    for (const auto& e : extents) {
        if (!e.data || !e.host_offset) continue;
        const std::string file = chain_member(top, e.depth).info().filename;
        if (!rows.empty()) {
            row& last = rows.back();
            if (last.file == file && last.start + last.length == e.offset &&
                last.host + last.length == *e.host_offset) {
                last.length += e.length;
                continue;
            }
        }
        rows.push_back({e.offset, e.length, *e.host_offset, file});
    }
    std::printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
    for (const auto& r : rows)
        std::printf("%#-15" PRIx64 " %#-15" PRIx64 " %#-15" PRIx64 " %s\n", r.start, r.length, r.host, r.file.c_str());
}

}  // namespace

int run_map(const words& words) {
    auto args = parse("map", words,
                      {{'f', "format", true},
                       {0, "output", true},
                       {0, "start-offset", true},
                       {0, "max-length", true},
                       {'U', "force-share", false},
                       {0, "object", true},
                       {0, "image-opts", false}});
    if (!args) return 1;
    if (std::string why; !apply_image_options(*args, 1, "format", why)) return fail(why);
    bool as_json = false;
    std::optional<image_format> fmt;
    if (!output_value(*args, as_json) || !format_value(args->last("format"), fmt)) return 1;
    if (!positional_count("map", *args, 1, 1)) return 1;
    const std::string path = args->positional[0];
    std::uint64_t start = 0;
    std::optional<std::uint64_t> max_length;
    if (auto s = args->last("start-offset")) {
        auto v = size_value("--start-offset", *s);
        if (!v) return 1;
        start = *v;
    }
    if (auto s = args->last("max-length")) {
        auto v = size_value("--max-length", *s);
        if (!v) return 1;
        max_length = *v;
    }

    driver d;
    open_options o;
    o.read_only = true;
    o.force_share = args->has("force-share");
    o.format = fmt;
    auto opened = open_image(d, path, o);
    if (opened.ec) return fail(opened.error);
    image img = opened.img;
    const std::uint64_t size = img.size();
    const std::uint64_t begin = std::min(start, size);
    const std::uint64_t end = max_length ? begin + std::min(*max_length, size - begin) : size;

    // Requests are in whole sectors: ask for the covering range, then clip.
    std::vector<extent> all;
    const std::uint64_t a0 = begin / sector_size * sector_size;
    const std::uint64_t a1 = std::min(size, (end + sector_size - 1) / sector_size * sector_size);
    std::error_code ec = a1 > a0 ? block_status(d, img, a0, a1 - a0, all) : std::error_code{};
    if (ec) {
        close_image(d, img);
        return fail(path + ": could not read the allocation status: " + ec.message());
    }
    std::vector<extent> clipped;
    for (extent e : all) {
        const std::uint64_t s = std::max(e.offset, begin);
        const std::uint64_t t = std::min(e.offset + e.length, end);
        if (s >= t) continue;
        if (e.host_offset) *e.host_offset += s - e.offset;
        e.offset = s;
        e.length = t - s;
        clipped.push_back(e);
    }
    if (as_json)
        print_json(clipped);
    else
        print_human(img, clipped);
    std::fflush(stdout);
    close_image(d, img);
    return 0;
}

}  // namespace qed::tools::img
