// SPDX-License-Identifier: BSL-1.0
// qed-img resize: grow an image. QED images never shrink; asking for a
// smaller size is refused before anything is written. Raw files shrink with
// --shrink.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>

#include "common/driver.hpp"
#include "common/image_opts.hpp"
#include "common/sizes.hpp"
#include "qed_img/commands.hpp"
#include "qed_img/options.hpp"

namespace qed::tools::img {

int run_resize(const words& all_words) {
    // The size goes last and may start with '-' or '+': take it before the
    // options are parsed, as qemu-img does, so "-1G" is not an option.
    if (all_words.empty()) return fail("resize: not enough arguments (see 'qed-img --help')");
    std::string size_text = all_words.back();
    words rest(all_words.begin(), all_words.end() - 1);
    auto args = parse("resize", rest,
                      {{'f', "format", true},
                       {'q', "quiet", false},
                       {0, "shrink", false},
                       {0, "preallocation", true},
                       {'U', "force-share", false},
                       {0, "object", true},
                       {0, "image-opts", false}});
    if (!args) return 1;
    if (std::string why; !apply_image_options(*args, 1, "format", why)) return fail(why);
    std::optional<image_format> fmt;
    if (!format_value(args->last("format"), fmt)) return 1;
    if (!positional_count("resize", *args, 1, 1)) return 1;
    const std::string path = args->positional[0];
    if (auto p = args->last("preallocation"); p && *p != "off")
        return fail(path + ": preallocation mode '" + *p + "' is not supported (only 'off')");

    enum class relative { none, grow, shrink } rel = relative::none;
    if (!size_text.empty() && (size_text[0] == '+' || size_text[0] == '-')) {
        rel = size_text[0] == '+' ? relative::grow : relative::shrink;
        size_text.erase(0, 1);
    }
    auto amount = size_value(path, size_text);
    if (!amount) return 1;

    driver d;
    open_options o;
    o.format = fmt;
    o.open_backing = false;  // the header is all that changes
    auto opened = open_image(d, path, o);
    if (opened.ec) return fail(opened.error);
    image img = opened.img;
    const std::uint64_t current = img.size();

    auto refuse = [&](const std::string& line) {
        close_image(d, img);
        return fail(line);
    };
    std::uint64_t target = *amount;
    if (rel == relative::grow) {
        if (*amount > max_size_argument - current) return refuse(path + ": the new size is too large");
        target = current + *amount;
    } else if (rel == relative::shrink) {
        target = *amount > current ? 0 : current - *amount;
    }
    if (target < current && img.info().format == image_format::raw) {
        // A raw file has nothing but the guest's bytes: shrinking cuts the
        // file, as qemu-img does, but only when asked for with --shrink.
        if (!args->has("shrink")) {
            report(
                "warning: Shrinking an image will delete all data beyond the shrunken image's end. Before "
                "performing such an operation, make sure there is no important data there.");
            return refuse("Use the --shrink option to perform a shrink operation.");
        }
        if (target % sector_size)
            return refuse(path + ": invalid image size " + std::to_string(target) + ": it must be a multiple of 512");
        const std::string file = img.info().filename;
        if (auto ec = close_image(d, img)) return fail(describe(path, ec));
        // One ftruncate: after a crash the file has either size, and the
        // bytes below the new size are untouched either way.
        const int fd = ::open(file.c_str(), O_WRONLY | O_CLOEXEC);
        const bool ok = fd >= 0 && ::ftruncate(fd, static_cast<off_t>(target)) == 0 && ::fsync(fd) == 0;
        const int err = errno;
        if (fd >= 0) ::close(fd);
        if (!ok) return fail(describe(path, std::error_code(err, std::system_category())));
        if (!args->has("quiet")) std::printf("Image resized.\n");
        return 0;
    }
    if (target < current)
        return refuse(path + ": shrinking is not supported (the image is " + std::to_string(current) + " bytes, " +
                      std::to_string(target) + " were asked for); QED images can only grow");
    if (target % sector_size)
        return refuse(path + ": invalid image size " + std::to_string(target) + ": it must be a multiple of 512");
    if (auto ec = grow(d, img, target)) return refuse(describe(path, ec));
    if (auto ec = close_image(d, img)) return fail(describe(path, ec));
    if (!args->has("quiet")) std::printf("Image resized.\n");
    return 0;
}

}  // namespace qed::tools::img
