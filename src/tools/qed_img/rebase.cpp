// SPDX-License-Identifier: BSL-1.0
// qed-img rebase: point an image at a new backing file. With -u only the
// header changes; otherwise every cluster that would read differently
// through the new backing chain is first copied into the image.
#include <cstdio>

#include "common/driver.hpp"
#include "common/files.hpp"
#include "common/image_opts.hpp"
#include "qed_img/commands.hpp"
#include "qed_img/copy_engine.hpp"
#include "qed_img/options.hpp"

namespace qed::tools::img {

int run_rebase(const words& words) {
    auto args = parse("rebase", words,
                      {{'f', "format", true},
                       {'F', "", true},
                       {'b', "", true},
                       {'u', "", false},
                       {'p', "", false},
                       {'q', "quiet", false},
                       {'t', "cache", true},
                       {'T', "", true},
                       {'U', "force-share", false},
                       {0, "object", true},
                       {0, "image-opts", false}});
    if (!args) return 1;
    if (std::string why; !apply_image_options(*args, 1, "format", why)) return fail(why);
    std::optional<image_format> fmt, new_fmt;
    bool direct = false, src_direct = false;
    if (!format_value(args->last("format"), fmt) || !format_value(args->last("F"), new_fmt) ||
        !cache_value(args->last("cache"), direct) || !cache_value(args->last("T"), src_direct))
        return 1;
    if (!positional_count("rebase", *args, 1, 1)) return 1;
    const std::string path = args->positional[0];
    const auto name = args->last("b");
    if (!name) return fail(path + ": rebase needs the new backing file (-b NAME, or -b \"\" to remove it)");
    if (!name->empty() && !new_fmt)
        return fail(path + ": could not change the backing file to '" + *name +
                    "': backing format must be specified (-F qed or -F raw)");
    const bool unsafe = args->has("u");
    const bool quiet = args->has("quiet");

    driver d;
    open_options o;
    o.format = fmt;
    o.direct = direct;
    o.open_backing = !unsafe;  // -u: the old chain may be gone; only the header changes
    auto opened = open_image(d, path, o);
    if (opened.ec) return fail(opened.error);
    image img = opened.img;
    auto give_up = [&](const std::string& line, image* other) {
        if (other) close_image(d, *other);
        close_image(d, img);
        return fail(line);
    };
    if (img.info().format != image_format::qed)
        return give_up(path + ": only QED images have a backing file to change", nullptr);

    const std::string full = name->empty() ? std::string{} : resolve_backing(path, *name);
    if (!full.empty() && identity_of(full) && identity_of(full) == identity_of(path))
        return give_up(path + ": an image cannot be its own backing file", nullptr);

    if (!unsafe) {
        // The new chain, as the image will see it.
        image fresh;
        std::uint64_t fresh_size = 0;
        if (!full.empty()) {
            open_options bo;
            bo.read_only = true;
            bo.force_share = args->has("force-share");  // -U: the backing files, as in qemu-img
            bo.format = new_fmt;
            bo.direct = src_direct;
            auto b = open_image(d, full, bo);
            if (b.ec) return give_up(path + ": could not open new backing file: " + b.error, nullptr);
            fresh = b.img;
            fresh_size = fresh.size();
            // Nothing in the new chain may be this image (that would loop).
            const auto self = identity_of(path);
            for (image m = fresh; m; m = m.backing()) {
                if (self && identity_of(m.info().filename) == self)
                    return give_up(path + ": the new backing chain contains the image itself", &fresh);
            }
        }
        // Where the image reads through to its old chain, keep what it reads.
        std::vector<extent> extents;
        if (auto ec = block_status(d, img, 0, img.size(), extents))
            return give_up(path + ": could not read the allocation status: " + ec.message(), &fresh);
        std::vector<segment> segments;
        for (const auto& e : extents) {
            if (e.depth == 0 && e.present) continue;
            if (!segments.empty() && segments.back().offset + segments.back().length == e.offset)
                segments.back().length += e.length;
            else
                segments.push_back({e.offset, e.length, segment::action::update});
        }
        copy_plan plan;
        plan.source = img;
        plan.target = img;
        plan.reference = fresh;
        plan.reference_size = fresh_size;
        size_cells(plan, img.info().cluster_size, 16);
        progress_meter meter(args->has("p") && !quiet);
        meter.update(0);
        plan.progress = [&meter](std::uint64_t done, std::uint64_t total) {
            meter.update(total ? 100.0 * static_cast<double>(done) / static_cast<double>(total) : 100.0);
        };
        if (auto ec = run_copy(d, plan, segments))
            return give_up("could not copy data before rebasing: " + copy_failure(plan, ec, path, full, path), &fresh);
        if (auto ec = flush(d, img)) return give_up(describe(path, ec), &fresh);
        close_image(d, fresh);
        meter.finish();
    }

    if (auto ec = change_backing_file(d, img, *name, name->empty() ? std::nullopt : new_fmt))
        return give_up(path + ": could not change the backing file to '" + *name + "': " + ec.message(), nullptr);
    if (auto ec = close_image(d, img)) return fail(describe(path, ec));
    return 0;
}

}  // namespace qed::tools::img
