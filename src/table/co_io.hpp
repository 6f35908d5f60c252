// SPDX-License-Identifier: BSL-1.0
// Coroutine wrappers for the slow paths (open, create, close, check,
// header rewrites). The request hot path stays on plain completion handlers.
// No exception crosses an async boundary: results come back as error codes,
// and run() turns anything thrown inside a coroutine into one.
#pragma once

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <exception>
#include <new>
#include <type_traits>

#include "qed/block_file.hpp"
#include "table/table.hpp"

namespace qed::detail::co {

inline constexpr auto use_tuple = boost::asio::as_tuple(boost::asio::use_awaitable);

// GCC 12 destroys a lambda temporary inside a co_await expression twice, so
// captured shared_ptrs get released twice. Callables handed to these helpers
// must therefore be trivially destructible (capture references, pointers and
// numbers only); keep owners alive in named locals. The static_asserts make
// a violation a compile error instead of a use-after-free.

/// Await any operation started as `start(op_handler)`.
template <class Start>
boost::asio::awaitable<std::error_code> op(Start start) {
    static_assert(std::is_trivially_destructible_v<Start>, "capture only references/pointers (GCC 12 coroutine bug)");
    auto [ec] = co_await boost::asio::async_initiate<decltype(use_tuple), void(boost::system::error_code)>(
        [](auto handler, Start s) { s(op_handler(std::move(handler))); }, use_tuple, start);
    co_return ec;
}

inline boost::asio::awaitable<std::error_code> read(block_file& f, std::uint64_t offset, void* data, std::size_t n) {
    auto [ec, got] =
        co_await boost::asio::async_initiate<decltype(use_tuple), void(boost::system::error_code, std::size_t)>(
            [&f, offset, data, n](auto handler) {
                const boost::asio::mutable_buffer b(data, n);
                f.async_read_at(offset, {&b, 1}, io_handler(std::move(handler)));
            },
            use_tuple);
    (void)got;
    co_return ec;
}

inline boost::asio::awaitable<std::error_code> write(block_file& f, std::uint64_t offset, const void* data,
                                                     std::size_t n) {
    auto [ec, put] =
        co_await boost::asio::async_initiate<decltype(use_tuple), void(boost::system::error_code, std::size_t)>(
            [&f, offset, data, n](auto handler) {
                const boost::asio::const_buffer b(data, n);
                f.async_write_at(offset, {&b, 1}, io_handler(std::move(handler)));
            },
            use_tuple);
    (void)put;
    co_return ec;
}

inline boost::asio::awaitable<std::error_code> flush(block_file& f) {
    co_return co_await op([&f](op_handler h) { f.async_flush(std::move(h)); });
}

inline boost::asio::awaitable<std::error_code> resize(block_file& f, std::uint64_t size) {
    co_return co_await op([&f, size](op_handler h) { f.async_resize(size, std::move(h)); });
}

inline boost::asio::awaitable<std::error_code> read_table(block_file& f, std::uint64_t offset, table& t) {
    co_return co_await op([&f, offset, &t](op_handler h) { async_read_table(f, offset, t, std::move(h)); });
}

inline boost::asio::awaitable<std::error_code> write_table(block_file& f, std::uint64_t offset, const table& t,
                                                           std::uint32_t first, std::uint32_t count,
                                                           std::size_t align) {
    co_return co_await op([&f, offset, &t, first, count, align](op_handler h) {
        async_write_table(f, offset, t, first, count, align, std::move(h));
    });
}

/// Run a coroutine returning an error code; `done(ec)` gets its result.
template <class Done>
void run(const boost::asio::any_io_executor& ex, boost::asio::awaitable<std::error_code> task, Done done) {
    boost::asio::co_spawn(ex, std::move(task),
                          [done = std::move(done)](std::exception_ptr e, std::error_code ec) mutable {
                              if (e) {
                                  try {
                                      std::rethrow_exception(e);
                                  } catch (const std::bad_alloc&) {
                                      ec = std::make_error_code(std::errc::not_enough_memory);
                                  } catch (...) {
                                      ec = std::make_error_code(std::errc::io_error);
                                  }
                              }
                              std::move(done)(ec);
                          });
}

}  // namespace qed::detail::co
