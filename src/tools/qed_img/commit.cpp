// qed-img commit: copy what the image holds into its backing file, then
// leave the image empty so it reads everything from the backing file.
#include <cstdio>

#include "common/driver.hpp"
#include "common/files.hpp"
#include "qed_img/commands.hpp"
#include "qed_img/copy_engine.hpp"
#include "qed_img/options.hpp"

namespace qed::tools::img {

int run_commit(const words& words) {
    auto args = parse("commit", words,
                      {{'f', "format", true},
                       {'t', "cache", true},
                       {'b', "", true},
                       {'d', "", false},
                       {'p', "", false},
                       {'q', "quiet", false},
                       {'r', "", true},
                       {0, "object", true},
                       {0, "image-opts", false}});
    if (!args) return 1;
    if (args->has("object") || args->has("image-opts"))
        return fail("commit: --object and --image-opts are not supported");
    std::optional<image_format> fmt;
    bool direct = false;
    if (!format_value(args->last("format"), fmt) || !cache_value(args->last("cache"), direct)) return 1;
    if (!positional_count("commit", *args, 1, 1)) return 1;
    const std::string path = args->positional[0];
    const bool quiet = args->has("quiet");
    const bool keep = args->has("d");

    driver d;
    open_options o;
    o.format = fmt;
    o.direct = direct;
    o.open_backing = false;  // the backing file is opened read-write below
    auto top = open_image(d, path, o);
    if (top.ec) return fail(top.error);
    image img = top.img;
    const image_info info = img.info();
    auto give_up = [&](const std::string& line, image* base) {
        if (base) close_image(d, *base);
        close_image(d, img);
        return fail(line);
    };
    if (info.backing_file.empty()) return give_up(path + ": Image does not have a backing file", nullptr);
    const std::string base_path = info.backing_file_full;
    const auto top_id = identity_of(path);
    const auto base_id = identity_of(base_path);
    if (top_id && top_id == base_id) return give_up(path + ": the image is its own backing file", nullptr);
    if (auto b = args->last("b")) {
        const auto want = identity_of(*b);
        if (!want || want != base_id)
            return give_up(path + ": '" + *b +
                               "' is not the image's backing file (only the backing file itself can be "
                               "committed into)",
                           nullptr);
    }

    open_options bo;
    bo.format = info.backing_format;  // raw when the header says so, else probe
    bo.direct = direct;
    auto base = open_image(d, base_path, bo);
    if (base.ec) return give_up(path + ": could not open backing file: " + base.error, nullptr);
    image backing = base.img;
    if (backing.size() < img.size()) {
        if (auto ec = grow(d, backing, img.size()))
            return give_up(base_path + ": could not grow the backing file to the image's size: " + ec.message(),
                           &backing);
    }

    // Everything this image holds itself: data and zero clusters.
    std::vector<extent> extents;
    if (auto ec = block_status(d, img, 0, img.size(), extents))
        return give_up(path + ": could not read the allocation status: " + ec.message(), &backing);
    std::vector<segment> segments;
    for (const auto& e : extents) {
        if (e.depth != 0 || !e.present) continue;
        segments.push_back({e.offset, e.length, e.data ? segment::action::copy : segment::action::zero});
    }
    copy_plan plan;
    plan.source = img;
    plan.target = backing;
    plan.target_reads_zeros = false;  // zeros must hide what the backing file holds
    const image_info bi = backing.info();
    size_cells(plan, bi.format == image_format::qed ? bi.cluster_size : 0, 16);
    progress_meter meter(args->has("p") && !quiet);
    meter.update(0);
    plan.progress = [&meter](std::uint64_t done, std::uint64_t total) {
        meter.update(total ? 100.0 * static_cast<double>(done) / static_cast<double>(total) : 100.0);
    };
    if (auto ec = run_copy(d, plan, segments))
        return give_up("commit failed: " + copy_failure(plan, ec, path, base_path, base_path), &backing);
    // The backing file holds everything durably before the image lets go.
    if (auto ec = flush(d, backing)) return give_up(describe(base_path, ec), &backing);
    if (auto ec = close_image(d, backing)) return give_up(describe(base_path, ec), nullptr);
    if (!keep) {
        if (auto ec = make_empty(d, img))
            return give_up(path + ": committed, but the image could not be emptied: " + ec.message(), nullptr);
    }
    if (auto ec = close_image(d, img)) return fail(describe(path, ec));
    meter.finish();
    if (!quiet) std::printf("Image committed.\n");
    return 0;
}

}  // namespace qed::tools::img
