// SPDX-License-Identifier: BSL-1.0
// The tools' event loop: one io_context run from the main thread. Library
// operations are started with a callback, then the loop runs until that
// callback has been called, so a command reads top to bottom.
#pragma once

#include <boost/asio/io_context.hpp>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "qed/image.hpp"

namespace qed::tools {

/// The name messages start with ("qed-img", "qed-io").
extern std::string program_name;

/// Print "<program>: <line>" on standard error.
void report(std::string_view line);

class driver {
public:
    boost::asio::io_context& context() noexcept { return ioc_; }
    boost::asio::any_io_executor executor() { return ioc_.get_executor(); }

    /// Run handlers until `done()` holds. Returns false when nothing is left
    /// that could make it hold (an operation that would never complete).
    bool run_until(const std::function<bool()>& done);

private:
    boost::asio::io_context ioc_;
};

/// The error reported when the loop runs dry before an operation completes.
std::error_code never_completed();

/// Start an operation with a callback taking Args and wait for it.
/// nullopt: the loop ran dry first.
template <class... Args, class Start>
std::optional<std::tuple<Args...>> await(driver& d, Start start) {
    auto result = std::make_shared<std::optional<std::tuple<Args...>>>();
    start([result](Args... args) { result->emplace(std::move(args)...); });
    if (!d.run_until([&result] { return result->has_value(); })) return std::nullopt;
    return std::move(*result);
}

/// Collects the library's one-line diagnostics: kept while an image opens
/// (the last one explains a failure), printed on standard error afterwards.
class log_collector {
public:
    log_sink sink();
    /// Stop collecting: lines from now on go straight to standard error.
    void pass_through();
    std::vector<std::string> lines() const;

private:
    struct state {
        bool pass_through = false;
        std::vector<std::string> lines;
    };
    std::shared_ptr<state> state_ = std::make_shared<state>();
};

struct open_result {
    std::error_code ec;
    image img;
    std::string error;  ///< on failure: one line naming the file and the problem
    /// On failure to open a name made of block-node options (json:,
    /// --image-opts) or an ssh:// name: the problem alone, without the name,
    /// and `error` is qemu-img's "Could not open 'NAME': PROBLEM" (NAME as
    /// the user gave it). Empty otherwise.
    std::string reason;
};

/// Open an image. On failure `error` holds the most telling diagnostic.
open_result open_image(driver& d, const std::string& path, open_options options);

/// qemu's wording for a QED header it refuses to open (nullptr: not one).
const char* qemu_header_refusal(std::error_code ec);

/// The one-line description of an error about `path` ("path: problem").
std::string describe(const std::string& path, std::error_code ec);

// ---- synchronous forms of the image operations ---------------------------

/// Create an image. On failure `error` holds one line naming the file and the problem.
std::error_code create_image(driver& d, const std::string& path, create_options options, std::string& error);
std::error_code close_image(driver& d, image& img);
std::error_code read(driver& d, image& img, std::uint64_t offset, void* data, std::size_t length);
std::error_code write(driver& d, image& img, std::uint64_t offset, const void* data, std::size_t length);
std::error_code write_zeroes(driver& d, image& img, std::uint64_t offset, std::uint64_t length,
                             zero_options options = {});
std::error_code flush(driver& d, image& img);
std::error_code grow(driver& d, image& img, std::uint64_t new_size);
std::error_code change_backing_file(driver& d, image& img, const std::string& name, std::optional<image_format> format);
std::error_code make_empty(driver& d, image& img);
std::error_code check(driver& d, image& img, check_options options, check_result& out);

/// Allocation status of [offset, offset + length), asked for in pieces of
/// at most 8 GiB and merged into maximal extents.
std::error_code block_status(driver& d, image& img, std::uint64_t offset, std::uint64_t length,
                             std::vector<extent>& out);

/// The image at `depth` in the chain below `top` (0 = top itself).
image chain_member(const image& top, unsigned depth);

}  // namespace qed::tools
