// SPDX-License-Identifier: BSL-1.0
// Run the library's asynchronous operations to completion in tests.
#pragma once

#include <boost/asio/io_context.hpp>
#include <optional>
#include <stdexcept>
#include <tuple>

#include "qed/image.hpp"

namespace qed::test {

/// Start an operation with a callback and run `ioc` until it completes.
/// Returns the handler's arguments as a tuple.
template <class... Args, class Start>
std::tuple<Args...> await(boost::asio::io_context& ioc, Start start) {
    std::optional<std::tuple<Args...>> result;
    start([&result](Args... args) { result.emplace(std::move(args)...); });
    ioc.restart();
    while (!result) {
        if (ioc.run_one() == 0) {
            if (!result) throw std::runtime_error("operation never completed (hang)");
            break;
        }
    }
    return std::move(*result);
}

struct sync_image {
    boost::asio::io_context& ioc;
    image img;

    std::error_code read(std::uint64_t off, void* p, std::size_t n) {
        auto [ec, got] = await<std::error_code, std::size_t>(
            ioc, [&](auto h) { img.async_read_at(off, boost::asio::buffer(p, n), std::move(h)); });
        return ec;
    }
    std::error_code write(std::uint64_t off, const void* p, std::size_t n) {
        auto [ec, put] = await<std::error_code, std::size_t>(
            ioc, [&](auto h) { img.async_write_at(off, boost::asio::buffer(p, n), std::move(h)); });
        return ec;
    }
    std::error_code write_zeroes(std::uint64_t off, std::uint64_t n, zero_options o = {}) {
        return std::get<0>(
            await<std::error_code>(ioc, [&](auto h) { img.async_write_zeroes(off, n, o, std::move(h)); }));
    }
    std::error_code discard(std::uint64_t off, std::uint64_t n) {
        return std::get<0>(await<std::error_code>(ioc, [&](auto h) { img.async_discard(off, n, std::move(h)); }));
    }
    std::error_code flush() {
        return std::get<0>(await<std::error_code>(ioc, [&](auto h) { img.async_flush(std::move(h)); }));
    }
    std::error_code close() {
        return std::get<0>(await<std::error_code>(ioc, [&](auto h) { img.async_close(std::move(h)); }));
    }
    std::error_code grow(std::uint64_t n) {
        return std::get<0>(await<std::error_code>(ioc, [&](auto h) { img.async_grow(n, std::move(h)); }));
    }
    std::pair<std::error_code, std::vector<extent>> block_status(std::uint64_t off, std::uint64_t n) {
        auto [ec, v] = await<std::error_code, std::vector<extent>>(
            ioc, [&](auto h) { img.async_block_status(off, n, std::move(h)); });
        return {ec, std::move(v)};
    }
    std::pair<std::error_code, check_result> check(check_options::repair mode = check_options::repair::none) {
        auto [ec, r] = await<std::error_code, check_result>(
            ioc, [&](auto h) { img.async_check(check_options{mode}, std::move(h)); });
        return {ec, std::move(r)};
    }
    std::error_code change_backing_file(const std::string& name, std::optional<image_format> fmt) {
        return std::get<0>(
            await<std::error_code>(ioc, [&](auto h) { img.async_change_backing_file(name, fmt, std::move(h)); }));
    }
};

inline std::error_code create(boost::asio::io_context& ioc, const std::string& path, create_options o) {
    return std::get<0>(await<std::error_code>(
        ioc, [&](auto h) { image::async_create(ioc.get_executor(), path, std::move(o), std::move(h)); }));
}

inline std::pair<std::error_code, sync_image> open(boost::asio::io_context& ioc, const std::string& path,
                                                   open_options o = {}) {
    auto [ec, img] = await<std::error_code, image>(
        ioc, [&](auto h) { image::async_open(ioc.get_executor(), path, std::move(o), std::move(h)); });
    return {ec, sync_image{ioc, std::move(img)}};
}

}  // namespace qed::test

namespace qed::test {

/// Run `ioc` until `done()` is true; false if it does not happen within
/// `limit` (a hang: some operation never completed).
template <class Pred>
bool run_until(boost::asio::io_context& ioc, Pred done, std::chrono::milliseconds limit = std::chrono::seconds(60)) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    ioc.restart();
    while (!done()) {
        if (std::chrono::steady_clock::now() > deadline) return false;
        if (ioc.run_one_for(std::chrono::milliseconds(100)) == 0 && ioc.stopped()) ioc.restart();
    }
    return true;
}

}  // namespace qed::test
