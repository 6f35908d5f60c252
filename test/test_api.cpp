// SPDX-License-Identifier: BSL-1.0
// The asynchronous API contract: completion tokens (callbacks, use_future,
// use_awaitable, deferred), handlers never invoked inside the initiating
// call, handlers on the image's executor (a strand with two threads) or on
// their own associated executor, hundreds of requests in flight, handle
// copies and drops, close twice, open failures with their log lines, and the
// real-file backends (thread pool, io_uring, O_DIRECT with unaligned memory).
#include <atomic>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>
#include <boost/test/data/monomorphic.hpp>
#include <boost/test/data/test_case.hpp>
#include <boost/test/unit_test.hpp>
#include <chrono>
#include <future>
#include <mutex>
#include <thread>

#include "qed/as_tuple_future.hpp"
#include "qed/image.hpp"
#include "support/image_fixture.hpp"
#include "support/tmp_dir.hpp"

namespace asio = boost::asio;
namespace data = boost::unit_test::data;
using namespace qed;
using namespace qed::test;
using std::chrono::milliseconds;
using std::chrono::seconds;

namespace {

/// Runs an io_context on `n` threads until destroyed (or stop()).
class threads_running {
public:
    threads_running(asio::io_context& ioc, unsigned n) : ioc_(ioc), guard_(asio::make_work_guard(ioc)) {
        for (unsigned i = 0; i < n; ++i) threads_.emplace_back([this] { ioc_.run(); });
    }
    ~threads_running() { stop(); }
    /// Let the threads finish the work there is, then join them. False if
    /// work was still pending after `limit` (it is then stopped).
    bool finish(seconds limit = seconds(10)) {
        guard_.reset();
        const auto deadline = std::chrono::steady_clock::now() + limit;
        while (!ioc_.stopped() && std::chrono::steady_clock::now() < deadline)
            std::this_thread::sleep_for(milliseconds(1));
        const bool drained = ioc_.stopped();
        stop();
        return drained;
    }
    void stop() {
        guard_.reset();
        ioc_.stop();
        join();
    }

private:
    void join() {
        for (auto& t : threads_)
            if (t.joinable()) t.join();
    }
    asio::io_context& ioc_;
    asio::executor_work_guard<asio::io_context::executor_type> guard_;
    std::vector<std::thread> threads_;
};

/// Wait for a future (at most `limit`): false on timeout (a hang).
template <class T>
bool ready(std::future<T>& f, seconds limit = seconds(30)) {
    return f.wait_for(limit) == std::future_status::ready;
}

/// The error a use_future future throws from get() (none: a default code).
/// Only boost::system::system_error counts; anything else fails the test.
template <class T>
boost::system::error_code thrown(std::future<T>& f) {
    try {
        f.get();
    } catch (const boost::system::system_error& e) {
        return e.code();
    }
    return {};
}

}  // namespace

// ===========================================================================
// completion tokens
// ===========================================================================

BOOST_AUTO_TEST_SUITE(tokens)

BOOST_AUTO_TEST_CASE(callbacks_receive_results) {
    mem_env e;
    e.create("img.qed", e.create_opts(MiB, {4096, 1}));
    auto img = e.open("img.qed");
    const auto w = pattern(4096, 8192, 1);
    auto [wec, wn] = await<std::error_code, std::size_t>(
        e.ioc, [&](auto h) { img.img.async_write_at(4096, asio::buffer(w), std::move(h)); });
    BOOST_TEST(!wec);
    BOOST_TEST(wn == 8192u);
    std::vector<std::uint8_t> r(8192);
    auto [rec, rn] = await<std::error_code, std::size_t>(
        e.ioc, [&](auto h) { img.img.async_read_at(4096, asio::buffer(r), std::move(h)); });
    BOOST_TEST(!rec);
    BOOST_TEST(rn == 8192u);
    BOOST_TEST((r == w));
    auto [fec, fn] = await<std::error_code, std::size_t>(
        e.ioc, [&](auto h) { img.img.async_read_at(100, asio::buffer(r), std::move(h)); });
    BOOST_TEST((fec == errc::unaligned_request));
    BOOST_TEST(fn == 0u, "a failed request reports no bytes");
    BOOST_TEST_REQUIRE(!img.close());
}

BOOST_AUTO_TEST_CASE(use_future_with_the_io_context_on_another_thread) {
    asio::io_context ioc;
    memory_fs fs(ioc.get_executor());
    threads_running runner(ioc, 1);
    const auto ex = ioc.get_executor();

    create_options co;
    co.size = 4 * MiB;
    co.cluster_size = 4096;
    co.table_size = 1;
    co.opener = fs.opener();
    auto fc = image::async_create(ex, "f.qed", co, asio::use_future);
    BOOST_TEST_REQUIRE(ready(fc));
    BOOST_TEST(!thrown(fc));
    // A failing create delivers its error through the future too: get()
    // throws boost::system::system_error carrying the qed error code.
    co.cluster_size = 1000;
    auto fbad = image::async_create(ex, "g.qed", co, asio::use_future);
    BOOST_TEST_REQUIRE(ready(fbad));
    BOOST_TEST((thrown(fbad) == errc::invalid_cluster_size));

    open_options oo;
    oo.opener = fs.opener();
    auto fo = image::async_open(ex, "f.qed", oo, asio::use_future);
    BOOST_TEST_REQUIRE(ready(fo));
    image img = fo.get();
    BOOST_TEST(img.is_open());

    const auto w = pattern(0, 3 * 4096, 2);
    auto fw = img.async_write_at(4096, asio::buffer(w), asio::use_future);
    BOOST_TEST_REQUIRE(ready(fw));
    const std::size_t wn = fw.get();
    BOOST_TEST(wn == w.size());
    auto fwf = img.async_write_at(4096, asio::buffer(w), write_options{true}, asio::use_future);
    BOOST_TEST_REQUIRE(ready(fwf));
    BOOST_TEST(!thrown(fwf));

    std::vector<std::uint8_t> r(w.size());
    auto fr = img.async_read_at(4096, asio::buffer(r), asio::use_future);
    BOOST_TEST_REQUIRE(ready(fr));
    const std::size_t rn = fr.get();
    BOOST_TEST(rn == r.size());
    BOOST_TEST((r == w));

    auto fz = img.async_write_zeroes(64 * 4096, 8 * 4096, asio::use_future);
    BOOST_TEST_REQUIRE(ready(fz));
    BOOST_TEST(!thrown(fz));
    auto fs_ = img.async_block_status(0, 128 * 4096, asio::use_future);
    BOOST_TEST_REQUIRE(ready(fs_));
    const std::vector<extent> ext = fs_.get();
    BOOST_TEST_REQUIRE(ext.size() >= 3u);
    BOOST_TEST(ext.front().offset == 0u);
    BOOST_TEST(ext.back().offset + ext.back().length == 128u * 4096u);
    auto ff = img.async_flush(asio::use_future);
    BOOST_TEST_REQUIRE(ready(ff));
    BOOST_TEST(!thrown(ff));
    auto fck = img.async_check(check_options{}, asio::use_future);
    BOOST_TEST_REQUIRE(ready(fck));
    const check_result cr = fck.get();
    BOOST_TEST(cr.allocated_clusters == 3u);
    BOOST_TEST(cr.corruptions == 0u);
    auto fg = img.async_grow(8 * MiB, asio::use_future);
    BOOST_TEST_REQUIRE(ready(fg));
    BOOST_TEST(!thrown(fg));
    BOOST_TEST(img.size() == 8 * MiB);

    // The throwing form: an unaligned read's future throws system_error...
    auto fbr = img.async_read_at(100, asio::buffer(r), asio::use_future);
    BOOST_TEST_REQUIRE(ready(fbr));
    BOOST_TEST((thrown(fbr) == errc::unaligned_request));
    // ...and the non-throwing forms give the error code and byte count.
    // as_tuple(use_future) needs qed/as_tuple_future.hpp on Asio 1.81;
    // use_future(f) with a function returning a tuple is the same thing,
    // and redirect_error works as usual.
    auto fat = img.async_read_at(100, asio::buffer(r), asio::as_tuple(asio::use_future));
    BOOST_TEST_REQUIRE(ready(fat));
    auto [aec, an] = fat.get();
    static_assert(std::is_same_v<decltype(aec), boost::system::error_code>);
    BOOST_TEST((aec == errc::unaligned_request));
    BOOST_TEST(an == 0u);
    auto fast = img.async_block_status(0, 4096, asio::as_tuple(asio::use_future));
    BOOST_TEST_REQUIRE(ready(fast));
    auto [asec, asext] = fast.get();
    BOOST_TEST(!asec);
    BOOST_TEST(asext.size() == 1u);
    const auto tuple_of = [](boost::system::error_code ec, auto value) { return std::tuple(ec, std::move(value)); };
    auto fbt = img.async_read_at(100, asio::buffer(r), asio::use_future(tuple_of));
    BOOST_TEST_REQUIRE(ready(fbt));
    auto [bec, bn] = fbt.get();
    static_assert(std::is_same_v<decltype(bec), boost::system::error_code>);
    BOOST_TEST((bec == errc::unaligned_request));
    BOOST_TEST(bn == 0u);
    boost::system::error_code rec = errc::invalid_argument;
    auto fbe = img.async_read_at(100, asio::buffer(r), asio::redirect_error(asio::use_future, rec));
    BOOST_TEST_REQUIRE(ready(fbe));
    BOOST_TEST(fbe.get() == 0u);
    BOOST_TEST((rec == errc::unaligned_request));
    auto fst = img.async_block_status(0, 4096, asio::use_future(tuple_of));
    BOOST_TEST_REQUIRE(ready(fst));
    auto [stec, stext] = fst.get();
    BOOST_TEST(!stec);
    BOOST_TEST(stext.size() == 1u);

    auto fcl = img.async_close(asio::use_future);
    BOOST_TEST_REQUIRE(ready(fcl));
    BOOST_TEST(!thrown(fcl));
    auto fcl2 = img.async_close(asio::use_future);
    BOOST_TEST_REQUIRE(ready(fcl2));
    BOOST_TEST((thrown(fcl2) == errc::closed));
    BOOST_TEST(runner.finish(), "work left pending after close");
}

namespace {

struct coro_results {
    std::error_code create, open, write, read, zeroes, status, flush, check, grow, change, empty, unaligned, close,
        close_again, unaligned_tuple, redirected;
    std::size_t written = 0, read_bytes = 0, unaligned_tuple_bytes = 1;
    bool read_matches = false, zeros_after_empty = false;
    std::vector<extent> extents;
    check_result checked;
    bool finished = false;
};

/// Run one step of the coroutine below; a thrown system_error becomes its code.
#define QED_CO_STEP(result, ...)                              \
    try {                                                     \
        __VA_ARGS__;                                          \
    } catch (const boost::system::system_error& step_error) { \
        result = step_error.code();                           \
    }

// Every co_await operand is a named awaitable (no temporaries with
// non-trivial destructors inside co_await: GCC 12 destroys them twice).
// use_awaitable returns the value and throws system_error on failure;
// as_tuple(use_awaitable) and redirect_error give the non-throwing forms.
asio::awaitable<void> image_flow(memory_fs* fs, coro_results* out) {
    const asio::any_io_executor ex = co_await asio::this_coro::executor;
    create_options co;
    co.size = 2 * MiB;
    co.cluster_size = 4096;
    co.table_size = 4;
    co.opener = fs->opener();
    std::string name = "co.qed";
    auto create_op = image::async_create(ex, name, co, asio::use_awaitable);
    QED_CO_STEP(out->create, co_await std::move(create_op));

    open_options oo;
    oo.opener = fs->opener();
    auto open_op = image::async_open(ex, name, oo, asio::use_awaitable);
    image img;
    QED_CO_STEP(out->open, img = co_await std::move(open_op));
    if (out->open) co_return;

    const std::vector<std::uint8_t> w = pattern(8192, 3 * 4096, 7);
    auto write_op = img.async_write_at(8192, asio::buffer(w), write_options{true}, asio::use_awaitable);
    QED_CO_STEP(out->write, out->written = co_await std::move(write_op));
    std::vector<std::uint8_t> r(w.size());
    auto read_op = img.async_read_at(8192, asio::buffer(r), asio::use_awaitable);
    QED_CO_STEP(out->read, out->read_bytes = co_await std::move(read_op));
    out->read_matches = r == w;
    auto zero_op = img.async_write_zeroes(64 * 4096, 4 * 4096, asio::use_awaitable);
    QED_CO_STEP(out->zeroes, co_await std::move(zero_op));
    auto status_op = img.async_block_status(0, 128 * 4096, asio::use_awaitable);
    QED_CO_STEP(out->status, out->extents = co_await std::move(status_op));
    auto flush_op = img.async_flush(asio::use_awaitable);
    QED_CO_STEP(out->flush, co_await std::move(flush_op));
    auto check_op = img.async_check(check_options{check_options::repair::all}, asio::use_awaitable);
    QED_CO_STEP(out->check, out->checked = co_await std::move(check_op));
    auto grow_op = img.async_grow(4 * MiB, asio::use_awaitable);
    QED_CO_STEP(out->grow, co_await std::move(grow_op));
    auto change_op = img.async_change_backing_file(std::string{}, std::nullopt, asio::use_awaitable);
    QED_CO_STEP(out->change, co_await std::move(change_op));
    auto empty_op = img.async_make_empty(asio::use_awaitable);
    QED_CO_STEP(out->empty, co_await std::move(empty_op));
    auto reread_op = img.async_read_at(8192, asio::buffer(r), asio::as_tuple(asio::use_awaitable));
    auto [rec, rn] = co_await std::move(reread_op);
    out->zeros_after_empty =
        !rec && rn == r.size() && std::all_of(r.begin(), r.end(), [](std::uint8_t b) { return b == 0; });
    // Throwing form.
    auto bad_op = img.async_read_at(511, asio::buffer(r), asio::use_awaitable);
    QED_CO_STEP(out->unaligned, co_await std::move(bad_op));
    // Non-throwing forms.
    auto bad_tuple_op = img.async_read_at(511, asio::buffer(r), asio::as_tuple(asio::use_awaitable));
    std::tie(out->unaligned_tuple, out->unaligned_tuple_bytes) = co_await std::move(bad_tuple_op);
    boost::system::error_code redirected;
    auto bad_redirect_op =
        img.async_read_at(511, asio::buffer(r), asio::redirect_error(asio::use_awaitable, redirected));
    co_await std::move(bad_redirect_op);
    out->redirected = redirected;
    auto close_op = img.async_close(asio::use_awaitable);
    QED_CO_STEP(out->close, co_await std::move(close_op));
    auto close_again_op = img.async_close(asio::use_awaitable);
    QED_CO_STEP(out->close_again, co_await std::move(close_again_op));
    out->finished = true;
}

#undef QED_CO_STEP

}  // namespace

BOOST_AUTO_TEST_CASE(use_awaitable_in_a_coroutine) {
    asio::io_context ioc;
    memory_fs fs(ioc.get_executor());
    coro_results res;
    bool done = false;
    std::exception_ptr failure;
    asio::co_spawn(ioc, image_flow(&fs, &res), [&](std::exception_ptr ep) {
        failure = ep;
        done = true;
    });
    BOOST_TEST_REQUIRE(run_until(
                           ioc, [&] { return done; }, seconds(30)),
                       "the coroutine never finished");
    BOOST_TEST_REQUIRE(!failure, "the coroutine threw");
    BOOST_TEST(!res.create, res.create.message());
    BOOST_TEST_REQUIRE(!res.open, res.open.message());
    BOOST_TEST_REQUIRE(res.finished);
    BOOST_TEST(!res.write);
    BOOST_TEST(res.written == 3u * 4096u);
    BOOST_TEST(!res.read);
    BOOST_TEST(res.read_bytes == 3u * 4096u);
    BOOST_TEST(res.read_matches);
    BOOST_TEST(!res.zeroes);
    BOOST_TEST(!res.status);
    BOOST_TEST_REQUIRE(!res.extents.empty());
    BOOST_TEST(res.extents.back().offset + res.extents.back().length == 128u * 4096u);
    BOOST_TEST(!res.flush);
    BOOST_TEST(!res.check);
    BOOST_TEST(res.checked.allocated_clusters == 3u);
    BOOST_TEST(!res.grow);
    BOOST_TEST(!res.change);
    BOOST_TEST(!res.empty);
    BOOST_TEST(res.zeros_after_empty);
    BOOST_TEST((res.unaligned == errc::unaligned_request));
    BOOST_TEST((res.unaligned_tuple == errc::unaligned_request));
    BOOST_TEST(res.unaligned_tuple_bytes == 0u);
    BOOST_TEST((res.redirected == errc::unaligned_request));
    BOOST_TEST(!res.close);
    BOOST_TEST((res.close_again == errc::closed));
}

BOOST_AUTO_TEST_CASE(deferred_operations_start_when_invoked) {
    mem_env e;
    e.create("img.qed", e.create_opts(MiB, {4096, 1}));
    auto img = e.open("img.qed");
    const auto w = pattern(0, 4096, 3);
    auto op = img.img.async_write_at(0, asio::buffer(w), asio::deferred);
    const auto before = e.all_bytes("img.qed");
    e.ioc.restart();
    e.ioc.poll();
    BOOST_TEST((e.all_bytes("img.qed") == before), "a deferred operation ran before it was invoked");
    std::error_code wec = errc::invalid_argument;
    std::size_t wn = 0;
    bool done = false;
    std::move(op)([&](std::error_code ec, std::size_t n) {
        wec = ec;
        wn = n;
        done = true;
    });
    BOOST_TEST_REQUIRE(run_until(
        e.ioc, [&] { return done; }, seconds(10)));
    BOOST_TEST(!wec);
    BOOST_TEST(wn == 4096u);
    expect_pattern(img, 0, 4096, 3, "written through deferred");

    // Deferred reads and closes too; a deferred operation can be started later
    // even when it will fail.
    std::vector<std::uint8_t> r(4096);
    auto rd = img.img.async_read_at(0, asio::buffer(r), asio::deferred);
    auto cl = img.img.async_close(asio::deferred);
    auto late = img.img.async_flush(asio::deferred);
    done = false;
    std::error_code rec = errc::invalid_argument;
    std::move(rd)([&](std::error_code ec, std::size_t) {
        rec = ec;
        done = true;
    });
    BOOST_TEST_REQUIRE(run_until(
        e.ioc, [&] { return done; }, seconds(10)));
    BOOST_TEST(!rec);
    BOOST_TEST(first_mismatch(r, 0, r.size(), 0, 3) == -1);
    done = false;
    std::error_code cec = errc::invalid_argument, lec;
    std::move(cl)([&](std::error_code ec) { cec = ec; });
    std::move(late)([&](std::error_code ec) {
        lec = ec;
        done = true;
    });
    BOOST_TEST_REQUIRE(run_until(
        e.ioc, [&] { return done; }, seconds(10)));
    BOOST_TEST(!cec);
    BOOST_TEST((lec == errc::closed));
}

BOOST_AUTO_TEST_SUITE_END()

// ===========================================================================
// a handler never runs inside the initiating call
// ===========================================================================

BOOST_AUTO_TEST_SUITE(never_inline)

namespace {

struct inline_checker {
    asio::io_context& ioc;
    unsigned checked = 0;

    /// Start an operation with a handler that notes whether the initiating
    /// call had returned; from outside the io_context and from a handler
    /// running on it (where Asio's dispatch would run inline). `want`: the
    /// error the operation must report (nullopt: don't care).
    template <class Start>
    void operator()(const std::string& what, std::optional<std::error_code> want, Start start) {
        run(what, want, start, {false, true});
    }
    /// For operations that can only succeed once (close): one way only.
    template <class Start>
    void once(const std::string& what, std::optional<std::error_code> want, bool from_inside, Start start) {
        run(what, want, start, {from_inside});
    }
    template <class Start>
    void run(const std::string& what, std::optional<std::error_code> want, Start start,
             std::initializer_list<bool> modes) {
        for (bool from_inside : modes) {
            BOOST_TEST_CONTEXT(what << (from_inside ? " (started on the executor)" : " (started from outside)")) {
                bool returned = false, called = false, inline_call = false;
                std::error_code got;
                auto handler = [&](std::error_code ec, auto&&...) {
                    got = ec;
                    inline_call = !returned;
                    called = true;
                };
                if (from_inside) {
                    asio::post(ioc, [&] {
                        start(handler);
                        returned = true;
                    });
                } else {
                    start(handler);
                    returned = true;
                }
                BOOST_TEST_REQUIRE(run_until(
                                       ioc, [&] { return called; }, seconds(10)),
                                   "never completed");
                BOOST_TEST(!inline_call, "the handler ran inside the initiating call");
                if (want) BOOST_TEST((got == *want), "got " << got.message());
                ++checked;
            }
        }
    }
};

}  // namespace

BOOST_AUTO_TEST_CASE(for_every_operation_and_outcome) {
    mem_env e;
    inline_checker check{e.ioc};
    const std::error_code ok{};
    const auto ex = e.ioc.get_executor();
    std::vector<std::uint8_t> b(8192, 0x11);
    const auto buf = asio::buffer(b);
    const auto half = asio::buffer(b.data(), 4096);

    check("create", ok, [&](auto h) {
        image::async_create(ex, "img.qed", e.create_opts(MiB, {4096, 1}), std::move(h));
    });
    check("create, bad cluster size", errc::invalid_cluster_size, [&](auto h) {
        image::async_create(ex, "bad.qed", e.create_opts(MiB, {1000, 1}), std::move(h));
    });
    check("create raw", ok, [&](auto h) {
        auto co = e.create_opts(MiB);
        co.format = image_format::raw;
        image::async_create(ex, "img.raw", co, std::move(h));
    });
    check("open, missing file", std::make_error_code(std::errc::no_such_file_or_directory),
          [&](auto h) { image::async_open(ex, "missing.qed", e.open_opts(), std::move(h)); });
    image img;
    check("open", ok, [&](auto h) {
        image::async_open(ex, "img.qed", e.open_opts(), [&img, h = std::move(h)](std::error_code ec, image i) mutable {
            img = std::move(i);
            std::move(h)(ec);
        });
    });
    BOOST_TEST_REQUIRE(img.is_open());
    check("open on a block file", ok, [&](auto h) {
        image::async_open(make_memory_file(ex, e.fs.storage("img.raw")), "img.raw", open_options{}, std::move(h));
    });

    // QED image: successes, from memory and from the file.
    check("read of a hole (answered from memory)", ok, [&](auto h) { img.async_read_at(0, buf, std::move(h)); });
    check("allocating write", ok, [&](auto h) { img.async_write_at(0, buf, std::move(h)); });
    check("in-place write", ok, [&](auto h) { img.async_write_at(0, half, std::move(h)); });
    check("FUA write", ok, [&](auto h) { img.async_write_at(0, half, write_options{true}, std::move(h)); });
    check("read of data", ok, [&](auto h) { img.async_read_at(0, buf, std::move(h)); });
    check("write-zeroes (zero clusters)", ok, [&](auto h) { img.async_write_zeroes(64 * 1024, 8192, std::move(h)); });
    check("write-zeroes over zero clusters (no I/O)", ok,
          [&](auto h) { img.async_write_zeroes(64 * 1024, 8192, std::move(h)); });
    check("write-zeroes, length 0", ok, [&](auto h) { img.async_write_zeroes(0, 0, std::move(h)); });
    check("read, length 0", ok, [&](auto h) { img.async_read_at(0, asio::buffer(b.data(), 0), std::move(h)); });
    check("flush", ok, [&](auto h) { img.async_flush(std::move(h)); });
    check("block status", ok, [&](auto h) { img.async_block_status(0, 128 * 1024, std::move(h)); });
    check("block status, length 0", ok, [&](auto h) { img.async_block_status(0, 0, std::move(h)); });
    check("check", ok, [&](auto h) { img.async_check(check_options{}, std::move(h)); });
    check("check and repair", ok,
          [&](auto h) { img.async_check(check_options{check_options::repair::all}, std::move(h)); });
    check("grow to the same size", ok, [&](auto h) { img.async_grow(MiB, std::move(h)); });
    check("grow", ok, [&](auto h) { img.async_grow(2 * MiB, std::move(h)); });
    check("change backing file to none", ok,
          [&](auto h) { img.async_change_backing_file(std::string{}, std::nullopt, std::move(h)); });
    check("make empty", ok, [&](auto h) { img.async_make_empty(std::move(h)); });

    // QED image: immediate failures.
    check("read, unaligned", errc::unaligned_request, [&](auto h) { img.async_read_at(1, buf, std::move(h)); });
    check("write, unaligned", errc::unaligned_request,
          [&](auto h) { img.async_write_at(0, asio::buffer(b.data(), 100), std::move(h)); });
    check("write-zeroes, unaligned", errc::unaligned_request,
          [&](auto h) { img.async_write_zeroes(0, 100, std::move(h)); });
    check("block status, unaligned", errc::unaligned_request,
          [&](auto h) { img.async_block_status(3, 512, std::move(h)); });
    check("read, out of range", errc::out_of_range, [&](auto h) { img.async_read_at(2 * MiB, buf, std::move(h)); });
    check("write, out of range", errc::out_of_range, [&](auto h) { img.async_write_at(2 * MiB, buf, std::move(h)); });
    check("grow, shrink", errc::shrink_not_supported, [&](auto h) { img.async_grow(MiB, std::move(h)); });
    check("change backing file, missing", std::make_error_code(std::errc::no_such_file_or_directory),
          [&](auto h) { img.async_change_backing_file("missing.raw", image_format::raw, std::move(h)); });
    check("change backing file, name too long", errc::backing_name_too_long,
          [&](auto h) { img.async_change_backing_file(std::string(5000, 'x'), image_format::raw, std::move(h)); });

    // Read-only image.
    image ro;
    {
        auto o = e.open_opts();
        o.read_only = true;
        check("open read-only", ok, [&](auto h) {
            image::async_open(ex, "img.qed", o, [&ro, h = std::move(h)](std::error_code ec, image i) mutable {
                ro = std::move(i);
                std::move(h)(ec);
            });
        });
    }
    check("write on read-only", errc::read_only, [&](auto h) { ro.async_write_at(0, buf, std::move(h)); });
    check("write-zeroes on read-only", errc::read_only, [&](auto h) { ro.async_write_zeroes(0, 512, std::move(h)); });
    check("repair on read-only", errc::read_only,
          [&](auto h) { ro.async_check(check_options{check_options::repair::leaks}, std::move(h)); });
    check("grow on read-only", errc::read_only, [&](auto h) { ro.async_grow(4 * MiB, std::move(h)); });
    check.once("close read-only", ok, true, [&](auto h) { ro.async_close(std::move(h)); });

    // Closed image: everything fails at once.
    check.once("close", ok, false, [&](auto h) { img.async_close(std::move(h)); });
    check("read after close", errc::closed, [&](auto h) { img.async_read_at(0, buf, std::move(h)); });
    check("write after close", errc::closed, [&](auto h) { img.async_write_at(0, buf, std::move(h)); });
    check("write-zeroes after close", errc::closed, [&](auto h) { img.async_write_zeroes(0, 512, std::move(h)); });
    check("flush after close", errc::closed, [&](auto h) { img.async_flush(std::move(h)); });
    check("block status after close", errc::closed, [&](auto h) { img.async_block_status(0, 512, std::move(h)); });
    check("check after close", errc::closed, [&](auto h) { img.async_check(check_options{}, std::move(h)); });
    check("change backing after close", errc::closed,
          [&](auto h) { img.async_change_backing_file(std::string{}, std::nullopt, std::move(h)); });
    check("grow after close", errc::closed, [&](auto h) { img.async_grow(4 * MiB, std::move(h)); });
    check("make empty after close", errc::closed, [&](auto h) { img.async_make_empty(std::move(h)); });
    check("close after close", errc::closed, [&](auto h) { img.async_close(std::move(h)); });

    // Raw image.
    image raw;
    {
        auto o = e.open_opts();
        o.format = image_format::raw;
        check("open raw", ok, [&](auto h) {
            image::async_open(ex, "img.raw", o, [&raw, h = std::move(h)](std::error_code ec, image i) mutable {
                raw = std::move(i);
                std::move(h)(ec);
            });
        });
    }
    check("raw write", ok, [&](auto h) { raw.async_write_at(0, buf, std::move(h)); });
    check("raw read", ok, [&](auto h) { raw.async_read_at(0, buf, std::move(h)); });
    check("raw read, length 0", ok, [&](auto h) { raw.async_read_at(0, asio::buffer(b.data(), 0), std::move(h)); });
    check("raw write-zeroes", ok, [&](auto h) { raw.async_write_zeroes(0, 4096, std::move(h)); });
    check("raw write-zeroes, length 0", ok, [&](auto h) { raw.async_write_zeroes(0, 0, std::move(h)); });
    check("raw flush", ok, [&](auto h) { raw.async_flush(std::move(h)); });
    check("raw block status", ok, [&](auto h) { raw.async_block_status(0, 8192, std::move(h)); });
    check("raw grow", ok, [&](auto h) { raw.async_grow(2 * MiB, std::move(h)); });
    check("raw read, unaligned", errc::unaligned_request, [&](auto h) { raw.async_read_at(7, buf, std::move(h)); });
    check("raw write, out of range", errc::out_of_range,
          [&](auto h) { raw.async_write_at(2 * MiB, buf, std::move(h)); });
    check("raw check", std::nullopt, [&](auto h) { raw.async_check(check_options{}, std::move(h)); });
    check("raw make empty", std::nullopt, [&](auto h) { raw.async_make_empty(std::move(h)); });
    check.once("raw close", ok, true, [&](auto h) { raw.async_close(std::move(h)); });
    check("raw read after close", errc::closed, [&](auto h) { raw.async_read_at(0, buf, std::move(h)); });
    check("raw close after close", errc::closed, [&](auto h) { raw.async_close(std::move(h)); });

    // A handle without an image (default constructed, or from a failed
    // open): the handler's own executor runs it.
    image none;
    const auto on_ioc = [&](auto h) { return asio::bind_executor(e.ioc.get_executor(), std::move(h)); };
    check("read, no image", errc::closed, [&](auto h) { none.async_read_at(0, buf, on_ioc(std::move(h))); });
    check("write, no image", errc::closed, [&](auto h) { none.async_write_at(0, buf, on_ioc(std::move(h))); });
    check("flush, no image", errc::closed, [&](auto h) { none.async_flush(on_ioc(std::move(h))); });
    check("close, no image", errc::closed, [&](auto h) { none.async_close(on_ioc(std::move(h))); });
    check("check, no image", errc::closed, [&](auto h) { none.async_check(check_options{}, on_ioc(std::move(h))); });
    BOOST_TEST(check.checked > 100u);
}

BOOST_AUTO_TEST_SUITE_END()

// ===========================================================================
// executors
// ===========================================================================

BOOST_AUTO_TEST_SUITE(executors)

namespace {

enum class storage_kind { memory, threads, io_uring };
std::ostream& operator<<(std::ostream& os, storage_kind k) {
    return os << (k == storage_kind::memory ? "memory" : k == storage_kind::threads ? "threads" : "io_uring");
}

/// Everything a strand test counts, from any thread.
struct tally {
    std::atomic<unsigned> off_strand{0}, errors{0}, mismatches{0}, done{0};
    std::mutex m;
    std::string first_error;
    void error(const std::string& what, std::error_code ec) {
        ++errors;
        std::lock_guard lock(m);
        if (first_error.empty()) first_error = what + ": " + ec.message();
    }
};

}  // namespace

BOOST_DATA_TEST_CASE(handlers_run_on_the_image_strand,
                     data::make({storage_kind::memory, storage_kind::threads, storage_kind::io_uring}), kind) {
    if (kind == storage_kind::io_uring && !io_uring_available()) {
        BOOST_TEST_MESSAGE("io_uring not available here: skipped");
        return;
    }
    asio::io_context ioc(2);
    auto strand = asio::make_strand(ioc);
    memory_fs fs(strand);  // memory files complete on the strand as well
    std::optional<tmp_dir> dir;
    std::string path = "img.qed";
    if (kind != storage_kind::memory) {
        dir.emplace("api_strand");
        path = *dir / "img.qed";
    }
    const file_backend backend = kind == storage_kind::io_uring ? file_backend::io_uring : file_backend::threads;
    const layout l{4096, 1};
    const std::uint64_t size = 64 * MiB;  // 32 L2 tables
    const unsigned n = 300;

    tally t;
    std::promise<void> finished;
    auto on_strand = [&] {
        if (!strand.running_in_this_thread()) ++t.off_strand;
    };
    image img;
    std::vector<std::vector<std::uint8_t>> wbufs(n), rbufs(n);
    auto offset_of = [&](unsigned i) {
        return (std::uint64_t{i} * 7919 % (size / 4096 / 3)) * 3 * 4096 + (i % 4) * 512;
    };
    threads_running runner(ioc, 2);

    std::function<void()> phase_close = [&] {
        img.async_close([&](std::error_code ec) {
            on_strand();
            if (ec) t.error("close", ec);
            finished.set_value();
        });
    };
    std::function<void()> phase_check = [&] {
        img.async_block_status(0, size, [&](std::error_code ec, std::vector<extent>) {
            on_strand();
            if (ec) t.error("block status", ec);
            img.async_check(check_options{}, [&](std::error_code cec, check_result r) {
                on_strand();
                if (cec) t.error("check", cec);
                if (r.corruptions || r.leaks) t.error("check result", errc::corrupt_image);
                img.async_flush([&](std::error_code fec) {
                    on_strand();
                    if (fec) t.error("flush", fec);
                    phase_close();
                });
            });
        });
    };
    std::function<void()> phase_read = [&] {
        auto left = std::make_shared<unsigned>(n);
        for (unsigned i = 0; i < n; ++i) {
            rbufs[i].assign(wbufs[i].size(), 0xee);
            img.async_read_at(offset_of(i), asio::buffer(rbufs[i]), [&, i, left](std::error_code ec, std::size_t) {
                on_strand();
                ++t.done;
                if (ec) t.error("read", ec);
                if (rbufs[i] != wbufs[i]) ++t.mismatches;
                if (--*left == 0) phase_check();
            });
        }
    };
    std::function<void()> phase_write = [&] {
        auto left = std::make_shared<unsigned>(n);
        for (unsigned i = 0; i < n; ++i) {
            wbufs[i] = pattern(offset_of(i), 4096 + 512 * (i % 3), i + 1);
            img.async_write_at(offset_of(i), asio::buffer(wbufs[i]), [&, left](std::error_code ec, std::size_t) {
                on_strand();
                ++t.done;
                if (ec) t.error("write", ec);
                if (--*left == 0) phase_read();
            });
        }
    };

    create_options co;
    co.size = size;
    co.cluster_size = l.cs;
    co.table_size = l.ts;
    co.backend = backend;
    open_options oo;
    oo.backend = backend;
    oo.l2_cache_size = 2;
    if (kind == storage_kind::memory) co.opener = oo.opener = fs.opener();
    // Started from the test's thread: the library moves onto the strand.
    image::async_create(strand, path, co, [&](std::error_code ec) {
        on_strand();
        if (ec) {
            t.error("create", ec);
            return finished.set_value();
        }
        image::async_open(strand, path, oo, [&](std::error_code oec, image i) {
            on_strand();
            if (oec) {
                t.error("open", oec);
                return finished.set_value();
            }
            img = std::move(i);
            phase_write();
        });
    });
    auto f = finished.get_future();
    BOOST_TEST_REQUIRE(ready(f, seconds(60)), "hang: " << t.done.load() << " of " << 2 * n << " requests completed");
    BOOST_TEST(runner.finish(), "work left pending after close");
    BOOST_TEST(t.errors.load() == 0u, t.first_error);
    BOOST_TEST(t.off_strand.load() == 0u, "handlers ran off the image's strand");
    BOOST_TEST(t.mismatches.load() == 0u);
    BOOST_TEST(t.done.load() == 2 * n);
}

BOOST_AUTO_TEST_CASE(requests_from_another_thread_complete_on_the_strand) {
    // The io_context runs on two threads; the test's own thread starts
    // requests on an image that lives on a strand.
    asio::io_context ioc(2);
    auto strand = asio::make_strand(ioc);
    memory_fs fs(strand);
    threads_running runner(ioc, 2);
    create_options co;
    co.size = 16 * MiB;
    co.cluster_size = 4096;
    co.table_size = 1;
    co.opener = fs.opener();
    auto fc = image::async_create(strand, "img.qed", co, asio::use_future);
    BOOST_TEST_REQUIRE(ready(fc));
    BOOST_TEST_REQUIRE(!thrown(fc));
    open_options oo;
    oo.opener = fs.opener();
    oo.l2_cache_size = 1;
    auto fo =
        image::async_open(strand, "img.qed", oo,
                          asio::use_future([](boost::system::error_code ec, image i) { return std::tuple(ec, i); }));
    BOOST_TEST_REQUIRE(ready(fo));
    auto [oec, img] = fo.get();
    BOOST_TEST_REQUIRE(!oec);

    const unsigned n = 200;
    std::atomic<unsigned> done{0}, off{0}, errors{0};
    std::vector<std::vector<std::uint8_t>> bufs(n);
    for (unsigned i = 0; i < n; ++i) {
        bufs[i] = pattern(i * 64 * KiB, 4096, i + 1);
        img.async_write_at(i * 64 * KiB, asio::buffer(bufs[i]), [&](std::error_code ec, std::size_t) {
            if (!strand.running_in_this_thread()) ++off;
            if (ec) ++errors;
            ++done;
        });
    }
    const auto deadline = std::chrono::steady_clock::now() + seconds(30);
    while (done.load() < n && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(milliseconds(2));
    BOOST_TEST_REQUIRE(done.load() == n, "hang");
    BOOST_TEST(off.load() == 0u);
    BOOST_TEST(errors.load() == 0u);
    for (unsigned i = 0; i < n; i += 17) {
        std::vector<std::uint8_t> r(4096);
        auto fr = img.async_read_at(i * 64 * KiB, asio::buffer(r), asio::use_future);
        BOOST_TEST_REQUIRE(ready(fr));
        BOOST_TEST(!thrown(fr));
        BOOST_TEST((r == bufs[i]));
    }
    auto fcl = img.async_close(asio::use_future);
    BOOST_TEST_REQUIRE(ready(fcl));
    BOOST_TEST(!thrown(fcl));
    BOOST_TEST(runner.finish(), "work left pending after close");
}

BOOST_AUTO_TEST_CASE(bound_handlers_run_on_their_own_strand) {
    asio::io_context ioc(2);
    auto strand = asio::make_strand(ioc);
    auto other = asio::make_strand(ioc);
    memory_fs fs(strand);
    threads_running runner(ioc, 2);
    create_options co;
    co.size = 4 * MiB;
    co.cluster_size = 4096;
    co.table_size = 1;
    co.opener = fs.opener();
    open_options oo;
    oo.opener = fs.opener();

    // Run one operation with a handler bound to `other`; true when it ran there.
    auto run_bound = [&](const std::string& what, auto start) {
        auto p = std::make_shared<std::promise<std::pair<bool, std::error_code>>>();
        auto f = p->get_future();
        start(asio::bind_executor(other, [p, &other](std::error_code ec, auto&&...) {
            p->set_value({other.running_in_this_thread(), ec});
        }));
        if (!ready(f, seconds(10))) {
            BOOST_TEST(false, what << ": never completed");
            return std::error_code{};
        }
        auto [there, ec] = f.get();
        BOOST_TEST(there, what << ": the handler did not run on its bound strand");
        return ec;
    };
    BOOST_TEST(!run_bound("create", [&](auto h) { image::async_create(strand, "img.qed", co, std::move(h)); }));
    image img;
    BOOST_TEST(!run_bound("open", [&](auto h) {
        image::async_open(strand, "img.qed", oo,
                          asio::bind_executor(asio::get_associated_executor(h),
                                              [&img, h = std::move(h)](std::error_code ec, image i) mutable {
                                                  img = std::move(i);
                                                  std::move(h)(ec);
                                              }));
    }));
    BOOST_TEST_REQUIRE(img.is_open());
    std::vector<std::uint8_t> b = pattern(0, 8192, 4);
    BOOST_TEST(!run_bound("write", [&](auto h) { img.async_write_at(0, asio::buffer(b), std::move(h)); }));
    BOOST_TEST(!run_bound("read", [&](auto h) { img.async_read_at(0, asio::buffer(b), std::move(h)); }));
    BOOST_TEST(!run_bound("read of a hole", [&](auto h) { img.async_read_at(MiB, asio::buffer(b), std::move(h)); }));
    BOOST_TEST(!run_bound("write-zeroes", [&](auto h) { img.async_write_zeroes(64 * KiB, 8192, std::move(h)); }));
    BOOST_TEST(!run_bound("flush", [&](auto h) { img.async_flush(std::move(h)); }));
    BOOST_TEST(!run_bound("block status", [&](auto h) { img.async_block_status(0, MiB, std::move(h)); }));
    BOOST_TEST(!run_bound("check", [&](auto h) { img.async_check(check_options{}, std::move(h)); }));
    BOOST_TEST(!run_bound("grow", [&](auto h) { img.async_grow(8 * MiB, std::move(h)); }));
    BOOST_TEST((run_bound("unaligned read", [&](auto h) { img.async_read_at(1, asio::buffer(b), std::move(h)); }) ==
                errc::unaligned_request));
    BOOST_TEST(!run_bound("close", [&](auto h) { img.async_close(std::move(h)); }));
    BOOST_TEST((run_bound("read after close", [&](auto h) { img.async_read_at(0, asio::buffer(b), std::move(h)); }) ==
                errc::closed));
    BOOST_TEST(runner.finish(), "work left pending after close");
}

BOOST_AUTO_TEST_CASE(a_handler_bound_to_another_io_context_waits_for_it) {
    // Single-threaded and deterministic: the handler's associated executor
    // belongs to a second io_context, so running the image's io_context
    // alone never invokes it.
    mem_env e;
    asio::io_context other;
    e.create("img.qed", e.create_opts(MiB, {4096, 1}));
    auto img = e.open("img.qed");
    std::vector<std::uint8_t> b = pattern(0, 4096, 5);
    bool called = false, on_other = false;
    img.img.async_write_at(0, asio::buffer(b),
                           asio::bind_executor(other.get_executor(), [&](std::error_code ec, std::size_t) {
                               BOOST_TEST(!ec);
                               called = true;
                               on_other = other.get_executor().running_in_this_thread();
                           }));
    e.ioc.restart();
    e.ioc.run_for(milliseconds(100));
    BOOST_TEST(!called, "the handler ran on the image's io_context instead of its own");
    other.run();
    BOOST_TEST(called);
    BOOST_TEST(on_other);
    expect_pattern(img, 0, 4096, 5, "written");
    BOOST_TEST_REQUIRE(!img.close());
}

BOOST_AUTO_TEST_SUITE_END()

// ===========================================================================
// handles
// ===========================================================================

BOOST_AUTO_TEST_SUITE(handles)

BOOST_AUTO_TEST_CASE(an_empty_handle_fails_on_the_handlers_executor_and_lets_it_go) {
    // A handle without an image answers errc::closed on the handler's own
    // executor, keeps that io_context busy until then (run() returns only
    // after the handler) and holds nothing of it afterwards: destroying the
    // io_context at once must be safe. (It once released the io_context's
    // work from a system thread, after the io_context was gone.)
    for (int i = 0; i < 300; ++i) {
        auto ioc = std::make_unique<asio::io_context>();
        image empty;
        bool called = false, on_ioc = false;
        std::error_code got;
        auto ex = ioc->get_executor();
        empty.async_check(check_options{}, asio::bind_executor(ex, [&](std::error_code ec, check_result) {
                              called = true;
                              got = ec;
                              on_ioc = ex.running_in_this_thread();
                          }));
        BOOST_TEST_REQUIRE(!called, "the handler ran inside the initiating call");
        if (i % 2) {
            ioc->run();
            BOOST_TEST_REQUIRE(called, "run() returned before the handler ran");
        } else {
            // Like an application that runs its io_context until its own
            // condition holds, then destroys it.
            while (!called && ioc->run_one() != 0) {
            }
            BOOST_TEST_REQUIRE(called, "run_one() ran out of work before the handler ran");
        }
        BOOST_TEST_REQUIRE((got == errc::closed), got.message());
        BOOST_TEST_REQUIRE(on_ioc);
        ioc.reset();
    }
}

BOOST_AUTO_TEST_CASE(closing_through_one_copy_closes_all) {
    mem_env e;
    e.create("img.qed", e.create_opts(MiB, {4096, 1}));
    auto s = e.open("img.qed");
    image copy = s.img;
    BOOST_TEST_REQUIRE(!s.close());
    BOOST_TEST(!copy.is_open());
    BOOST_TEST(!static_cast<bool>(copy));
    sync_image c{e.ioc, copy};
    std::vector<std::uint8_t> b(512);
    BOOST_TEST((c.read(0, b.data(), b.size()) == errc::closed));
    BOOST_TEST((c.close() == errc::closed));
}

BOOST_DATA_TEST_CASE(a_second_close_returns_closed, data::make({false, true}), concurrent) {
    for (auto fmt : {image_format::qed, image_format::raw}) {
        BOOST_TEST_CONTEXT((fmt == image_format::qed ? "qed" : "raw") << (concurrent ? ", both at once" : "")) {
            mem_env e;
            auto co = e.create_opts(MiB);
            co.format = fmt;
            e.create("img", co);
            auto img = e.open("img");
            if (!concurrent) {
                BOOST_TEST(!img.close());
                BOOST_TEST((img.close() == errc::closed));
            } else {
                std::error_code first = errc::invalid_argument, second = errc::invalid_argument;
                int done = 0;
                img.img.async_close([&](std::error_code ec) {
                    first = ec;
                    ++done;
                });
                img.img.async_close([&](std::error_code ec) {
                    second = ec;
                    ++done;
                });
                BOOST_TEST_REQUIRE(run_until(
                    e.ioc, [&] { return done == 2; }, seconds(10)));
                BOOST_TEST(!first, first.message());
                BOOST_TEST((second == errc::closed), second.message());
            }
        }
    }
}

BOOST_AUTO_TEST_SUITE_END()

// ===========================================================================
// open failures
// ===========================================================================

BOOST_AUTO_TEST_SUITE(open_failures)

namespace {

struct failed_open {
    std::error_code ec;
    bool handle_open = true;
    std::vector<std::string> log;
};

failed_open try_open(mem_env& e, const std::string& name, open_options o) {
    failed_open r;
    o.log = [&r](std::string_view line) { r.log.emplace_back(line); };
    auto [ec, img] = e.try_open(name, std::move(o));
    r.ec = ec;
    r.handle_open = img.img.is_open();
    return r;
}

void expect_failure(const failed_open& r, std::error_code want, const std::vector<std::string>& names) {
    BOOST_TEST((r.ec == want), "got " << r.ec.message() << ", want " << want.message());
    BOOST_TEST(!r.handle_open);
    BOOST_TEST(!r.log.empty(), "no log line");
    for (const auto& n : names) {
        const bool named = std::any_of(r.log.begin(), r.log.end(),
                                       [&](const std::string& l) { return l.find(n) != std::string::npos; });
        BOOST_TEST(named, "no log line names " << n);
    }
    for (const auto& l : r.log) BOOST_TEST_MESSAGE("log: " << l);
}

}  // namespace

BOOST_AUTO_TEST_CASE(each_failure_has_its_error_and_a_log_line_naming_the_file) {
    mem_env e;
    const auto enoent = std::make_error_code(std::errc::no_such_file_or_directory);
    BOOST_TEST_CONTEXT("missing file") {
        expect_failure(try_open(e, "missing.qed", e.open_opts()), enoent, {"missing.qed"});
    }
    BOOST_TEST_CONTEXT("not a QED file, format forced") {
        e.make_raw("plain.raw", MiB, 1);
        auto o = e.open_opts();
        o.format = image_format::qed;
        expect_failure(try_open(e, "plain.raw", o), errc::bad_magic, {"plain.raw"});
    }
    BOOST_TEST_CONTEXT("file shorter than a header") {
        e.put("tiny.qed", 0, std::vector<std::uint8_t>{'Q', 'E', 'D', 0, 1, 2, 3, 4, 5, 6});
        auto o = e.open_opts();
        o.format = image_format::qed;
        expect_failure(try_open(e, "tiny.qed", o), errc::file_too_small, {"tiny.qed"});
    }
    BOOST_TEST_CONTEXT("unknown feature bits") {
        e.create("feat.qed", e.create_opts(MiB));
        auto h = e.hdr("feat.qed");
        h.features |= 0x8;
        e.set_hdr("feat.qed", h);
        expect_failure(try_open(e, "feat.qed", e.open_opts()), errc::unknown_features, {"feat.qed"});
    }
    BOOST_TEST_CONTEXT("invalid cluster size in the header") {
        e.create("cs.qed", e.create_opts(MiB));
        auto h = e.hdr("cs.qed");
        h.cluster_size = 4096 + 512;
        e.set_hdr("cs.qed", h);
        expect_failure(try_open(e, "cs.qed", e.open_opts()), errc::invalid_cluster_size, {"cs.qed"});
    }
    BOOST_TEST_CONTEXT("L1 table past the end of the file") {
        e.create("short.qed", e.create_opts(MiB));
        e.fs.storage("short.qed")->resize(65536 + 4096);
        expect_failure(try_open(e, "short.qed", e.open_opts()), errc::l1_table_past_eof, {"short.qed"});
    }
    BOOST_TEST_CONTEXT("a format we refuse to read as raw") {
        std::vector<std::uint8_t> qcow2(4096, 0);
        qcow2[0] = 'Q';
        qcow2[1] = 'F';
        qcow2[2] = 'I';
        qcow2[3] = 0xfb;
        e.put("disk.qcow2", 0, qcow2);
        expect_failure(try_open(e, "disk.qcow2", e.open_opts()), errc::unknown_format, {"disk.qcow2", "qcow2"});
    }
    BOOST_TEST_CONTEXT("missing backing file") {
        auto co = e.create_opts(MiB);
        co.backing_file = "gone.raw";
        co.backing_format = image_format::raw;
        e.create("orphan.qed", co);
        expect_failure(try_open(e, "orphan.qed", e.open_opts()), enoent, {"orphan.qed", "gone.raw"});
        // Read-only opens need the backing file just as much.
        auto ro = e.open_opts();
        ro.read_only = true;
        expect_failure(try_open(e, "orphan.qed", ro), enoent, {"gone.raw"});
    }
    BOOST_TEST_CONTEXT("backing loop") {
        e.create("loop_a.qed", e.create_opts(MiB));
        e.create("loop_b.qed", e.create_opts(MiB));
        // a -> b -> a: write the backing names by changing them on open images.
        {
            auto a = e.open("loop_a.qed");
            BOOST_TEST_REQUIRE(!a.change_backing_file("loop_b.qed", image_format::qed));
            BOOST_TEST_REQUIRE(!a.close());
        }
        auto ob = e.open_opts();
        ob.open_backing = false;
        {
            auto b = e.open("loop_b.qed", ob);
            BOOST_TEST_REQUIRE(!b.change_backing_file("loop_a.qed", image_format::qed));
            BOOST_TEST_REQUIRE(!b.close());
        }
        expect_failure(try_open(e, "loop_a.qed", e.open_opts()), errc::backing_loop, {"loop_a.qed"});
    }
    BOOST_TEST_CONTEXT("backing chain too deep") {
        e.make_raw("d0.raw", MiB, 1);
        auto c1 = e.create_opts(MiB);
        c1.backing_file = "d0.raw";
        c1.backing_format = image_format::raw;
        e.create("d1.qed", c1);
        auto c2 = e.create_opts(MiB);
        c2.backing_file = "d1.qed";
        e.create("d2.qed", c2);
        auto o = e.open_opts();
        o.max_backing_depth = 1;
        expect_failure(try_open(e, "d2.qed", o), errc::backing_chain_too_deep, {"d0.raw"});
        o.max_backing_depth = 2;
        auto [ok, img] = e.try_open("d2.qed", o);
        BOOST_TEST(!ok, "two levels are allowed: " << ok.message());
        if (!ok) BOOST_TEST(!img.close());
    }
}

BOOST_AUTO_TEST_CASE(real_files_missing_and_outside_the_allowed_directory) {
    tmp_dir dir("api_open");
    asio::io_context ioc;
    std::vector<std::string> log;
    open_options o;
    o.log = [&log](std::string_view line) { log.emplace_back(line); };
    const std::string missing = dir / "nope.qed";
    auto [ec, img] = qed::test::open(ioc, missing, o);
    BOOST_TEST((ec == std::errc::no_such_file_or_directory), ec.message());
    BOOST_TEST(!img.img.is_open());
    BOOST_TEST(std::any_of(log.begin(), log.end(),
                           [&](const std::string& l) { return l.find(missing) != std::string::npos; }));

    std::filesystem::create_directories(dir / "sub");
    const std::vector<std::uint8_t> raw(MiB, 0x3c);
    pwrite_file(dir / "outside.raw", 0, raw.data(), raw.size());
    create_options co;
    co.size = MiB;
    co.backing_file = "../outside.raw";
    co.backing_format = image_format::raw;
    BOOST_TEST_REQUIRE(!qed::test::create(ioc, dir / "sub/top.qed", co));
    log.clear();
    o.allowed_backing_dir = dir / "sub";
    auto [aec, aimg] = qed::test::open(ioc, dir / "sub/top.qed", o);
    BOOST_TEST((aec == errc::backing_not_allowed), aec.message());
    BOOST_TEST(std::any_of(log.begin(), log.end(),
                           [](const std::string& l) { return l.find("outside.raw") != std::string::npos; }));
    // Without the confinement the same chain opens.
    o.allowed_backing_dir.reset();
    auto [okec, okimg] = qed::test::open(ioc, dir / "sub/top.qed", o);
    BOOST_TEST_REQUIRE(!okec, okec.message());
    std::vector<std::uint8_t> got(4096);
    BOOST_TEST(!okimg.read(0, got.data(), got.size()));
    BOOST_TEST(std::all_of(got.begin(), got.end(), [](std::uint8_t x) { return x == 0x3c; }));
    BOOST_TEST(!okimg.close());
}

BOOST_AUTO_TEST_SUITE_END()

// ===========================================================================
// real-file backends
// ===========================================================================

BOOST_AUTO_TEST_SUITE(backends)

namespace {

struct backend_case {
    file_backend backend;
    bool direct;
};
std::ostream& operator<<(std::ostream& os, const backend_case& c) {
    return os << (c.backend == file_backend::threads ? "threads" : "io_uring") << (c.direct ? " O_DIRECT" : "");
}
const backend_case backend_cases[] = {{file_backend::threads, false},
                                      {file_backend::threads, true},
                                      {file_backend::io_uring, false},
                                      {file_backend::io_uring, true}};

}  // namespace

BOOST_DATA_TEST_CASE(real_files_with_unaligned_user_memory, data::make(backend_cases), c) {
    if (c.backend == file_backend::io_uring && !io_uring_available()) {
        BOOST_TEST_MESSAGE("io_uring not available here: skipped");
        return;
    }
    tmp_dir dir("api_backend");
    const std::string path = dir / "img.qed";
    asio::io_context ioc;
    create_options co;
    co.size = 16 * MiB;
    co.backend = c.backend;
    BOOST_TEST_REQUIRE(!qed::test::create(ioc, path, co));
    open_options oo;
    oo.backend = c.backend;
    oo.direct = c.direct;
    auto [ec, img] = qed::test::open(ioc, path, oo);
    BOOST_TEST_REQUIRE(!ec, ec.message());
    BOOST_TEST(img.img.info().backend == (c.backend == file_backend::threads ? "threads" : "io_uring"));

    // User memory at odd addresses, split into odd-sized pieces.
    const std::uint64_t c64 = 64 * KiB;
    std::vector<std::uint8_t> store(3 * c64 + 64);
    auto sg_write = [&](std::uint64_t off, std::size_t len, unsigned seed) {
        std::uint8_t* p = store.data() + 1;
        const auto want = pattern(off, len, seed);
        std::memcpy(p, want.data(), len);
        const std::size_t first = std::min<std::size_t>(len, 1000);
        std::vector<asio::const_buffer> bufs{asio::const_buffer(p, first)};
        if (len > first) bufs.emplace_back(p + first, len - first);
        auto [wec, wn] =
            await<std::error_code, std::size_t>(ioc, [&](auto h) { img.img.async_write_at(off, bufs, std::move(h)); });
        BOOST_TEST(!wec, "write " << off << "+" << len << ": " << wec.message());
        BOOST_TEST(wn == len);
    };
    auto sg_check = [&](std::uint64_t off, std::size_t len, auto expected) {
        std::uint8_t* p = store.data() + 3;
        std::memset(p, 0xee, len);
        const std::size_t first = std::min<std::size_t>(len, 777);
        std::vector<asio::mutable_buffer> bufs{asio::mutable_buffer(p, first)};
        if (len > first) bufs.emplace_back(p + first, len - first);
        auto [rec, rn] =
            await<std::error_code, std::size_t>(ioc, [&](auto h) { img.img.async_read_at(off, bufs, std::move(h)); });
        BOOST_TEST(!rec, "read " << off << "+" << len << ": " << rec.message());
        BOOST_TEST(rn == len);
        long bad = -1;
        for (std::size_t i = 0; i < len && bad < 0; ++i)
            if (p[i] != expected(off + i)) bad = static_cast<long>(i);
        BOOST_TEST(bad == -1, "read " << off << "+" << len << " wrong at +" << bad);
    };
    sg_write(512, 4096 + 512, 1);          // allocating, partial cluster
    sg_write(3 * c64, c64, 2);             // a whole cluster
    sg_write(3 * c64 + 4096, 3 * 512, 3);  // in place, unaligned to 4K
    sg_write(5 * c64 - 512, 1024, 4);      // across two clusters
    BOOST_TEST(!img.write_zeroes(3 * c64 + 8192, 4096));
    BOOST_TEST(!img.flush());
    auto expected = [](std::uint64_t pos) -> std::uint8_t {
        const std::uint64_t k = 64 * KiB;
        if (pos >= 512 && pos < 512 + 4096 + 512) return pattern_byte(pos, 1);
        if (pos >= 3 * k + 4096 && pos < 3 * k + 4096 + 1536) return pattern_byte(pos, 3);
        if (pos >= 3 * k + 8192 && pos < 3 * k + 12288) return 0;
        if (pos >= 3 * k && pos < 4 * k) return pattern_byte(pos, 2);
        if (pos >= 5 * k - 512 && pos < 5 * k + 512) return pattern_byte(pos, 4);
        return 0;
    };
    sg_check(0, static_cast<std::size_t>(c64), expected);
    sg_check(3 * c64, static_cast<std::size_t>(c64), expected);
    sg_check(5 * c64 - 1024, 2048, expected);
    sg_check(7 * c64 + 512, 1536, expected);
    expect_clean(img);
    BOOST_TEST_REQUIRE(!img.close());

    // The same bytes through a buffered, default-backend open.
    auto [rec, again] = qed::test::open(ioc, path, open_options{});
    BOOST_TEST_REQUIRE(!rec, rec.message());
    std::vector<std::uint8_t> all(6 * c64);
    BOOST_TEST_REQUIRE(!again.read(0, all.data(), all.size()));
    long bad = -1;
    for (std::size_t i = 0; i < all.size() && bad < 0; ++i)
        if (all[i] != expected(i)) bad = static_cast<long>(i);
    BOOST_TEST(bad == -1, "reopened image wrong at " << bad);
    BOOST_TEST_REQUIRE(!again.close());
    // On disk: qemu's layout (first data cluster at 0x50000, its L2 table at 0x60000).
    const auto l1 = pread_file(path, 0x10000, 8);
    BOOST_TEST((l1[0] == 0 && l1[1] == 0 && l1[2] == 6), "L1[0] should be 0x60000");
}

BOOST_AUTO_TEST_SUITE_END()

// ===========================================================================
// dropped handles (last: a failure here may take the process down)
// ===========================================================================

BOOST_AUTO_TEST_SUITE(dropped_handles)

BOOST_AUTO_TEST_CASE(copies_share_the_image_and_drops_keep_operations_alive) {
    mem_env e;
    e.create("img.qed", e.create_opts(16 * MiB, {4096, 1}));
    {
        auto w = e.open("img.qed");
        write_pattern(w, 0, 64 * KiB, 1);
        BOOST_TEST_REQUIRE(!w.close());
    }
    image a = e.open("img.qed").img;
    image b = a;  // a copy
    BOOST_TEST(a.is_open());
    BOOST_TEST(b.is_open());
    BOOST_TEST(a.device() == b.device());
    std::weak_ptr<detail::device> weak = a.device();

    const unsigned n = 64;
    std::vector<std::vector<std::uint8_t>> wbufs(n), rbufs(n);
    unsigned done = 0, errors = 0, mismatches = 0;
    for (unsigned i = 0; i < n; ++i) {
        wbufs[i] = pattern(MiB + i * 64 * KiB, 4096, 10 + i);
        a.async_write_at(MiB + i * 64 * KiB, asio::buffer(wbufs[i]), [&](std::error_code ec, std::size_t) {
            errors += ec ? 1 : 0;
            ++done;
        });
        rbufs[i].resize(4096);
        b.async_read_at(i % 56 * 1024, asio::buffer(rbufs[i]),
                        [&, i](std::error_code ec, std::size_t) {  // inside [0, 64K)
                            errors += ec ? 1 : 0;
                            mismatches += first_mismatch(rbufs[i], 0, 4096, i % 56 * 1024, 1) == -1 ? 0 : 1;
                            ++done;
                        });
    }
    bool flushed = false;
    a.async_flush([&](std::error_code ec) {
        errors += ec ? 1 : 0;
        flushed = true;
    });
    // Drop every handle while all of it is in flight.
    a = image{};
    b = image{};
    BOOST_TEST(!a.is_open());
    BOOST_TEST_REQUIRE(run_until(
                           e.ioc, [&] { return done == 2 * n && flushed; }, seconds(30)),
                       "operations of a dropped image never completed");
    BOOST_TEST(errors == 0u);
    BOOST_TEST(mismatches == 0u);
    // Nothing holds the image once its operations (and any background work
    // they started) are done.
    BOOST_TEST(run_until(
                   e.ioc, [&] { return weak.expired(); }, seconds(30)),
               "the image outlived its handles and operations");

    // Without a flush after the writes completed, each one is either on disk
    // or not (the image was never closed); nothing else may be there.
    auto again = e.open("img.qed");
    expect_pattern(again, 0, 64 * KiB, 1, "data from before");
    for (unsigned i = 0; i < n; ++i) {
        const std::uint64_t off = MiB + i * 64 * KiB;
        const auto got = read_bytes(again, off, 4096);
        const bool old_bytes = first_mismatch(got, 0, 4096, off, 0) == -1;
        const bool new_bytes = first_mismatch(got, 0, 4096, off, 10 + i) == -1;
        BOOST_TEST((old_bytes || new_bytes), "write " << i << " left neither its old nor its new bytes");
    }
    expect_clean(again);
    BOOST_TEST_REQUIRE(!again.close());
}

BOOST_AUTO_TEST_SUITE_END()
