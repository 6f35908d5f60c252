// SPDX-License-Identifier: BSL-1.0
// An adopter's program: create, write, read back and close a QED image in
// the current directory with each kind of completion token — callbacks,
// use_future (throwing, and the non-throwing forms) and use_awaitable (same).
// Exits non-zero, with one line saying what differed, on any mismatch.
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <qed/as_tuple_future.hpp>
#include <qed/image.hpp>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

namespace asio = boost::asio;

namespace {

int failures = 0;

void expect(bool ok, const char* what) {
    if (!ok) {
        std::fprintf(stderr, "consumer: FAILED: %s\n", what);
        ++failures;
    }
}

// ---- callbacks ---------------------------------------------------------------

void with_callbacks() {
    asio::io_context ioc;
    const auto ex = ioc.get_executor();
    static std::vector<char> data(4096, 'c');
    static std::vector<char> back(4096);
    bool closed = false;
    qed::create_options co;
    co.size = 1 << 20;
    qed::image::async_create(ex, "callbacks.qed", co, [&](boost::system::error_code ec) {
        expect(!ec, "callbacks: create");
        qed::image::async_open(ex, "callbacks.qed", {}, [&](boost::system::error_code ec, qed::image img) {
            expect(!ec, "callbacks: open");
            if (ec) return;
            img.async_write_at(0, asio::buffer(data), [&, img](boost::system::error_code ec, std::size_t n) mutable {
                expect(!ec && n == data.size(), "callbacks: write");
                img.async_read_at(0, asio::buffer(back), [&, img](boost::system::error_code ec, std::size_t) mutable {
                    expect(!ec && back == data, "callbacks: read back");
                    // The qed category through boost::system::error_code.
                    img.async_read_at(
                        1, asio::buffer(back), [&, img](boost::system::error_code ec, std::size_t) mutable {
                            expect(ec == qed::errc::unaligned_request, "callbacks: unaligned read gives qed::errc");
                            img.async_close([&](boost::system::error_code ec) {
                                expect(!ec, "callbacks: close");
                                closed = true;
                            });
                        });
                });
            });
        });
    });
    ioc.run();
    expect(closed, "callbacks: the chain ran to the end");
}

// ---- use_future, with the io_context on another thread -------------------------

void with_futures() {
    asio::io_context ioc;
    auto guard = asio::make_work_guard(ioc);
    std::thread runner([&] { ioc.run(); });
    const auto ex = ioc.get_executor();
    try {
        qed::create_options co;
        co.size = 1 << 20;
        qed::image::async_create(ex, "futures.qed", co, asio::use_future).get();
        qed::image img = qed::image::async_open(ex, "futures.qed", {}, asio::use_future).get();
        const std::vector<char> data(8192, 'f');
        std::vector<char> back(8192);
        const std::size_t put = img.async_write_at(4096, asio::buffer(data), asio::use_future).get();
        expect(put == data.size(), "use_future: write returns the byte count");
        const std::size_t got = img.async_read_at(4096, asio::buffer(back), asio::use_future).get();
        expect(got == back.size() && back == data, "use_future: read returns the byte count and the data");
        const std::vector<qed::extent> ext = img.async_block_status(0, 1 << 20, asio::use_future).get();
        expect(!ext.empty() && ext.front().offset == 0, "use_future: block status returns extents");

        // Throwing form: the future throws boost::system::system_error.
        bool threw = false;
        try {
            img.async_read_at(100, asio::buffer(back), asio::use_future).get();
        } catch (const boost::system::system_error& e) {
            threw = e.code() == qed::errc::unaligned_request;
        }
        expect(threw, "use_future: an unaligned read throws system_error with qed::errc::unaligned_request");

        // Non-throwing forms: as_tuple (Asio 1.81 needs qed/as_tuple_future.hpp
        // for it with use_future, for Asio's own operations as well) and
        // redirect_error.
        auto [tec, tn] = img.async_read_at(100, asio::buffer(back), asio::as_tuple(asio::use_future)).get();
        expect(tec == qed::errc::unaligned_request && tn == 0, "as_tuple(use_future): error code and count");
        auto [okec, okn] = img.async_read_at(4096, asio::buffer(back), asio::as_tuple(asio::use_future)).get();
        expect(!okec && okn == back.size(), "as_tuple(use_future): success gives no error and the count");
        auto [fec] = img.async_flush(asio::as_tuple(asio::use_future)).get();
        expect(!fec, "as_tuple(use_future): flush gives a one-element tuple");
        boost::system::error_code rec;
        const std::size_t rn =
            img.async_read_at(100, asio::buffer(back), asio::redirect_error(asio::use_future, rec)).get();
        expect(rec == qed::errc::unaligned_request && rn == 0, "redirect_error(use_future): error code");

        img.async_close(asio::use_future).get();
    } catch (const std::exception& e) {
        expect(false, "use_future: unexpected exception");
        std::fprintf(stderr, "consumer:   %s\n", e.what());
    }
    guard.reset();
    runner.join();
}

// ---- use_awaitable -----------------------------------------------------------
// GCC 12 destroys temporaries inside a co_await expression twice: keep each
// operation in a named local and co_await std::move(it).

asio::awaitable<void> coroutine_flow() {
    const auto ex = co_await asio::this_coro::executor;
    qed::create_options co;
    co.size = 1 << 20;
    auto create_op = qed::image::async_create(ex, "awaitable.qed", co, asio::use_awaitable);
    co_await std::move(create_op);
    auto open_op = qed::image::async_open(ex, "awaitable.qed", {}, asio::use_awaitable);
    qed::image img = co_await std::move(open_op);

    const std::vector<char> data(4096, 'a');
    std::vector<char> back(4096);
    auto write_op = img.async_write_at(0, asio::buffer(data), asio::use_awaitable);
    const std::size_t put = co_await std::move(write_op);
    auto read_op = img.async_read_at(0, asio::buffer(back), asio::use_awaitable);
    const std::size_t got = co_await std::move(read_op);
    expect(put == data.size() && got == back.size() && back == data, "use_awaitable: values and data");

    bool threw = false;
    auto bad_op = img.async_read_at(512 * 4096, asio::buffer(back), asio::use_awaitable);
    try {
        co_await std::move(bad_op);
    } catch (const boost::system::system_error& e) {
        threw = e.code() == qed::errc::out_of_range;
    }
    expect(threw, "use_awaitable: a read past the end throws system_error with qed::errc::out_of_range");

    auto tuple_op = img.async_read_at(512 * 4096, asio::buffer(back), asio::as_tuple(asio::use_awaitable));
    auto [tec, tn] = co_await std::move(tuple_op);
    expect(tec == qed::errc::out_of_range && tn == 0, "as_tuple(use_awaitable): error code and count");
    boost::system::error_code rec;
    auto redirect_op =
        img.async_read_at(512 * 4096, asio::buffer(back), asio::redirect_error(asio::use_awaitable, rec));
    co_await std::move(redirect_op);
    expect(rec == qed::errc::out_of_range, "redirect_error(use_awaitable): error code");

    auto close_op = img.async_close(asio::use_awaitable);
    co_await std::move(close_op);
}

void with_awaitable() {
    asio::io_context ioc;
    bool done = false;
    asio::co_spawn(ioc, coroutine_flow(), [&](std::exception_ptr e) {
        done = true;
        if (!e) return;
        try {
            std::rethrow_exception(e);
        } catch (const std::exception& x) {
            std::fprintf(stderr, "consumer:   %s\n", x.what());
        }
        expect(false, "use_awaitable: the coroutine threw");
    });
    ioc.run();
    expect(done, "use_awaitable: the coroutine finished");
}

}  // namespace

int main() {
    with_callbacks();
    with_futures();
    with_awaitable();
    if (failures) return EXIT_FAILURE;
    std::printf("consumer: callbacks, use_future and use_awaitable all behave\n");
    return EXIT_SUCCESS;
}
