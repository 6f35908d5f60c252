// SPDX-License-Identifier: BSL-1.0
// QEMU's throttle groups and throttle filter: limits checked as QEMU checks
// them; requests through a filter take at least the time the group's
// leaky buckets imply (measured with a steady clock, a lower bound only,
// so the tests stay deterministic on a loaded machine), for requests,
// bytes, bursts and iops-size; filters of one group share its budget; data
// passes through unchanged; a throttle node in a json: name joins the
// group open_options names.
#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <boost/test/unit_test.hpp>
#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "qed/error.hpp"
#include "qed/image.hpp"
#include "qed/throttle.hpp"
#include "support/sync.hpp"

namespace asio = boost::asio;
using namespace qed;
using qed::test::await;
using clock_type = std::chrono::steady_clock;

namespace {

std::shared_ptr<throttle_group> group(const std::vector<std::pair<std::string, std::uint64_t>>& limits,
                                      const std::string& name = "g") {
    throttle_config c;
    std::string why;
    for (const auto& [k, v] : limits) BOOST_TEST_REQUIRE(c.set(k, v, why), why);
    auto g = throttle_group::create(name, c, why);
    BOOST_TEST_REQUIRE(g != nullptr, why);
    return g;
}

struct fixture {
    asio::io_context ioc;

    std::shared_ptr<block_file> file(std::shared_ptr<throttle_group> g, char fill = 'd') {
        auto storage = std::make_shared<memory_storage>();
        storage->resize(8 << 20);
        storage->write(0, std::vector<std::byte>(8 << 20, std::byte(fill)));
        return make_throttle_file(make_memory_file(ioc.get_executor(), storage), std::move(g));
    }

    /// Start `n` requests of `bytes` on each file at once (reads, or
    /// writes) and run until all completed; the seconds that took.
    double burst(const std::vector<std::shared_ptr<block_file>>& files, int n, std::size_t bytes, bool write = false,
                 int* problems = nullptr) {
        std::vector<std::vector<char>> bufs;
        int left = 0, failed = 0;
        const auto t0 = clock_type::now();
        for (auto& f : files) {
            for (int i = 0; i < n; ++i) {
                bufs.emplace_back(bytes, 'w');
                ++left;
                auto done = [&](boost::system::error_code ec, std::size_t got) {
                    if (ec || got != bytes) ++failed;
                    --left;
                };
                if (write) {
                    const asio::const_buffer b(bufs.back().data(), bytes);
                    f->async_write_at(std::uint64_t(i) * bytes, {&b, 1}, done);
                } else {
                    const asio::mutable_buffer b(bufs.back().data(), bytes);
                    f->async_read_at(std::uint64_t(i) * bytes, {&b, 1}, done);
                }
            }
        }
        ioc.restart();
        while (left > 0 && ioc.run_one()) {
        }
        if (problems) {  // (another thread: Boost.Test's checks belong to the main one)
            *problems = left + failed;
        } else {
            BOOST_TEST(left == 0);
            BOOST_TEST(failed == 0);
        }
        return std::chrono::duration<double>(clock_type::now() - t0).count();
    }

    /// `n` requests one after the other (each started when the one before
    /// completed); the seconds that took.
    double one_by_one(block_file& f, int n, std::size_t bytes) {
        std::vector<char> buf(bytes);
        const auto t0 = clock_type::now();
        for (int i = 0; i < n; ++i) {
            const asio::mutable_buffer b(buf.data(), bytes);
            auto [ec, got] = await<std::error_code, std::size_t>(ioc, [&](auto h) {
                f.async_read_at(0, {&b, 1}, io_handler(std::move(h)));
            });
            BOOST_TEST(!ec);
        }
        return std::chrono::duration<double>(clock_type::now() - t0).count();
    }
};

/// When the last of `n` requests of `units` each may start at the earliest,
/// with an average rate `avg` and a bucket of `bucket` units (QEMU's: avg/10
/// without a burst rate): the bucket has to leak (n - 1) * units - bucket.
double earliest(int n, double units, double avg, double bucket) {
    return ((n - 1) * units - bucket) / avg;
}

// The margin for timer and clock granularity: the bounds are lower bounds.
constexpr double slack = 0.97;

}  // namespace

BOOST_AUTO_TEST_SUITE(throttle)

BOOST_AUTO_TEST_CASE(limits_are_checked_as_qemu_checks_them) {
    const std::vector<std::pair<std::vector<std::pair<std::string, std::uint64_t>>, std::string>> cases = {
        {{{"iops-total", 10}, {"iops-read", 5}},
         "bps/iops/max total values and read/write values cannot be used at the same time"},
        {{{"bps-total-max", 10}, {"bps-write-max", 5}, {"bps-total", 1}, {"bps-write", 1}},
         "bps/iops/max total values and read/write values cannot be used at the same time"},
        {{{"iops-size", 4096}}, "iops size requires an iops value to be set"},
        {{{"bps-read", 1000000000000001}}, "bps/iops/max values must be within [0, 1000000000000000]"},
        {{{"iops-total", 10}, {"iops-total-max-length", 0}}, "the burst length cannot be 0"},
        {{{"iops-total", 10}, {"iops-total-max-length", 2}}, "burst length set without burst rate"},
        {{{"iops-total-max", 10}}, "bps_max/iops_max require corresponding bps/iops values"},
        {{{"iops-total", 10}, {"iops-total-max", 5}}, "bps_max/iops_max cannot be lower than bps/iops"},
        {{{"bps-total", 1000}, {"bps-total-max", 1000000000000}, {"bps-total-max-length", 100000}},
         "burst length too high for this burst rate"},
    };
    for (const auto& [limits, want] : cases) {
        throttle_config c;
        std::string why;
        for (const auto& [k, v] : limits) BOOST_TEST_REQUIRE(c.set(k, v, why), why);
        BOOST_TEST(c.invalid() == want);
        BOOST_TEST(throttle_group::create("g", c, why) == nullptr);
        BOOST_TEST(why == want);
    }
    throttle_config c;
    std::string why;
    BOOST_TEST(!c.set("iops-totally", 1, why));
    BOOST_TEST(!c.set("iops-total-max-length", 1ull << 32, why));
    BOOST_TEST(why == "iops-total-max-length value must be in the range [0, 4294967295]");
    BOOST_TEST(c.set("bps-write-max-length", 7, why));
    BOOST_TEST(c.buckets[static_cast<unsigned>(throttle_bucket::bps_write)].burst_length == 7u);
    BOOST_TEST(throttle_config{}.invalid().empty());  // no limits at all is valid
}

// iops-total=100: QEMU lets avg/10 = 10 requests go at once, then one every
// 10 ms; 40 requests started together need at least 0.29 s.
BOOST_FIXTURE_TEST_CASE(requests_at_once_wait_for_the_iops_limit, fixture) {
    auto f = file(group({{"iops-total", 100}}));
    const double t = burst({f}, 40, 512);
    BOOST_TEST(t >= slack * earliest(40, 1, 100, 10), t << " s");
}

BOOST_FIXTURE_TEST_CASE(requests_one_by_one_wait_for_the_iops_limit, fixture) {
    auto f = file(group({{"iops-read", 100}}));
    const double t = one_by_one(*f, 30, 4096);
    BOOST_TEST(t >= slack * earliest(30, 1, 100, 10), t << " s");
}

// bps-write=1 MiB/s: 8 writes of 128 KiB need (7 * 128 KiB - 1 MiB / 10) / 1 MiB s.
BOOST_FIXTURE_TEST_CASE(writes_wait_for_the_bps_limit, fixture) {
    auto f = file(group({{"bps-write", 1 << 20}}));
    const double t = burst({f}, 8, 128 << 10, /*write=*/true);
    BOOST_TEST(t >= slack * earliest(8, 128 << 10, 1 << 20, (1 << 20) / 10.0), t << " s");
}

// With a burst rate the bucket holds max * burst-length requests: 40 go at
// once, then one every 1/20 s.
BOOST_FIXTURE_TEST_CASE(a_burst_then_the_average, fixture) {
    auto f = file(group({{"iops-total", 20}, {"iops-total-max", 40}}));
    const double t = burst({f}, 50, 512);
    BOOST_TEST(t >= slack * earliest(50, 1, 20, 40), t << " s");
}

// A burst longer than a second is also held to the burst rate: with
// max 50/s for 2 s, the burst level (max/10 = 5) lets one through every 20 ms.
BOOST_FIXTURE_TEST_CASE(a_long_burst_keeps_to_the_burst_rate, fixture) {
    auto f = file(group({{"iops-total", 10}, {"iops-total-max", 50}, {"iops-total-max-length", 2}}));
    const double t = burst({f}, 30, 512);
    BOOST_TEST(t >= slack * earliest(30, 1, 50, 5), t << " s");
}

// iops-size=4096: a 64 KiB read counts as 16 requests.
BOOST_FIXTURE_TEST_CASE(iops_size_counts_large_requests_as_several, fixture) {
    auto f = file(group({{"iops-total", 160}, {"iops-size", 4096}}));
    const double t = burst({f}, 8, 64 << 10);
    BOOST_TEST(t >= slack * earliest(8, 16, 160, 16), t << " s");
}

// Two filters in one group of iops-total=100 share it: 2 x 20 requests take
// as long as 40 through one (each alone would need 0.09 s).
BOOST_FIXTURE_TEST_CASE(filters_of_a_group_share_its_budget, fixture) {
    auto g = group({{"iops-total", 100}});
    auto a = file(g), b = file(g);
    const double t = burst({a, b}, 20, 512);
    BOOST_TEST(t >= slack * earliest(40, 1, 100, 10), t << " s");
}

// Filters on two threads (each with its own io_context) share a group too:
// the group is locked, each filter's timers stay on its own executor.
BOOST_AUTO_TEST_CASE(filters_on_different_threads_share_a_group) {
    auto g = group({{"iops-total", 100}});
    fixture one, two;
    auto a = one.file(g), b = two.file(g);
    double ta = 0, tb = 0;
    int problems = -1;
    const auto t0 = clock_type::now();
    std::thread other([&] { tb = two.burst({b}, 20, 512, false, &problems); });
    ta = one.burst({a}, 20, 512);
    other.join();
    BOOST_TEST(problems == 0);
    const double t = std::chrono::duration<double>(clock_type::now() - t0).count();
    BOOST_TEST(t >= slack * earliest(40, 1, 100, 10), t << " s (" << ta << " s and " << tb << " s)");
}

// Requests keep their order within a filter, and reads return the data.
BOOST_FIXTURE_TEST_CASE(data_and_order_pass_through, fixture) {
    auto f = file(group({{"iops-total", 200}}), 'z');
    std::vector<int> order;
    std::vector<std::vector<char>> bufs(30, std::vector<char>(512));
    for (int i = 0; i < 30; ++i) {
        const asio::mutable_buffer b(bufs[i].data(), 512);
        f->async_read_at(std::uint64_t(i) * 512, {&b, 1}, [&order, i](boost::system::error_code ec, std::size_t) {
            if (!ec) order.push_back(i);
        });
    }
    ioc.run();
    BOOST_TEST_REQUIRE(order.size() == 30u);
    for (int i = 0; i < 30; ++i) BOOST_TEST(order[i] == i);
    for (const auto& b : bufs) BOOST_TEST(std::count(b.begin(), b.end(), 'z') == 512);
    BOOST_TEST(f->backend_name() == std::string("throttle"));
}

// A throttle node of a json: name joins the group open_options names;
// without one, or naming another, it is refused in one line.
BOOST_FIXTURE_TEST_CASE(a_throttle_node_in_a_json_name, fixture) {
    const std::string name =
        R"(json:{"driver": "raw", "file": {"driver": "throttle", "throttle-group": "slow", "file": {"driver": "null-co", "size": "1M"}}})";
    open_options o;
    std::vector<std::string> log;
    o.log = [&log](std::string_view l) { log.emplace_back(l); };
    {
        auto [ec, img] = await<std::error_code, image>(
            ioc, [&](auto h) { image::async_open(ioc.get_executor(), name, o, std::move(h)); });
        BOOST_TEST(ec == errc::invalid_argument);
        BOOST_TEST_REQUIRE(log.size() == 1u);
        BOOST_TEST(log[0].rfind("json:{", 0) == 0u, log[0]);
        BOOST_TEST(log[0].find(": Throttle group 'slow' does not exist") != std::string::npos, log[0]);
    }
    o.throttle_groups = {group({{"iops-total", 100}}, "fast"), group({{"iops-total", 50}}, "slow")};
    auto [ec, img] = await<std::error_code, image>(
        ioc, [&](auto h) { image::async_open(ioc.get_executor(), name, o, std::move(h)); });
    BOOST_TEST_REQUIRE(!ec, ec.message());
    BOOST_TEST(img.size() == 1u << 20);
    test::sync_image s{ioc, img};
    std::vector<char> buf(512);
    const auto t0 = clock_type::now();
    for (int i = 0; i < 20; ++i) BOOST_TEST(!s.read(0, buf.data(), buf.size()));
    const double t = std::chrono::duration<double>(clock_type::now() - t0).count();
    BOOST_TEST(t >= slack * earliest(20, 1, 50, 5), t << " s");  // the "slow" group's limit
    BOOST_TEST(!s.close());
    log.clear();
    auto [ec2, img2] = await<std::error_code, image>(ioc, [&](auto h) {
        image::async_open(ioc.get_executor(),
                          R"(json:{"driver": "raw", "file": {"driver": "throttle", "file": {"driver": "null-co"}}})", o,
                          std::move(h));
    });
    BOOST_TEST(ec2);
    BOOST_TEST_REQUIRE(log.size() == 1u);
    BOOST_TEST(log[0].find(": Please specify a throttle group") != std::string::npos, log[0]);
}

BOOST_AUTO_TEST_SUITE_END()
