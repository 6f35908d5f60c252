// SPDX-License-Identifier: BSL-1.0
// qed-img bench: qemu-img bench's workload generator on this library.
//
// COUNT requests of SIZE bytes, DEPTH of them in flight; request i goes to
// offset OFFSET + i * STEP, wrapped the way qemu-img bench wraps it (modulo
// image size - SIZE), so a large STEP coprime to the block count visits the
// image in a scattered order. Writes use PATTERN; --flush-interval=N flushes
// after every N writes (waiting for the requests in flight first, unless
// --no-drain). The time printed runs from the first request to the last
// completion, as qemu-img's.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

#include "common/driver.hpp"
#include "common/image_opts.hpp"
#include "common/sizes.hpp"
#include "qed_img/commands.hpp"
#include "qed_img/options.hpp"

namespace qed::tools::img {
namespace {

struct bench_config {
    std::string path;
    std::optional<image_format> format;
    std::uint64_t count = 75000;
    std::uint64_t depth = 64;
    std::uint64_t size = 4096;
    std::uint64_t step = 0;  // 0: size
    std::uint64_t offset = 0;
    std::uint64_t flush_interval = 0;
    bool write = false;
    bool drain_on_flush = true;
    bool quiet = false;
    unsigned char pattern = 0;
    bool direct = false;
    file_backend backend = file_backend::automatic;
};

struct aligned_free {
    void operator()(void* p) const noexcept { std::free(p); }
};

class bench_run {
public:
    bench_run(driver& d, image& img, const bench_config& c)
        : d_(d), img_(img), c_(c), image_size_(img.size()), next_offset_(c.offset) {
        const std::size_t n = static_cast<std::size_t>(std::min(c.depth, c.count));
        for (std::size_t i = 0; i < n; ++i) {
            void* p = std::aligned_alloc(4096, (c.size + 4095) / 4096 * 4096);
            if (!p) throw std::bad_alloc();
            std::memset(p, c.write ? c.pattern : 0, c.size);
            buffers_.emplace_back(static_cast<unsigned char*>(p));
        }
    }

    std::error_code run() {
        for (std::size_t slot = 0; slot < buffers_.size(); ++slot) issue(slot);
        d_.run_until([this] { return finished_ || error_; });
        return error_;
    }

private:
    // qemu-img bench's offset sequence.
    std::uint64_t take_offset() {
        const std::uint64_t off = next_offset_;
        next_offset_ += c_.step;
        if (image_size_ <= c_.size)
            next_offset_ = 0;
        else
            next_offset_ %= image_size_ - c_.size;
        return off;
    }

    void issue(std::size_t slot) {
        if (error_ || issued_ == c_.count) return;
        if (flushing_ || (c_.flush_interval && c_.write && writes_since_flush_ == c_.flush_interval)) {
            idle_.push_back(slot);
            maybe_flush();
            return;
        }
        ++issued_;
        ++in_flight_;
        const std::uint64_t off = take_offset();
        auto buf = boost::asio::buffer(buffers_[slot].get(), static_cast<std::size_t>(c_.size));
        auto done = [this, slot](std::error_code ec, std::size_t) { completed(slot, ec); };
        if (c_.write) {
            ++writes_since_flush_;
            img_.async_write_at(off, buf, done);
        } else {
            img_.async_read_at(off, buf, done);
        }
    }

    void completed(std::size_t slot, std::error_code ec) {
        --in_flight_;
        ++completed_;
        if (ec && !error_) error_ = ec;
        if (completed_ == c_.count) {
            finished_ = true;
            return;
        }
        issue(slot);
        maybe_flush();
    }

    // Every `flush_interval` writes: wait for the requests in flight (unless
    // --no-drain), flush, then go on.
    void maybe_flush() {
        if (flushing_ || !c_.flush_interval || !c_.write || writes_since_flush_ < c_.flush_interval) return;
        if (c_.drain_on_flush && in_flight_ != 0) return;
        flushing_ = true;
        img_.async_flush([this](std::error_code ec) {
            flushing_ = false;
            writes_since_flush_ = 0;
            if (ec && !error_) error_ = ec;
            auto idle = std::move(idle_);
            idle_.clear();
            for (std::size_t s : idle) issue(s);
        });
    }

    driver& d_;
    image& img_;
    const bench_config& c_;
    std::uint64_t image_size_;
    std::uint64_t next_offset_;
    std::vector<std::unique_ptr<unsigned char[], aligned_free>> buffers_;
    std::vector<std::size_t> idle_;
    std::uint64_t issued_ = 0, completed_ = 0, in_flight_ = 0, writes_since_flush_ = 0;
    bool flushing_ = false;
    bool finished_ = false;
    std::error_code error_;
};

}  // namespace

int run_bench(const words& all_words) {
    auto args = parse("bench", all_words,
                      {{'c', "count", true},
                       {'d', "depth", true},
                       {'f', "format", true},
                       {0, "flush-interval", true},
                       {'i', "aio", true},
                       {'n', "native", false},
                       {0, "no-drain", false},
                       {'o', "offset", true},
                       {0, "pattern", true},
                       {'q', "quiet", false},
                       {'s', "buffer-size", true},
                       {'S', "step-size", true},
                       {'t', "cache", true},
                       {'w', "write", false},
                       {'U', "force-share", false},
                       {0, "object", true},
                       {0, "image-opts", false}});
    if (!args) return 1;
    if (std::string why; !apply_image_options(*args, 1, "format", why)) return fail(why);
    if (!positional_count("bench", *args, 1, 1)) return 1;
    bench_config c;
    c.path = args->positional[0];
    if (!format_value(args->last("format"), c.format)) return 1;

    auto number = [&](const char* name, std::uint64_t& out, bool allow_zero) -> bool {
        auto v = args->last(name);
        if (!v) return true;
        std::string error;
        auto n = parse_size(*v, error);
        if (!n || (!allow_zero && *n == 0)) {
            fail(std::string("Invalid ") + name + " specified: '" + *v + "'");
            return false;
        }
        out = *n;
        return true;
    };
    if (!number("count", c.count, false) || !number("depth", c.depth, false) || !number("buffer-size", c.size, false) ||
        !number("step-size", c.step, true) || !number("offset", c.offset, true) ||
        !number("flush-interval", c.flush_interval, true))
        return 1;
    if (c.depth > 65536) return fail("Invalid queue depth specified: the maximum is 65536");
    if (c.step == 0) c.step = c.size;
    c.write = args->has("write");
    c.quiet = args->has("quiet");
    c.drain_on_flush = !args->has("no-drain");
    if (c.flush_interval && !c.write) return fail("--flush-interval is only available in write tests");
    if (!c.drain_on_flush && !c.flush_interval) return fail("--no-drain requires --flush-interval");
    if (auto p = args->last("pattern")) {
        std::string error;
        auto v = parse_size(*p, error);
        if (!v || *v > 0xff) return fail("Invalid pattern byte specified: '" + *p + "'");
        c.pattern = static_cast<unsigned char>(*v);
    }
    if (!cache_value(args->last("cache"), c.direct)) return 1;
    if (auto aio = args->last("aio")) {
        if (*aio == "io_uring")
            c.backend = file_backend::io_uring;
        else if (*aio == "threads")
            c.backend = file_backend::threads;
        else
            return fail("Invalid aio option: '" + *aio + "' (io_uring or threads; Linux AIO is not supported)");
    }
    // qemu-img's -n asks for the kernel's native asynchronous I/O: here that
    // is io_uring.
    if (args->has("native")) c.backend = file_backend::io_uring;
    if (c.size % sector_size || c.offset % sector_size || c.step % sector_size)
        return fail(c.path + ": buffer size, offset and step size must be multiples of 512");

    driver d;
    open_options o;
    o.format = c.format;
    o.read_only = !c.write;
    o.force_share = args->has("force-share");  // with -w refused, as qemu-img does
    o.direct = c.direct;
    o.backend = c.backend;
    auto opened = open_image(d, c.path, o);
    if (opened.ec) return fail(opened.error);
    image img = opened.img;
    if (c.size > img.size()) {
        close_image(d, img);
        return fail(c.path + ": the buffer size is larger than the image");
    }

    if (!c.quiet) {
        std::printf(
            "Sending %llu %s requests, %llu bytes each, %llu in parallel (starting at offset %llu, step size "
            "%llu)\n",
            static_cast<unsigned long long>(c.count), c.write ? "write" : "read",
            static_cast<unsigned long long>(c.size), static_cast<unsigned long long>(c.depth),
            static_cast<unsigned long long>(c.offset), static_cast<unsigned long long>(c.step));
        std::fflush(stdout);
    }
    std::error_code ec;
    double seconds = 0;
    {
        bench_run run(d, img, c);
        const auto t0 = std::chrono::steady_clock::now();
        ec = run.run();
        seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
    const std::error_code close_ec = close_image(d, img);
    if (ec) return fail(c.path + ": " + ec.message());
    if (close_ec) return fail(describe(c.path, close_ec));
    if (!c.quiet) std::printf("Run completed in %.3f seconds.\n", seconds);
    return 0;
}

}  // namespace qed::tools::img
