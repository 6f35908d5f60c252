// SPDX-License-Identifier: BSL-1.0
// Helpers shared by the libFuzzer harnesses: run operations to completion
// with hang detection, and report a broken invariant as a crash (abort), so
// libFuzzer saves the input.
#pragma once

#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "qed/image.hpp"

namespace qed::fuzz {

/// Print to stderr when QED_FUZZ_VERBOSE is set (for replaying one input).
inline bool verbose() {
    static const bool on = std::getenv("QED_FUZZ_VERBOSE") != nullptr;
    return on;
}

[[noreturn]] inline void fail(const char* file, int line, const char* cond, const std::string& msg) {
    std::fprintf(stderr, "\n==== QED FUZZ INVARIANT BROKEN at %s:%d\n  check: %s\n  %s\n", file, line, cond,
                 msg.c_str());
    std::fflush(stderr);
    std::abort();
}

/// `msg` is an expression building a std::string, evaluated only on failure.
#define QED_FUZZ_CHECK(cond, msg)                                         \
    do {                                                                  \
        if (!(cond)) ::qed::fuzz::fail(__FILE__, __LINE__, #cond, (msg)); \
    } while (0)

inline std::string ec_str(std::error_code ec) {
    return ec ? ec.category().name() + std::string(":") + std::to_string(ec.value()) + " (" + ec.message() + ")"
              : std::string("success");
}

/// Run `ioc` until `done()`; a hang (no work left, or past the deadline)
/// is a bug: abort with `what`.
template <class Pred>
void run_until(boost::asio::io_context& ioc, Pred done, const std::string& what,
               std::chrono::seconds limit = std::chrono::seconds(20)) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    ioc.restart();
    while (!done()) {
        if (ioc.run_one_for(std::chrono::milliseconds(50)) == 0) {
            if (done()) break;
            if (ioc.stopped())
                fail(__FILE__, __LINE__, "hang", what + ": never completed (the io_context ran out of work)");
            if (std::chrono::steady_clock::now() > deadline)
                fail(__FILE__, __LINE__, "hang", what + ": not completed after the deadline");
            ioc.restart();
        }
    }
}

/// Start an operation with a callback and run until it completes.
template <class... Args, class Start>
std::tuple<Args...> run_op(boost::asio::io_context& ioc, const std::string& what, Start start) {
    std::optional<std::tuple<Args...>> result;
    start([&result](Args... args) { result.emplace(std::move(args)...); });
    run_until(
        ioc, [&] { return result.has_value(); }, what);
    return std::move(*result);
}

/// Synchronous wrappers over an image (every call runs the io_context).
struct sync_ops {
    boost::asio::io_context& ioc;
    image img;

    std::error_code read(std::uint64_t off, void* p, std::size_t n) {
        return std::get<0>(run_op<std::error_code, std::size_t>(
            ioc, "read", [&](auto h) { img.async_read_at(off, boost::asio::buffer(p, n), std::move(h)); }));
    }
    std::error_code write(std::uint64_t off, const void* p, std::size_t n) {
        return std::get<0>(run_op<std::error_code, std::size_t>(
            ioc, "write", [&](auto h) { img.async_write_at(off, boost::asio::buffer(p, n), std::move(h)); }));
    }
    std::error_code write_zeroes(std::uint64_t off, std::uint64_t n, zero_options o = {}) {
        return std::get<0>(run_op<std::error_code>(ioc, "write_zeroes",
                                                   [&](auto h) { img.async_write_zeroes(off, n, o, std::move(h)); }));
    }
    std::error_code flush() {
        return std::get<0>(run_op<std::error_code>(ioc, "flush", [&](auto h) { img.async_flush(std::move(h)); }));
    }
    std::error_code close() {
        return std::get<0>(run_op<std::error_code>(ioc, "close", [&](auto h) { img.async_close(std::move(h)); }));
    }
    std::error_code grow(std::uint64_t n) {
        return std::get<0>(run_op<std::error_code>(ioc, "grow", [&](auto h) { img.async_grow(n, std::move(h)); }));
    }
    std::error_code change_backing_file(const std::string& name, std::optional<image_format> fmt) {
        return std::get<0>(run_op<std::error_code>(
            ioc, "change_backing_file", [&](auto h) { img.async_change_backing_file(name, fmt, std::move(h)); }));
    }
    std::pair<std::error_code, std::vector<extent>> block_status(std::uint64_t off, std::uint64_t n) {
        auto [ec, v] = run_op<std::error_code, std::vector<extent>>(
            ioc, "block_status", [&](auto h) { img.async_block_status(off, n, std::move(h)); });
        return {ec, std::move(v)};
    }
    std::pair<std::error_code, check_result> check(check_options::repair mode) {
        auto [ec, r] = run_op<std::error_code, check_result>(
            ioc, "check", [&](auto h) { img.async_check(check_options{mode}, std::move(h)); });
        return {ec, std::move(r)};
    }
};

/// Open on the io_context; returns the error and the image.
inline std::pair<std::error_code, image> open_image(boost::asio::io_context& ioc, const std::string& path,
                                                    open_options o) {
    auto [ec, img] = run_op<std::error_code, image>(
        ioc, "open " + path, [&](auto h) { image::async_open(ioc.get_executor(), path, std::move(o), std::move(h)); });
    return {ec, std::move(img)};
}

/// Run whatever is left (cancelled timers, posted completions) so nothing
/// outlives the input.
inline void drain(boost::asio::io_context& ioc) {
    ioc.restart();
    ioc.poll();
}

/// Every byte of a memory storage.
inline std::vector<std::uint8_t> contents(const memory_storage& s) {
    std::vector<std::uint8_t> out(static_cast<std::size_t>(s.size()));
    s.read(0, {reinterpret_cast<std::byte*>(out.data()), out.size()});
    return out;
}

/// The storage still holds `data` and, past it, only zeros (what the input
/// extended sparsely holds), given `pages_before`, its memory_used() when it
/// held just that. A page written past the input would raise memory_used();
/// the pages holding the input are compared byte by byte (plus 1 MiB past
/// it, more than any page), so a file of many GiB costs what it holds.
inline bool same_file(const memory_storage& s, std::uint64_t pages_before, const std::uint8_t* data, std::size_t size) {
    if (s.memory_used() != pages_before || s.size() < size) return false;
    std::vector<std::uint8_t> buf(static_cast<std::size_t>(std::min<std::uint64_t>(s.size(), size + (1u << 20))));
    s.read(0, {reinterpret_cast<std::byte*>(buf.data()), buf.size()});
    return std::equal(data, data + size, buf.begin()) && std::all_of(buf.begin() + static_cast<std::ptrdiff_t>(size),
                                                                     buf.end(), [](std::uint8_t b) { return b == 0; });
}

}  // namespace qed::fuzz
