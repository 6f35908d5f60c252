// SPDX-License-Identifier: BSL-1.0
// qed-img convert: copy an image into a new (or, with -n, existing) one,
// raw <-> qed or qed -> qed. The backing chain is flattened unless -B names
// a backing file for the copy; zero runs stay sparse.
#include <algorithm>
#include <cstdio>
#include <functional>

#include "common/driver.hpp"
#include "common/files.hpp"
#include "common/image_opts.hpp"
#include "qed_img/commands.hpp"
#include "qed_img/copy_engine.hpp"
#include "qed_img/options.hpp"

namespace qed::tools::img {
namespace {

struct target_settings {
    image_format format = image_format::raw;
    std::uint32_t cluster_size = default_cluster_size;
    std::uint32_t table_size = default_table_size;
    std::string backing;
    std::optional<image_format> backing_format;
};

// -o for the new image. Returns an exit status, or -1 to go on.
int target_options(const std::string& dst, target_settings& t, const std::vector<std::string>& values) {
    auto list = option_list(values);
    if (!list) return 1;
    for (const auto& [name, value] : *list) {
        if (name == "help") {
            std::printf("Supported options:\n  size=<size>  (ignored: the source's size is used)\n");
            if (t.format == image_format::qed)
                std::printf("  backing_file=<str>\n  backing_fmt=<str>\n  cluster_size=<size>\n  table_size=<num>\n");
            return 0;
        }
        if (t.format == image_format::qed && (name == "cluster_size" || name == "table_size")) {
            auto v = size_value(dst + ": " + name, value);
            if (!v) return 1;
            const bool ok = name == "cluster_size" ? is_valid_cluster_size(*v) : is_valid_table_size(*v);
            if (!ok)
                return fail(dst + (name == "cluster_size"
                                       ? ": QED cluster size must be within range [4096, 67108864] and power of 2"
                                       : ": QED table size must be within range [1, 16] and power of 2"));
            (name == "cluster_size" ? t.cluster_size : t.table_size) = static_cast<std::uint32_t>(*v);
        } else if (t.format == image_format::qed && name == "backing_file") {
            t.backing = value;
        } else if (t.format == image_format::qed && name == "backing_fmt") {
            t.backing_format = parse_format(value);
            if (!t.backing_format) return fail(dst + ": unknown backing file format '" + value + "'");
        } else if (name != "size") {
            return fail(dst + ": Invalid parameter '" + name + "' for format '" + std::string(to_string(t.format)) +
                        "'");
        }
    }
    return -1;
}

/// Requests are at most this long, as QEMU's (BDRV_REQUEST_MAX_BYTES).
constexpr std::uint64_t max_request = (std::uint64_t{1} << 31) - sector_size;

/// Block status of [offset, offset + length) as qemu-img convert --salvage
/// asks it: a query that fails is asked again on a quarter of the range,
/// down to one sector, whose status is then "data" after one warning (in
/// QEMU's words), so it is read (and its read salvaged) like any data.
std::error_code salvage_status(driver& d, image& img, std::uint64_t offset, std::uint64_t length,
                               const std::function<void(const std::string&)>& warn, std::vector<extent>& out) {
    const std::uint64_t end = offset + length;
    for (std::uint64_t pos = offset; pos < end;) {
        std::uint64_t n = std::min(end - pos, max_request);
        for (;;) {
            std::vector<extent> part;
            const std::error_code ec = block_status(d, img, pos, n, part);
            if (!ec) {
                for (const auto& e : part) append_extent(out, e);
                pos += n;
                break;
            }
            if (ec == never_completed()) return ec;
            if (n <= sector_size) {
                warn("error while reading block status at offset " + std::to_string(pos) + ": " + ec.message());
                append_extent(out, extent{pos, n, 0, true, false, true, std::nullopt});
                pos += n;
                break;
            }
            n = (n / sector_size + 3) / 4 * sector_size;  // a quarter, in whole sectors
        }
    }
    return {};
}

}  // namespace

int run_convert(const words& words) {
    auto args = parse("convert", words, {{'f', "", true},          {'O', "", true},
                                         {'o', "", true},          {'B', "", true},
                                         {'F', "", true},          {'n', "", false},
                                         {'p', "", false},         {'q', "", false},
                                         {'t', "", true},          {'T', "", true},
                                         {'m', "", true},          {'W', "", false},
                                         {'S', "", true},          {'U', "force-share", false},
                                         {'c', "", false},         {'C', "", false},
                                         {'l', "", true},          {0, "target-is-zero", false},
                                         {0, "salvage", false},    {0, "object", true},
                                         {0, "image-opts", false}, {0, "target-image-opts", false}});
    if (!args) return 1;
    if (args->has("target-image-opts")) return fail("convert: --target-image-opts is not supported");
    // Every word but the last (the target) names a source image.
    if (std::string why;
        !apply_image_options(*args, args->positional.empty() ? 0 : args->positional.size() - 1, "f", why))
        return fail(why);
    if (args->has("c")) return fail("convert: compression (-c) is not supported by QED or raw images");
    if (args->has("l")) return fail("convert: snapshots (-l) are not supported by QED or raw images");
    if (args->has("C")) return fail("convert: copy offloading (-C) is not supported");
    std::optional<image_format> src_fmt, dst_fmt;
    bool src_direct = false, dst_direct = false;
    if (!format_value(args->last("f"), src_fmt) || !format_value(args->last("O"), dst_fmt) ||
        !cache_value(args->last("T"), src_direct) || !cache_value(args->last("t"), dst_direct))
        return 1;
    if (args->positional.size() > 2)
        return fail("convert: only one source image is supported (got " + std::to_string(args->positional.size() - 1) +
                    ")");
    if (!positional_count("convert", *args, 2, 2)) return 1;
    const std::string src_path = args->positional[0];
    const std::string dst_path = args->positional[1];
    const bool existing = args->has("n");
    const bool quiet = args->has("q");
    unsigned requests = 16;
    if (auto m = args->last("m")) {
        char* end = nullptr;
        const unsigned long v = std::strtoul(m->c_str(), &end, 10);
        if (m->empty() || *end || v < 1 || v > 32)
            return fail("convert: invalid number of requests '" + *m + "' (1 to 32)");
        requests = static_cast<unsigned>(v);
    }
    std::uint64_t sparse = 4096;
    if (auto s = args->last("S")) {
        auto v = size_value("-S", *s);
        if (!v) return 1;
        if (*v % sector_size) return fail("convert: -S must be a multiple of 512 (got " + *s + ")");
        sparse = *v;
    }
    if (args->has("target-is-zero") && !existing) return fail("convert: --target-is-zero requires -n");

    target_settings t;
    t.format = dst_fmt.value_or(image_format::raw);
    if (!existing) {
        if (const int status = target_options(dst_path, t, args->all("o")); status >= 0) return status;
    } else if (!args->all("o").empty()) {
        return fail("convert: -o cannot be used with -n (the target exists already)");
    }
    if (auto b = args->last("B")) t.backing = *b;
    if (auto bf = args->last("F")) {
        t.backing_format = parse_format(*bf);
        if (!t.backing_format) return fail(dst_path + ": unknown backing file format '" + *bf + "'");
    }
    if (!t.backing.empty()) {
        if (existing) return fail("convert: -B cannot be used with -n");
        if (t.format == image_format::raw) return fail(dst_path + ": Backing file not supported for file format 'raw'");
        if (!t.backing_format)
            return fail(dst_path + ": Backing file specified without backing format (use -F qed or -F raw)");
    }

    driver d;
    open_options so;
    so.read_only = true;
    so.force_share = args->has("force-share");  // the source only, as in qemu-img
    so.format = src_fmt;
    so.direct = src_direct;
    auto src = open_image(d, src_path, so);
    if (src.ec) return fail(src.error);
    const std::uint64_t size = src.img.size();

    // Same file on both sides would destroy the source.
    const auto src_id = identity_of(src_path);
    if (src_id && identity_of(dst_path) == src_id) {
        close_image(d, src.img);
        return fail(dst_path + ": the target is the source image itself");
    }

    bool created = false;
    auto abandon = [&](const std::string& line, image* dst) {
        if (dst) close_image(d, *dst);
        close_image(d, src.img);
        if (created) remove_file(dst_path);  // no half-written copy left behind
        return fail(line);
    };

    if (!existing) {
        if (!t.backing.empty()) {
            open_options bo;
            bo.read_only = true;
            bo.format = t.backing_format;
            bo.open_backing = false;
            auto b = open_image(d, resolve_backing(dst_path, t.backing), bo);
            if (b.ec) return abandon(dst_path + ": could not open backing file: " + b.error, nullptr);
            close_image(d, b.img);
        }
        if (t.format == image_format::qed && size > max_image_size(t.cluster_size, t.table_size))
            return abandon(dst_path + ": image size " + std::to_string(size) +
                               " is too large for the cluster_size and table_size given",
                           nullptr);
        create_options c;
        c.format = t.format;
        c.size = size;
        c.cluster_size = t.cluster_size;
        c.table_size = t.table_size;
        c.backing_file = t.backing;
        c.backing_format = t.backing.empty() ? std::nullopt : t.backing_format;
        if (size == 0 && !t.backing.empty())
            return abandon(dst_path + ": cannot give an empty image a backing file", nullptr);
        const bool existed = file_exists(dst_path);
        std::string error;
        if (auto ec = create_image(d, dst_path, c, error)) {
            created = !existed;
            return abandon(error, nullptr);
        }
        created = !existed;
    }

    open_options to;
    to.format = existing ? dst_fmt : std::optional<image_format>(t.format);
    to.direct = dst_direct;
    auto dst = open_image(d, dst_path, to);
    if (dst.ec) return abandon(dst.error, nullptr);
    image target = dst.img;
    const image_info ti = target.info();
    if (ti.virtual_size < size) return abandon("output file is smaller than input file (" + dst_path + ")", &target);

    // What the target must receive, range by range. With --salvage, a
    // range whose status can't be read is data (one warning per sector).
    const bool salvage = args->has("salvage");
    auto warn = [quiet](const std::string& line) {
        if (!quiet) report("warning: " + line);
    };
    std::vector<extent> extents;
    if (auto ec =
            salvage ? salvage_status(d, src.img, 0, size, warn, extents) : block_status(d, src.img, 0, size, extents))
        return abandon(src_path + ": could not read the allocation status: " + ec.message(), &target);
    const bool has_backing = !t.backing.empty();
    bool same_backing = false;
    if (has_backing) {
        const auto si = src.img.info();
        same_backing = !si.backing_file_full.empty() && identity_of(si.backing_file_full) &&
                       identity_of(si.backing_file_full) == identity_of(resolve_backing(dst_path, t.backing));
    }
    const bool reads_zeros = !existing ? !has_backing : args->has("target-is-zero");
    auto to_segments = [&](const std::vector<extent>& status) {
        std::vector<segment> segments;
        for (const auto& e : status) {
            segment::action a;
            if (has_backing && !(e.depth == 0 && e.present)) {
                // Below the source's top: the new backing file supplies it when
                // it is the source's own backing file; else bring it up to date.
                if (same_backing) continue;
                a = segment::action::update;
            } else if (e.data) {
                a = segment::action::copy;
            } else if (sparse == 0) {
                a = segment::action::copy;  // -S 0: everything written as data
            } else {
                if (reads_zeros) continue;
                a = segment::action::zero;
            }
            if (!segments.empty() && segments.back().what == a &&
                segments.back().offset + segments.back().length == e.offset)
                segments.back().length += e.length;
            else
                segments.push_back({e.offset, e.length, a});
        }
        return segments;
    };

    copy_plan plan;
    plan.source = src.img;
    plan.target = target;
    plan.reference = target;  // update: compare with what the target reads now (its backing)
    plan.reference_size = size;
    plan.target_reads_zeros = reads_zeros;
    plan.salvage = salvage;
    plan.warn = warn;
    plan.detect_zeroes = sparse != 0;
    plan.zero_block = sparse ? sparse : 4096;
    size_cells(plan, ti.format == image_format::qed ? ti.cluster_size : 0, requests);
    progress_meter meter(args->has("p") && !quiet);
    meter.update(0);
    plan.progress = [&meter](std::uint64_t done, std::uint64_t total) {
        meter.update(total ? 100.0 * static_cast<double>(done) / static_cast<double>(total) : 100.0);
    };
    if (!salvage) {
        if (auto ec = run_copy(d, plan, to_segments(extents)))
            return abandon(copy_failure(plan, ec, src_path, dst_path, dst_path), &target);
    } else {
        // As qemu-img: the status was asked for the whole image above; the
        // copy asks it again, range by range, just before it reads, one
        // range at a time, so each warning comes where the copy meets it.
        plan.depth = 1;
        plan.progress = nullptr;
        for (std::uint64_t at = 0; at < size; at += plan.cell_size) {
            const std::uint64_t n = std::min(plan.cell_size, size - at);
            std::vector<extent> here;
            if (auto ec = salvage_status(d, src.img, at, n, warn, here))
                return abandon(src_path + ": could not read the allocation status: " + ec.message(), &target);
            if (auto ec = run_copy(d, plan, to_segments(here)))
                return abandon(copy_failure(plan, ec, src_path, dst_path, dst_path), &target);
            meter.update(100.0 * static_cast<double>(at + n) / static_cast<double>(size));
        }
    }
    if (auto ec = flush(d, target)) return abandon(describe(dst_path, ec), &target);
    if (auto ec = close_image(d, target)) return abandon(describe(dst_path, ec), nullptr);
    close_image(d, src.img);
    meter.finish();
    return 0;
}

}  // namespace qed::tools::img
