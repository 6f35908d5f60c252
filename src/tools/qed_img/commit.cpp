// SPDX-License-Identifier: BSL-1.0
// qed-img commit: copy what the image holds into its backing file, then
// leave the image empty so it reads everything from the backing file.
#include <cstdio>

#include "common/driver.hpp"
#include "common/files.hpp"
#include "common/image_opts.hpp"
#include "qed_img/commands.hpp"
#include "qed_img/copy_engine.hpp"
#include "qed_img/options.hpp"

namespace qed::tools::img {

namespace {

/// The depth (1 = the immediate backing file) of the chain member `name`
/// designates, as qemu-img's commit -b finds it: a relative name matches
/// the name stored in an image's header, or else the file it gives when
/// resolved against that image's directory; an absolute one matches by file.
std::optional<unsigned> find_in_chain(const image& top, const std::string& name) {
    if (name.empty()) return std::nullopt;
    unsigned depth = 1;
    for (image img = top; img && img.backing(); img = img.backing(), ++depth) {
        const image_info i = img.info();
        if (name.front() != '/' && name == i.backing_file) return depth;
        const auto want = identity_of(name.front() == '/' ? name : resolve_backing(i.filename, name));
        if (want && want == identity_of(i.backing_file_full)) return depth;
    }
    return std::nullopt;
}

/// Commit into a base below the immediate backing file: everything the
/// images above the base supply is copied into it, read through the chain.
/// The base's file is opened once, read-write, and handed to the chain as
/// well (the chain never reads the ranges that are written).
int commit_deep(driver& d, const std::string& path, std::optional<image_format> fmt, bool direct,
                const std::string& base_path, std::optional<image_format> base_format, unsigned base_depth, bool quiet,
                bool progress) {
    file_options fo;
    fo.read_only = false;
    fo.direct = direct;
    std::error_code ec;
    auto base_file = open_file(d.executor(), base_path, fo, ec);
    if (!base_file) return fail(path + ": could not open backing file: " + describe(base_path, ec));
    const file_identity base_id = base_file->identity();
    open_options bo;
    bo.format = base_format;
    bo.direct = direct;
    bo.open_backing = false;  // nothing below the base is read
    log_collector logs;
    bo.log = logs.sink();
    auto br = await<std::error_code, image>(
        d, [&](auto h) { image::async_open(base_file, base_path, std::move(bo), std::move(h)); });
    if (!br || std::get<0>(*br)) {
        const auto lines = logs.lines();
        return fail(path + ": could not open backing file: " +
                    (lines.empty() ? describe(base_path, br ? std::get<0>(*br) : never_completed()) : lines.back()));
    }
    logs.pass_through();
    image backing = std::get<1>(*br);

    open_options o;
    o.format = fmt;
    o.read_only = true;  // -b keeps the top image as it is
    o.direct = direct;
    auto ex = d.executor();
    o.opener = [ex, base_file, base_id](const std::string& p, const file_options& f,
                                        std::error_code& e) -> std::shared_ptr<block_file> {
        if (identity_of(p) == base_id) {
            e.clear();
            return base_file;
        }
        return open_file(ex, p, f, e);
    };
    auto top = open_image(d, path, o);
    if (top.ec) {
        close_image(d, backing);
        return fail(top.error);
    }
    image img = top.img;
    auto give_up = [&](const std::string& line) {
        close_image(d, img);
        close_image(d, backing);
        return fail(line);
    };
    if (backing.size() < img.size()) {
        if (auto gec = grow(d, backing, img.size()))
            return give_up(base_path + ": could not grow the backing file to the image's size: " + gec.message());
    }
    std::vector<extent> extents;
    if (auto bec = block_status(d, img, 0, img.size(), extents))
        return give_up(path + ": could not read the allocation status: " + bec.message());
    std::vector<segment> segments;
    for (const auto& e : extents) {
        if (e.depth >= base_depth || !e.present) continue;
        segments.push_back({e.offset, e.length, e.data ? segment::action::copy : segment::action::zero});
    }
    copy_plan plan;
    plan.source = img;
    plan.target = backing;
    plan.target_reads_zeros = false;  // zeros must hide what the base holds
    const image_info bi = backing.info();
    size_cells(plan, bi.format == image_format::qed ? bi.cluster_size : 0, 16);
    progress_meter meter(progress && !quiet);
    meter.update(0);
    plan.progress = [&meter](std::uint64_t done, std::uint64_t total) {
        meter.update(total ? 100.0 * static_cast<double>(done) / static_cast<double>(total) : 100.0);
    };
    // qemu-img's line, which iotest 020 matches word for word.
    if (auto cec = run_copy(d, plan, segments)) return give_up("Block job failed: " + cec.message());
    if (auto fec = flush(d, backing)) return give_up(describe(base_path, fec));
    close_image(d, img);
    if (auto cec = close_image(d, backing)) return fail(describe(base_path, cec));
    meter.finish();
    if (!quiet) std::printf("Image committed.\n");
    return 0;
}

}  // namespace

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
    if (std::string why; !apply_image_options(*args, 1, "format", why)) return fail(why);
    std::optional<image_format> fmt;
    bool direct = false;
    if (!format_value(args->last("format"), fmt) || !cache_value(args->last("cache"), direct)) return 1;
    if (!positional_count("commit", *args, 1, 1)) return 1;
    const std::string path = args->positional[0];
    const bool quiet = args->has("quiet");
    bool keep = args->has("d");

    driver d;
    // -b names the image to commit into, found in the backing chain as
    // qemu-img finds it; it implies -d (the top image stays valid).
    unsigned depth = 1;
    if (auto b = args->last("b")) {
        open_options co;
        co.format = fmt;
        co.read_only = true;
        auto chain = open_image(d, path, co);
        if (chain.ec) return fail(chain.error);
        const bool none = chain.img.info().backing_file.empty();
        const auto found = none ? std::nullopt : find_in_chain(chain.img, *b);
        std::string base_path;
        std::optional<image_format> base_format;
        if (found) {
            base_path = chain_member(chain.img, *found - 1).info().backing_file_full;
            base_format = chain_member(chain.img, *found).info().format;
            depth = *found;
        }
        close_image(d, chain.img);
        if (none) return fail(path + ": Image does not have a backing file");
        if (!found) return fail("Did not find '" + *b + "' in the backing chain of '" + path + "'");
        keep = true;
        if (depth > 1) return commit_deep(d, path, fmt, direct, base_path, base_format, depth, quiet, args->has("p"));
    }

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
        return give_up("Block job failed: " + ec.message(), &backing);  // qemu-img's line (iotest 020)
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
