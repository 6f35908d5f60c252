// SPDX-License-Identifier: BSL-1.0
// qed-img dd: copy an image's bytes into a new image, dd(1)-style operands
// as qemu-img takes them: if=, of=, bs= (default 512), count=, skip=.
#include <cinttypes>
#include <cstdio>

#include "common/driver.hpp"
#include "common/jobs.hpp"
#include "common/sizes.hpp"
#include "qed_img/commands.hpp"
#include "qed_img/options.hpp"

namespace qed::tools::img {

namespace {

struct dd_operands {
    std::string in, out;
    std::uint64_t bs = 512;
    std::optional<std::uint64_t> count, skip;
};

/// One "name=value" operand. False after printing qemu-img's complaint.
bool operand(const std::string& word, dd_operands& d) {
    const auto eq = word.find('=');
    if (eq == std::string::npos) return fail("unrecognized operand " + word) == 0;
    const std::string key = word.substr(0, eq), value = word.substr(eq + 1);
    if (key == "if") {
        d.in = value;
        return true;
    }
    if (key == "of") {
        d.out = value;
        return true;
    }
    if (key != "bs" && key != "count" && key != "skip") return fail("unrecognized operand " + word) == 0;
    std::string why;
    auto v = parse_size(value, why);
    if (!v || (key == "bs" && *v == 0)) return fail("invalid number: '" + value + "'") == 0;
    if (key == "bs")
        d.bs = *v;
    else if (key == "count")
        d.count = *v;
    else
        d.skip = *v;
    return true;
}

}  // namespace

int run_dd(const words& all) {
    // Options first (-f, -O), then operands; both may be mixed as in qemu-img.
    words opts;
    dd_operands dd;
    for (const auto& w : all) {
        if (!w.empty() && w[0] != '-' && w.find('=') != std::string::npos) {
            if (!operand(w, dd)) return 1;
        } else {
            opts.push_back(w);
        }
    }
    auto args = parse("dd", opts, {{'f', "format", true}, {'O', "", true}, {'U', "force-share", false}});
    if (!args) return 1;
    if (!args->positional.empty()) return fail("unrecognized operand " + args->positional[0]);
    if (dd.in.empty() || dd.out.empty()) return fail("Must specify both input and output files");
    std::optional<image_format> in_fmt, out_fmt;
    if (!format_value(args->last("format"), in_fmt) || !format_value(args->last("O"), out_fmt)) return 1;

    driver d;
    open_options o;
    o.read_only = true;
    o.format = in_fmt;
    auto src = open_image(d, dd.in, o);
    if (src.ec) return fail(src.error);
    image in = src.img;
    std::uint64_t size = in.size();
    if (dd.count && *dd.count <= size / dd.bs) size = *dd.count * dd.bs;
    std::uint64_t in_pos = 0;
    if (dd.skip) {
        if (*dd.skip > size / dd.bs) {
            // Like dd(1): an empty output, after saying so.
            report(dd.in + ": cannot skip to specified offset");
            in_pos = size;
        } else {
            in_pos = *dd.skip * dd.bs;
        }
    }
    const std::uint64_t out_size = size - in_pos;
    auto finish = [&](int status) {
        close_image(d, in);
        return status;
    };
    // The library reads and writes whole sectors.
    if (in_pos % sector_size || out_size % sector_size)
        return finish(fail(dd.in + ": skip=" + std::to_string(in_pos) + " bytes and a length of " +
                           std::to_string(out_size) +
                           " bytes: dd copies whole 512-byte sectors; choose bs, skip "
                           "and count so that both are multiples of 512"));

    create_options co;
    co.format = out_fmt.value_or(image_format::raw);
    co.size = out_size;
    std::string create_error;
    if (create_image(d, dd.out, co, create_error)) return finish(fail(create_error));
    open_options wo;
    wo.format = co.format;
    auto dst = open_image(d, dd.out, wo);
    if (dst.ec) return finish(fail(dst.error));
    image out = dst.img;
    auto give_up = [&](const std::string& line) {
        close_image(d, out);
        return finish(fail(line));
    };

    // Sequential copy in pieces of whole blocks of about 1 MiB. The new
    // image reads zeros, so zero pieces are not written (it stays sparse).
    const std::uint64_t piece = std::max<std::uint64_t>(1, (std::uint64_t{1} << 20) / dd.bs) * dd.bs;
    const std::uint64_t buf_len = std::min<std::uint64_t>(std::max<std::uint64_t>(piece, sector_size), 64u << 20);
    aligned_buffer buf(static_cast<std::size_t>((buf_len + sector_size - 1) / sector_size * sector_size));
    for (std::uint64_t done = 0; done < out_size;) {
        const std::uint64_t n = std::min<std::uint64_t>(buf.size() / sector_size * sector_size, out_size - done);
        if (auto ec = read(d, in, in_pos + done, buf.data(), static_cast<std::size_t>(n)))
            return give_up(describe(dd.in, ec));
        bool zero = true;
        for (std::uint64_t i = 0; i < n && zero; ++i) zero = buf.data()[i] == std::byte{0};
        if (!zero) {
            if (auto ec = write(d, out, done, buf.data(), static_cast<std::size_t>(n)))
                return give_up(describe(dd.out, ec));
        }
        done += n;
    }
    if (auto ec = flush(d, out)) return give_up(describe(dd.out, ec));
    if (auto ec = close_image(d, out)) return finish(fail(describe(dd.out, ec)));
    return finish(0);
}

}  // namespace qed::tools::img
