// SPDX-License-Identifier: BSL-1.0
// qed-img measure: how large a file a new image needs, for QED or raw
// output, given a size (--size) or an input image whose contents it would
// hold. qemu-img refuses to measure for QED; the figures here are what this
// project's create and convert produce:
//   - raw: the guest size, rounded up to 512, either way;
//   - QED, fully allocated: the header cluster(s), the L1 table, one L2
//     table per L1 entry the guest size reaches, and every data cluster;
//   - QED, required: the header and L1 table, and for an input image the
//     data clusters its data (not its holes or zero ranges) touches, with
//     the L2 tables they need. convert skips zero blocks inside data as well,
//     so its output can be smaller, never larger.
// Output in qemu-img measure's format, human or JSON.
#include <algorithm>
#include <cstdio>

#include "common/driver.hpp"
#include "common/image_opts.hpp"
#include "common/json.hpp"
#include "qed_img/commands.hpp"
#include "qed_img/options.hpp"

namespace qed::tools::img {
namespace {

struct target {
    image_format format = image_format::raw;
    std::uint32_t cluster_size = default_cluster_size;
    std::uint32_t table_size = default_table_size;
};

// -o for the image to measure. Returns an exit status, or -1 to go on.
int target_options(target& t, const std::vector<std::string>& values) {
    auto list = option_list(values);
    if (!list) return 1;
    for (const auto& [name, value] : *list) {
        if (name == "help") {
            std::printf("Supported options:\n");
            if (t.format == image_format::qed)
                std::printf(
                    "  cluster_size=<size>    Cluster size (in bytes)\n"
                    "  table_size=<num>       L1/L2 table size (in clusters)\n");
            else
                std::printf("  preallocation=<str>    Preallocation mode (allowed values: off)\n");
            return 0;
        }
        if (t.format == image_format::qed && (name == "cluster_size" || name == "table_size")) {
            auto v = size_value("measure: " + name, value);
            if (!v) return 1;
            const bool ok = name == "cluster_size" ? is_valid_cluster_size(*v) : is_valid_table_size(*v);
            if (!ok)
                return fail(name == "cluster_size"
                                ? "measure: QED cluster size must be within range [4096, 67108864] and power of 2"
                                : "measure: QED table size must be within range [1, 16] and power of 2");
            (name == "cluster_size" ? t.cluster_size : t.table_size) = static_cast<std::uint32_t>(*v);
        } else if (t.format == image_format::raw && name == "preallocation") {
            // The size of a raw file does not depend on its preallocation;
            // create supports none, so accept only what it would do.
            if (value != "off")
                return fail("measure: preallocation mode '" + value + "' is not supported (only 'off')");
        } else {
            return fail("measure: Invalid parameter '" + name + "' for format '" + std::string(to_string(t.format)) +
                        "'");
        }
    }
    return -1;
}

// The layout create gives a new QED image of `size` bytes without a backing file.
struct qed_layout {
    geometry g;
    std::uint64_t size = 0;

    qed_layout(const target& t, std::uint64_t guest_size) : size(guest_size) {
        header h;
        h.cluster_size = t.cluster_size;
        h.table_size = t.table_size;
        h.header_size = 1;  // create's single header cluster (no backing name)
        g = geometry(h);
    }
    std::uint64_t empty() const { return g.header_bytes + g.table_bytes; }
    std::uint64_t full() const {
        const std::uint64_t clusters = g.clusters_for(size);
        const std::uint64_t tables = size ? g.l1_index(size - 1) + 1 : 0;
        return empty() + tables * g.table_bytes + clusters * g.cluster_size;
    }
};

void print(bool as_json, std::uint64_t required, std::uint64_t fully_allocated) {
    if (as_json) {
        json j = json::object();
        j.set("required", required);
        j.set("fully-allocated", fully_allocated);
        std::printf("%s\n", j.dump().c_str());
    } else {
        std::printf("required size: %llu\nfully allocated size: %llu\n", static_cast<unsigned long long>(required),
                    static_cast<unsigned long long>(fully_allocated));
    }
}

}  // namespace

int run_measure(const words& words) {
    auto args = parse("measure", words,
                      {{'f', "format", true},
                       {'O', "", true},
                       {'o', "", true},
                       {0, "size", true},
                       {0, "output", true},
                       {'U', "force-share", false},
                       {'l', "", true},
                       {0, "object", true},
                       {0, "image-opts", false}});
    if (!args) return 1;
    if (std::string why; !apply_image_options(*args, 1, "format", why)) return fail(why);
    if (args->has("l")) return fail("measure: snapshots (-l) are not supported by QED or raw images");
    bool as_json = false;
    std::optional<image_format> src_fmt, dst_fmt;
    if (!output_value(*args, as_json) || !format_value(args->last("format"), src_fmt) ||
        !format_value(args->last("O"), dst_fmt))
        return 1;
    target t;
    t.format = dst_fmt.value_or(image_format::raw);  // qemu-img's default output format
    if (const int status = target_options(t, args->all("o")); status >= 0) return status;

    const auto size_arg = args->last("size");
    if (size_arg && !args->positional.empty()) return fail("--size N cannot be used together with a filename.");
    if (!size_arg && args->positional.size() != 1) {
        if (args->positional.size() > 1) return fail("measure: only one filename may be given");
        return fail("Either --size N or one filename must be specified.");
    }

    std::uint64_t size = 0;
    std::vector<extent> extents;  // the input's allocation, when there is one
    if (size_arg) {
        auto v = size_value("--size", *size_arg);
        if (!v) return 1;
        if (*v > max_addressable_size) return fail("measure: --size " + *size_arg + " is too large");
        size = (*v + sector_size - 1) / sector_size * sector_size;
    } else {
        const std::string path = args->positional[0];
        driver d;
        open_options o;
        o.read_only = true;
        o.format = src_fmt;
        auto src = open_image(d, path, o);
        if (src.ec) return fail(src.error);
        size = src.img.size();
        const auto ec = block_status(d, src.img, 0, size, extents);
        close_image(d, src.img);
        if (ec) return fail(path + ": could not read the allocation status: " + ec.message());
    }

    if (t.format == image_format::raw) {
        print(as_json, size, size);
        return 0;
    }
    if (size > max_image_size(t.cluster_size, t.table_size))
        return fail("measure: image size " + std::to_string(size) +
                    " is too large for the cluster_size and table_size given");
    const qed_layout layout(t, size);
    const geometry& g = layout.g;
    // Count each data cluster and each L2 table once: the extents are in
    // order, so a cluster or table is new when it is past the last counted.
    std::uint64_t clusters = 0, tables = 0;
    std::optional<std::uint64_t> last_cluster, last_table;
    for (const auto& e : extents) {
        if (!e.data || e.length == 0) continue;
        const std::uint64_t first = e.offset >> g.cluster_bits;
        const std::uint64_t last = (e.offset + e.length - 1) >> g.cluster_bits;
        const std::uint64_t from = last_cluster && *last_cluster >= first ? *last_cluster + 1 : first;
        if (from <= last) clusters += last - from + 1;
        const std::uint64_t t_first = g.l1_index(e.offset), t_last = g.l1_index(e.offset + e.length - 1);
        const std::uint64_t t_from = last_table && *last_table >= t_first ? *last_table + 1 : t_first;
        if (t_from <= t_last) tables += t_last - t_from + 1;
        last_cluster = last_cluster ? std::max(*last_cluster, last) : last;
        last_table = last_table ? std::max(*last_table, t_last) : t_last;
    }
    print(as_json, layout.empty() + tables * g.table_bytes + clusters * g.cluster_size, layout.full());
    return 0;
}

}  // namespace qed::tools::img
