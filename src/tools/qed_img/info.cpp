// SPDX-License-Identifier: BSL-1.0
// qed-img info: what an image is (format, sizes, backing file, dirty flag,
// QED header details), for one image or its whole backing chain.
#include <cinttypes>
#include <cstdio>

#include "common/driver.hpp"
#include "common/files.hpp"
#include "common/image_opts.hpp"
#include "common/json.hpp"
#include "common/sizes.hpp"
#include "qed_img/commands.hpp"
#include "qed_img/options.hpp"

namespace qed::tools::img {
namespace {

std::string hex(std::uint64_t v) {
    char buf[24];
    std::snprintf(buf, sizeof buf, "0x%" PRIx64, v);
    return buf;
}

json to_json(const image_info& i, const std::string& path) {
    json j = json::object();
    // Member order follows qemu-img's output.
    if (i.backing_format && !i.backing_file.empty())
        j.set("backing-filename-format", std::string(to_string(*i.backing_format)));
    j.set("virtual-size", i.virtual_size);
    j.set("filename", path);
    if (i.format == image_format::qed) j.set("cluster-size", std::uint64_t{i.cluster_size});
    j.set("format", std::string(to_string(i.format)));
    if (auto a = allocated_bytes(path)) j.set("actual-size", *a);
    if (i.format == image_format::qed) {
        json data = json::object();
        data.set("table-size", std::uint64_t{i.table_size});
        data.set("header-size", std::uint64_t{i.header_size});
        data.set("l1-table-offset", i.l1_table_offset);
        data.set("features", i.features);
        data.set("compat-features", i.compat_features);
        data.set("autoclear-features", i.autoclear_features);
        data.set("need-check", i.need_check);
        json specific = json::object();
        specific.set("type", "qed");
        specific.set("data", std::move(data));
        j.set("format-specific", std::move(specific));
    }
    if (!i.backing_file.empty()) {
        // None where the image's node has no directory (a quorum), as qemu-img.
        if (!i.backing_file_full.empty()) j.set("full-backing-filename", i.backing_file_full);
        j.set("backing-filename", i.backing_file);
    }
    // The real NEED_CHECK bit (qemu-img always says false for QED).
    j.set("dirty-flag", i.need_check);
    return j;
}

std::string to_human(const image_info& i, const std::string& path) {
    std::string s = "image: " + path + "\n";
    s += "file format: " + std::string(to_string(i.format)) + "\n";
    s += "virtual size: " + img_size_string(i.virtual_size) + " (" + std::to_string(i.virtual_size) + " bytes)\n";
    const auto a = allocated_bytes(path);
    s += "disk size: " + (a ? img_size_string(*a) : std::string("unavailable")) + "\n";
    if (i.format == image_format::qed) s += "cluster_size: " + std::to_string(i.cluster_size) + "\n";
    if (i.need_check) s += "cleanly shut down: no\n";
    if (!i.backing_file.empty()) {
        s += "backing file: " + i.backing_file;
        if (i.backing_file_full.empty())
            s += " (cannot determine actual path)";
        else if (i.backing_file_full != i.backing_file)
            s += " (actual path: " + i.backing_file_full + ")";
        s += "\n";
        if (i.backing_format) s += "backing file format: " + std::string(to_string(*i.backing_format)) + "\n";
    }
    if (i.format == image_format::qed) {
        s += "Format specific information:\n";
        s += "    table size: " + std::to_string(i.table_size) + "\n";
        s += "    header size: " + std::to_string(i.header_size) + "\n";
        s += "    l1 table offset: " + hex(i.l1_table_offset) + "\n";
        s += "    features: " + hex(i.features) + "\n";
        s += "    compat features: " + hex(i.compat_features) + "\n";
        s += "    autoclear features: " + hex(i.autoclear_features) + "\n";
        s += std::string("    need check: ") + (i.need_check ? "true" : "false") + "\n";
    }
    return s;
}

}  // namespace

int run_info(const words& words) {
    auto args = parse("info", words,
                      {{'f', "format", true},
                       {0, "output", true},
                       {0, "backing-chain", false},
                       {'U', "force-share", false},
                       {'q', "", false},
                       {0, "object", true},
                       {0, "image-opts", false}});
    if (!args) return 1;
    if (std::string why; !apply_image_options(*args, 1, "format", why)) return fail(why);
    bool as_json = false;
    std::optional<image_format> fmt;
    if (!output_value(*args, as_json) || !format_value(args->last("format"), fmt)) return 1;
    if (!positional_count("info", *args, 1, 1)) return 1;
    const bool chain = args->has("backing-chain");

    // Collect everything first: a broken chain prints nothing but the error.
    driver d;
    std::vector<std::pair<image_info, std::string>> found;
    std::vector<file_identity> seen;
    std::string path = args->positional[0];
    constexpr unsigned max_depth = 16;
    for (;;) {
        if (found.size() > max_depth)
            return fail(args->positional[0] + ": backing chain deeper than " + std::to_string(max_depth) + " levels");
        if (auto id = identity_of(path)) {
            for (const auto& s : seen)
                if (s == *id) return fail(path + ": backing chain loops back to this file");
            seen.push_back(*id);
        }
        open_options o;
        o.read_only = true;
        o.force_share = args->has("force-share");
        o.format = fmt;
        o.open_backing = false;
        auto r = open_image(d, path, o);
        if (r.ec) return fail(found.empty() ? r.error : "could not open backing file: " + r.error);
        image_info i = r.img.info();
        close_image(d, r.img);
        found.emplace_back(i, i.filename);  // as the library resolved it ("file:" taken off)
        if (!chain || i.backing_file.empty()) break;
        if (i.backing_file_full.empty())  // qemu-img's words
            return fail("Could not determine absolute backing filename, but backing filename '" + i.backing_file +
                        "' present");
        path = i.backing_file_full;
        fmt = i.backing_format;  // raw when the header says so, else probe
    }

    if (as_json) {
        if (chain) {
            json all = json::array();
            for (const auto& [i, p] : found) all.push(to_json(i, p));
            std::printf("%s\n", all.dump().c_str());
        } else {
            std::printf("%s\n", to_json(found[0].first, found[0].second).dump().c_str());
        }
    } else {
        for (std::size_t k = 0; k < found.size(); ++k)
            std::printf("%s%s", k ? "\n" : "", to_human(found[k].first, found[k].second).c_str());
    }
    return 0;
}

}  // namespace qed::tools::img
