// SPDX-License-Identifier: BSL-1.0
// qed-img create: a new QED or raw image, optionally over a backing file.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "common/driver.hpp"
#include "common/files.hpp"
#include "common/image_opts.hpp"
#include "qed_img/commands.hpp"
#include "qed_img/options.hpp"

namespace qed::tools::img {
namespace {

void print_create_options(image_format fmt) {
    std::printf("Supported options:\n  size=<size>            Virtual disk size\n");
    if (fmt == image_format::qed) {
        std::printf(
            "  backing_file=<str>     File name of a base image\n"
            "  backing_fmt=<str>      Image format of the base image (qed or raw)\n"
            "  cluster_size=<size>    Cluster size (in bytes)\n"
            "  table_size=<num>       L1/L2 table size (in clusters)\n");
    }
}

struct create_request {
    std::string path;
    image_format format = image_format::raw;
    std::optional<std::uint64_t> size;
    std::string backing;
    std::optional<image_format> backing_format;
    std::optional<std::uint64_t> cluster_size;
    std::optional<std::uint64_t> table_size;
    bool unsafe = false;
    bool quiet = false;
};

// Apply "-o name=value" entries. Returns an exit status, or -1 to go on.
int apply_options(create_request& r, const std::vector<std::pair<std::string, std::string>>& list) {
    for (const auto& [name, value] : list) {
        if (name == "help") {
            print_create_options(r.format);
            return 0;
        }
        const std::string what = r.path + ": " + name;
        if (name == "size") {
            auto v = size_value(what, value);
            if (!v) return 1;
            r.size = *v;
        } else if (r.format == image_format::qed && name == "backing_file") {
            r.backing = value;
        } else if (r.format == image_format::qed && name == "backing_fmt") {
            r.backing_format = parse_format(value);
            if (!r.backing_format) return fail(r.path + ": unknown backing file format '" + value + "'");
        } else if (r.format == image_format::qed && name == "cluster_size") {
            auto v = size_value(what, value);
            if (!v) return 1;
            r.cluster_size = *v;
        } else if (r.format == image_format::qed && name == "table_size") {
            auto v = size_value(what, value);
            if (!v) return 1;
            r.table_size = *v;
        } else {
            return fail(r.path + ": Invalid parameter '" + name + "' for format '" + std::string(to_string(r.format)) +
                        "'");
        }
    }
    return -1;
}

}  // namespace

int run_create(const words& words) {
    auto args = parse("create", words,
                      {{'f', "", true},
                       {'b', "", true},
                       {'F', "", true},
                       {'o', "", true},
                       {'u', "", false},
                       {'q', "", false},
                       {0, "object", true}});
    if (!args) return 1;
    if (std::string why; !check_objects(*args, why)) return fail(why);

    create_request r;
    r.quiet = args->has("q");
    r.unsafe = args->has("u");
    std::optional<image_format> fmt;
    if (!format_value(args->last("f"), fmt)) return 1;
    r.format = fmt.value_or(image_format::raw);
    if (args->positional.empty()) {
        // "-o help" needs no file name.
        auto list = option_list(args->all("o"));
        if (list && !list->empty() && list->front().first == "help") {
            print_create_options(r.format);
            return 0;
        }
    }
    if (!positional_count("create", *args, 1, 2)) return 1;
    r.path = args->positional[0];

    auto list = option_list(args->all("o"));
    if (!list) return 1;
    if (const int status = apply_options(r, *list); status >= 0) return status;
    if (auto b = args->last("b")) r.backing = *b;
    if (auto bf = args->last("F")) {
        r.backing_format = parse_format(*bf);
        if (!r.backing_format) return fail(r.path + ": unknown backing file format '" + *bf + "'");
    }
    if (args->positional.size() == 2) {
        auto v = size_value(r.path, args->positional[1]);
        if (!v) return 1;
        r.size = *v;
    }

    // Everything is checked before the file is touched.
    if (r.format == image_format::raw && !r.backing.empty())
        return fail(r.path + ": Backing file not supported for file format 'raw'");
    if (!r.backing.empty() && !r.backing_format && !r.unsafe) {
        // qemu-img opens the backing file to guess its format first, so a
        // missing one is reported as such (scripts match these two lines).
        const std::string full = resolve_backing(r.path, r.backing);
        const int fd = ::open(full.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            const int err = errno;
            fail(r.path + ": Could not open '" + full + "': " + std::strerror(err));
            std::fprintf(stderr, "Could not open backing image.\n");
            return 1;
        }
        ::close(fd);
    }
    if (!r.backing.empty() && !r.backing_format)
        return fail(r.path + ": Backing file specified without backing format (use -F qed or -F raw)");
    const std::uint64_t cluster = r.cluster_size.value_or(default_cluster_size);
    const std::uint64_t table = r.table_size.value_or(default_table_size);
    if (r.format == image_format::qed) {
        if (!is_valid_cluster_size(cluster))
            return fail(r.path + ": QED cluster size must be within range [4096, 67108864] and power of 2");
        if (!is_valid_table_size(table))
            return fail(r.path + ": QED table size must be within range [1, 16] and power of 2");
    }
    if (!r.size && (r.backing.empty() || r.unsafe)) return fail(r.path + ": Image creation needs a size parameter");

    driver d;
    if (!r.backing.empty() && !r.unsafe) {
        // The backing file must open as the format given; it supplies the size.
        open_options o;
        o.read_only = true;
        o.format = r.backing_format;
        o.open_backing = false;
        const std::string full = resolve_backing(r.path, r.backing);
        auto b = open_image(d, full, o);
        if (b.ec) return fail(r.path + ": could not open backing file: " + b.error);
        if (!r.size) r.size = b.img.size();
        close_image(d, b.img);
    }
    if (r.format == image_format::qed &&
        *r.size > max_image_size(static_cast<std::uint32_t>(cluster), static_cast<std::uint32_t>(table)))
        return fail(
            r.path + ": image size " + std::to_string(*r.size) + " is too large for cluster_size " +
            std::to_string(cluster) + " and table_size " + std::to_string(table) + " (the maximum is " +
            std::to_string(max_image_size(static_cast<std::uint32_t>(cluster), static_cast<std::uint32_t>(table))) +
            ")");

    if (!r.quiet) {
        std::string line =
            "Formatting '" + r.path + "', fmt=" + std::string(to_string(r.format)) + " size=" + std::to_string(*r.size);
        if (r.format == image_format::qed) {
            if (!r.backing.empty()) {
                // qemu-img prints option values with their commas doubled, as
                // an option list takes them (json: names hold commas).
                std::string escaped;
                for (const char ch : r.backing) escaped += ch == ',' ? std::string(",,") : std::string(1, ch);
                line += " backing_file=" + escaped;
            }
            if (!r.backing.empty() && r.backing_format)
                line += " backing_fmt=" + std::string(to_string(*r.backing_format));
            line += " cluster_size=" + std::to_string(cluster);
            if (r.table_size) line += " table_size=" + std::to_string(table);
        }
        std::printf("%s\n", line.c_str());
        std::fflush(stdout);
    }

    create_options c;
    c.format = r.format;
    c.size = *r.size;
    c.cluster_size = static_cast<std::uint32_t>(cluster);
    c.table_size = static_cast<std::uint32_t>(table);
    c.backing_file = r.backing;
    c.backing_format = r.backing.empty() ? std::nullopt : r.backing_format;
    const bool existed = file_exists(r.path);
    std::string error;
    if (auto ec = create_image(d, r.path, c, error)) {
        // No half-made image left behind (a locked one was never touched).
        if (!existed) remove_file(r.path);
        return fail(error);
    }
    return 0;
}

}  // namespace qed::tools::img
