// SPDX-License-Identifier: BSL-1.0
// qed-img check: consistency check with optional repair. Exit status as
// qemu-img: 0 clean, 1 check could not complete, 2 corruptions, 3 leaks
// only, 63 format without checks.
#include <cinttypes>
#include <cstdio>

#include "common/driver.hpp"
#include "common/image_opts.hpp"
#include "common/json.hpp"
#include "qed_img/commands.hpp"
#include "qed_img/options.hpp"

namespace qed::tools::img {
namespace {

constexpr int exit_not_supported = 63;

json to_json(const check_result& r, const std::string& path, image_format fmt) {
    // Counts that are zero are left out, as qemu-img does.
    json j = json::object();
    if (r.image_end_offset) j.set("image-end-offset", r.image_end_offset);
    if (r.total_clusters) j.set("total-clusters", r.total_clusters);
    if (r.corruptions) j.set("corruptions", r.corruptions);
    if (r.corruptions_fixed) j.set("corruptions-fixed", r.corruptions_fixed);
    j.set("check-errors", r.check_errors);
    if (r.leaks) j.set("leaks", r.leaks);
    if (r.leaks_fixed) j.set("leaks-fixed", r.leaks_fixed);
    if (r.allocated_clusters) j.set("allocated-clusters", r.allocated_clusters);
    j.set("filename", path);
    j.set("format", std::string(to_string(fmt)));
    if (r.fragmented_clusters) j.set("fragmented-clusters", r.fragmented_clusters);
    return j;
}

void print_human(const check_result& r, bool repaired_something) {
    if (repaired_something) {
        std::printf(
            "The following inconsistencies were found and repaired:\n\n"
            "    %" PRIu64 " leaked clusters\n    %" PRIu64
            " corruptions\n\n"
            "Double checking the fixed image now...\n",
            r.leaks_fixed, r.corruptions_fixed);
    }
    if (r.corruptions == 0 && r.leaks == 0 && r.check_errors == 0) {
        std::printf("No errors were found on the image.\n");
    } else {
        if (r.corruptions)
            std::printf("\n%" PRIu64
                        " errors were found on the image.\n"
                        "Data may be corrupted, or further writes to the image may corrupt it.\n",
                        r.corruptions);
        if (r.leaks)
            std::printf("\n%" PRIu64
                        " leaked clusters were found on the image.\n"
                        "This means waste of disk space, but no harm to data.\n",
                        r.leaks);
        if (r.check_errors)
            std::printf("\n%" PRIu64 " internal errors have occurred during the check.\n", r.check_errors);
    }
    if (r.total_clusters && r.allocated_clusters) {
        const double total = static_cast<double>(r.total_clusters);
        const double alloc = static_cast<double>(r.allocated_clusters);
        std::printf("%" PRIu64 "/%" PRIu64 " = %0.2f%% allocated, %0.2f%% fragmented, %0.2f%% compressed clusters\n",
                    r.allocated_clusters, r.total_clusters, alloc * 100.0 / total,
                    static_cast<double>(r.fragmented_clusters) * 100.0 / alloc, 0.0);
    }
    if (r.image_end_offset) std::printf("Image end offset: %" PRIu64 "\n", r.image_end_offset);
}

}  // namespace

int run_check(const words& words) {
    auto args = parse("check", words,
                      {{'f', "format", true},
                       {0, "output", true},
                       {'r', "repair", true},
                       {'q', "quiet", false},
                       {'T', "cache", true},
                       {'U', "force-share", false},
                       {0, "object", true},
                       {0, "image-opts", false}});
    if (!args) return 1;
    if (std::string why; !apply_image_options(*args, 1, "format", why)) return fail(why);
    bool as_json = false;
    bool direct = false;
    std::optional<image_format> fmt;
    if (!output_value(*args, as_json) || !format_value(args->last("format"), fmt) ||
        !cache_value(args->last("cache"), direct))
        return 1;
    check_options::repair mode = check_options::repair::none;
    if (auto r = args->last("repair")) {
        if (*r == "leaks")
            mode = check_options::repair::leaks;
        else if (*r == "all")
            mode = check_options::repair::all;
        else
            return fail("Unknown option value for -r (expecting 'leaks' or 'all'): " + *r);
    }
    if (!positional_count("check", *args, 1, 1)) return 1;
    const std::string path = args->positional[0];
    const bool quiet = args->has("quiet");

    driver d;
    open_options o;
    o.read_only = mode == check_options::repair::none;
    o.force_share = args->has("force-share");  // with -r refused, as qemu-img does
    o.format = fmt;
    o.direct = direct;
    o.open_backing = false;    // the check reads this file's tables only
    o.repair_on_open = false;  // the check below is the repair
    auto opened = open_image(d, path, o);
    if (opened.ec) return fail(opened.error);
    image img = opened.img;
    const image_format actual = img.info().format;

    check_result r;
    std::error_code ec = check(d, img, check_options{mode}, r);
    bool repaired = false;
    if (!ec && (r.corruptions_fixed || r.leaks_fixed)) {
        // Report what a fresh look at the repaired image finds, keeping the
        // counts of what was fixed.
        repaired = true;
        check_result again;
        ec = check(d, img, check_options{check_options::repair::none}, again);
        again.corruptions_fixed = r.corruptions_fixed;
        again.leaks_fixed = r.leaks_fixed;
        r = std::move(again);
    }
    const std::error_code close_ec = close_image(d, img);
    if (ec == make_error_code(errc::not_supported)) {
        report("This image format does not support checks (" + path + " is " + std::string(to_string(actual)) + ")");
        return exit_not_supported;
    }
    if (ec) return fail(path + ": check failed: " + ec.message());

    if (!quiet) {
        if (as_json) {
            std::printf("%s\n", to_json(r, path, actual).dump().c_str());
        } else {
            for (const auto& m : r.messages) std::fprintf(stderr, "%s: %s\n", path.c_str(), m.c_str());
            print_human(r, repaired);
        }
    }
    std::fflush(stdout);
    if (r.check_errors)
        return fail(path + ": check failed: " + std::to_string(r.check_errors) + " errors while checking");
    if (close_ec) return fail(describe(path, close_ec));
    if (r.corruptions) return 2;
    if (r.leaks) return 3;
    return 0;
}

}  // namespace qed::tools::img
