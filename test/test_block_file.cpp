// SPDX-License-Identifier: BSL-1.0
// The block_file contract, for every backend: memory, threads, io_uring (when
// a ring can be created), and O_DIRECT real files on threads and io_uring.
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/test/data/monomorphic.hpp>
#include <boost/test/data/test_case.hpp>
#include <boost/test/unit_test.hpp>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <numeric>
#include <ostream>
#include <random>
#include <thread>
#include <vector>

#include "qed/block_file.hpp"
#include "qed/error.hpp"
#include "support/sync.hpp"
#include "support/tmp_dir.hpp"

namespace asio = boost::asio;
namespace data = boost::unit_test::data;

namespace {

enum class kind { memory, threads, io_uring, threads_direct, io_uring_direct };

std::ostream& operator<<(std::ostream& os, kind k) {
    switch (k) {
        case kind::memory:
            return os << "memory";
        case kind::threads:
            return os << "threads";
        case kind::io_uring:
            return os << "io_uring";
        case kind::threads_direct:
            return os << "threads+O_DIRECT";
        case kind::io_uring_direct:
            return os << "io_uring+O_DIRECT";
    }
    return os;
}

const std::vector<kind> all_kinds = {kind::memory, kind::threads, kind::io_uring, kind::threads_direct,
                                     kind::io_uring_direct};

bool is_real(kind k) {
    return k != kind::memory;
}
bool is_direct(kind k) {
    return k == kind::threads_direct || k == kind::io_uring_direct;
}
bool is_uring(kind k) {
    return k == kind::io_uring || k == kind::io_uring_direct;
}

/// Memory aligned to 4096 bytes (O_DIRECT-friendly), zero-initialised.
struct aligned_buffer {
    explicit aligned_buffer(std::size_t n)
        : size(n), p(static_cast<std::uint8_t*>(std::aligned_alloc(4096, round(n)))) {
        std::memset(p, 0, round(n));
    }
    ~aligned_buffer() { std::free(p); }
    aligned_buffer(const aligned_buffer&) = delete;
    aligned_buffer& operator=(const aligned_buffer&) = delete;
    static std::size_t round(std::size_t n) { return (std::max<std::size_t>(n, 1) + 4095) / 4096 * 4096; }
    std::uint8_t* data() const { return p; }
    std::size_t size;
    std::uint8_t* p;
};

std::uint8_t pattern(std::uint64_t pos, unsigned seed) {
    return static_cast<std::uint8_t>((pos * 2654435761u + seed * 97u + (pos >> 12)) & 0xff);
}

void fill(std::uint8_t* p, std::size_t n, std::uint64_t file_pos, unsigned seed) {
    for (std::size_t i = 0; i < n; ++i) p[i] = pattern(file_pos + i, seed);
}

/// Index of the first byte that differs from the pattern, or npos.
std::size_t first_mismatch(const std::uint8_t* p, std::size_t n, std::uint64_t file_pos, unsigned seed) {
    for (std::size_t i = 0; i < n; ++i)
        if (p[i] != pattern(file_pos + i, seed)) return i;
    return static_cast<std::size_t>(-1);
}
std::size_t first_nonzero(const std::uint8_t* p, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i)
        if (p[i] != 0) return i;
    return static_cast<std::size_t>(-1);
}
constexpr std::size_t npos = static_cast<std::size_t>(-1);

bool direct_supported(const std::string& dir) {
    const std::string p = dir + "/.direct_probe";
    const int fd = ::open(p.c_str(), O_RDWR | O_CREAT | O_DIRECT | O_CLOEXEC, 0644);
    if (fd < 0) return false;
    ::close(fd);
    ::unlink(p.c_str());
    return true;
}

/// One backend under test: opens named files in a temp dir or in memory.
struct backend_env {
    explicit backend_env(kind k_) : k(k_), dir("block_file") {}

    /// Image locks on real files (a test holding one file open several
    /// times in one process, for the backend's sake, turns them off).
    qed::lock_mode locking = qed::lock_mode::automatic;

    /// False (with a message) when this machine can't run the backend.
    bool supported() {
        if (is_uring(k) && !qed::io_uring_available()) {
            BOOST_TEST_MESSAGE("io_uring not available here: skipping " << k);
            return false;
        }
        if (is_direct(k) && !direct_supported(dir.path())) {
            BOOST_TEST_MESSAGE("O_DIRECT not supported in " << dir.path() << ": skipping " << k);
            return false;
        }
        return true;
    }

    std::string path(const std::string& name) const { return dir / name; }

    std::shared_ptr<qed::block_file> open(const std::string& name, bool read_only, bool create, std::error_code& ec) {
        if (k == kind::memory) {
            auto& s = mem[name];
            if (!s) {
                if (!create) {
                    ec = std::make_error_code(std::errc::no_such_file_or_directory);
                    return nullptr;
                }
                s = std::make_shared<qed::memory_storage>();
            } else if (create) {
                s->resize(0);
            }
            ec.clear();
            return qed::make_memory_file(ioc.get_executor(), s, read_only);
        }
        qed::file_options o;
        o.read_only = read_only;
        o.create = create;
        o.direct = is_direct(k);
        o.backend = is_uring(k) ? qed::file_backend::io_uring : qed::file_backend::threads;
        o.locking = locking;
        return qed::open_file(ioc.get_executor(), path(name), o, ec);
    }

    std::shared_ptr<qed::block_file> open(const std::string& name, bool read_only = false, bool create = false) {
        std::error_code ec;
        auto f = open(name, read_only, create, ec);
        BOOST_TEST_REQUIRE(static_cast<bool>(f), "open " << name << ": " << ec.message());
        return f;
    }
    std::shared_ptr<qed::block_file> create(const std::string& name) { return open(name, false, true); }

    /// The file's bytes as stored (bypassing the backend under test).
    std::vector<std::uint8_t> raw(const std::string& name, std::uint64_t off, std::size_t n) {
        if (k == kind::memory) {
            std::vector<std::uint8_t> out(n);
            mem.at(name)->read(off, {reinterpret_cast<std::byte*>(out.data()), n});
            return out;
        }
        return qed::test::pread_file(path(name), off, n);
    }

    std::pair<std::error_code, std::size_t> read(qed::block_file& f, std::uint64_t off,
                                                 const std::vector<asio::mutable_buffer>& bufs) {
        auto [ec, n] = qed::test::await<std::error_code, std::size_t>(
            ioc, [&](auto h) { f.async_read_at(off, bufs, std::move(h)); });
        return {ec, n};
    }
    std::pair<std::error_code, std::size_t> write(qed::block_file& f, std::uint64_t off,
                                                  const std::vector<asio::const_buffer>& bufs) {
        auto [ec, n] = qed::test::await<std::error_code, std::size_t>(
            ioc, [&](auto h) { f.async_write_at(off, bufs, std::move(h)); });
        return {ec, n};
    }
    std::pair<std::error_code, std::size_t> read(qed::block_file& f, std::uint64_t off, void* p, std::size_t n) {
        return read(f, off, std::vector<asio::mutable_buffer>{asio::buffer(p, n)});
    }
    std::pair<std::error_code, std::size_t> write(qed::block_file& f, std::uint64_t off, const void* p, std::size_t n) {
        return write(f, off, std::vector<asio::const_buffer>{asio::buffer(p, n)});
    }
    std::error_code flush(qed::block_file& f) {
        return std::get<0>(qed::test::await<std::error_code>(ioc, [&](auto h) { f.async_flush(std::move(h)); }));
    }
    std::error_code resize(qed::block_file& f, std::uint64_t n) {
        return std::get<0>(qed::test::await<std::error_code>(ioc, [&](auto h) { f.async_resize(n, std::move(h)); }));
    }

    /// Run the io_context until `done` holds (fails the test on a hang).
    template <class Pred>
    void run_until(Pred done) {
        ioc.restart();
        while (!done()) {
            if (ioc.run_one() == 0) {
                BOOST_TEST_REQUIRE(done(), "operations never completed (hang)");
                break;
            }
        }
    }

    kind k;
    asio::io_context ioc;
    qed::test::tmp_dir dir;
    std::map<std::string, std::shared_ptr<qed::memory_storage>> mem;
};

#define REQUIRE_BACKEND(env)        \
    if (!(env).supported()) return; \
    do {                            \
    } while (0)

}  // namespace

BOOST_AUTO_TEST_CASE(automatic_backend_choice) {
    // automatic = io_uring when a ring can be created (buffered and
    // O_DIRECT), else threads.
    BOOST_TEST_MESSAGE("io_uring available: " << qed::io_uring_available());
    qed::test::tmp_dir d("env");
    BOOST_TEST_MESSAGE("temp dir " << d.path() << ", O_DIRECT supported: " << direct_supported(d.path()));
    asio::io_context ioc;
    qed::file_options o;
    o.read_only = false;
    o.create = true;
    std::error_code ec;
    auto f = qed::open_file(ioc.get_executor(), d / "auto", o, ec);
    BOOST_TEST_REQUIRE(static_cast<bool>(f), ec.message());
    BOOST_TEST(std::string(f->backend_name()) == (qed::io_uring_available() ? "io_uring" : "threads"));
    f.reset();  // one writer at a time: the reopens below would be refused by its lock
    if (direct_supported(d.path())) {
        o.create = false;
        o.direct = true;
        auto df = qed::open_file(ioc.get_executor(), d / "auto", o, ec);
        BOOST_TEST_REQUIRE(static_cast<bool>(df), ec.message());
        BOOST_TEST(std::string(df->backend_name()) == (qed::io_uring_available() ? "io_uring" : "threads"));
        df.reset();
        o.direct = false;
    }
    // Asking for io_uring explicitly fails cleanly when it isn't there.
    o.backend = qed::file_backend::io_uring;
    o.create = false;
    auto g = qed::open_file(ioc.get_executor(), d / "auto", o, ec);
    BOOST_TEST(static_cast<bool>(g) == qed::io_uring_available());
    if (!g) BOOST_TEST(static_cast<bool>(ec));
}

BOOST_DATA_TEST_CASE(backend_identity_and_name, data::make(all_kinds), k) {
    backend_env env(k);
    REQUIRE_BACKEND(env);
    auto f = env.create("a");
    const std::string name = f->backend_name();
    if (k == kind::memory)
        BOOST_TEST(name == "memory");
    else if (is_uring(k))
        BOOST_TEST(name == "io_uring");
    else
        BOOST_TEST(name == "threads");
    BOOST_TEST(!f->read_only());
    if (is_direct(k)) {
        BOOST_TEST(f->alignment() >= 512u);
        BOOST_TEST((f->alignment() & (f->alignment() - 1)) == 0u);
    } else {
        BOOST_TEST(f->alignment() == 1u);
    }
    BOOST_TEST((f->get_executor() == asio::any_io_executor(env.ioc.get_executor())));
}

BOOST_DATA_TEST_CASE(scatter_gather_round_trip, data::make(all_kinds), k) {
    backend_env env(k);
    REQUIRE_BACKEND(env);
    auto f = env.create("sg");

    // 200 iovecs of 4 KiB (Asio submits at most 64 per io_uring operation).
    constexpr std::size_t n_iov = 200, piece = 4096;
    const std::uint64_t at = 8192;
    aligned_buffer src(n_iov * piece);
    fill(src.data(), src.size, at, 1);
    std::vector<asio::const_buffer> wbufs;
    for (std::size_t i = 0; i < n_iov; ++i) wbufs.emplace_back(src.data() + i * piece, piece);
    auto [wec, wn] = env.write(*f, at, wbufs);
    BOOST_TEST_REQUIRE(!wec, wec.message());
    BOOST_TEST(wn == n_iov * piece);

    // Read back with a different segmentation: 100 buffers of 8 KiB.
    aligned_buffer dst(n_iov * piece);
    std::vector<asio::mutable_buffer> rbufs;
    for (std::size_t i = 0; i < n_iov / 2; ++i) rbufs.emplace_back(dst.data() + i * 2 * piece, 2 * piece);
    auto [rec, rn] = env.read(*f, at, rbufs);
    BOOST_TEST_REQUIRE(!rec, rec.message());
    BOOST_TEST(rn == n_iov * piece);
    BOOST_TEST(first_mismatch(dst.data(), dst.size, at, 1) == npos);

    // And into 200 small buffers again (the read side > 64 iovecs).
    std::memset(dst.data(), 0, dst.size);
    std::vector<asio::mutable_buffer> rbufs2;
    for (std::size_t i = 0; i < n_iov; ++i) rbufs2.emplace_back(dst.data() + i * piece, piece);
    auto [rec2, rn2] = env.read(*f, at, rbufs2);
    BOOST_TEST_REQUIRE(!rec2, rec2.message());
    BOOST_TEST(rn2 == n_iov * piece);
    BOOST_TEST(first_mismatch(dst.data(), dst.size, at, 1) == npos);

    // A 3 MiB single buffer.
    constexpr std::size_t big = 3u << 20;
    const std::uint64_t big_at = 4u << 20;
    aligned_buffer bsrc(big);
    fill(bsrc.data(), big, big_at, 2);
    auto [bwec, bwn] = env.write(*f, big_at, bsrc.data(), big);
    BOOST_TEST_REQUIRE(!bwec, bwec.message());
    BOOST_TEST(bwn == big);
    aligned_buffer bdst(big);
    auto [brec, brn] = env.read(*f, big_at, bdst.data(), big);
    BOOST_TEST_REQUIRE(!brec, brec.message());
    BOOST_TEST(brn == big);
    BOOST_TEST(first_mismatch(bdst.data(), big, big_at, 2) == npos);
    // Read it back in three unequal pieces.
    std::memset(bdst.data(), 0, big);
    std::vector<asio::mutable_buffer> three{asio::buffer(bdst.data(), 1u << 20),
                                            asio::buffer(bdst.data() + (1u << 20), (1u << 20) + 4096),
                                            asio::buffer(bdst.data() + (2u << 20) + 4096, (1u << 20) - 4096)};
    auto [trec, trn] = env.read(*f, big_at, three);
    BOOST_TEST_REQUIRE(!trec, trec.message());
    BOOST_TEST(trn == big);
    BOOST_TEST(first_mismatch(bdst.data(), big, big_at, 2) == npos);

    std::error_code sec;
    BOOST_TEST(f->size(sec) == big_at + big);
    BOOST_TEST(!sec);

    // The bytes really are in the file where they belong.
    BOOST_TEST_REQUIRE(!env.flush(*f));
    const auto raw1 = env.raw("sg", at, n_iov * piece);
    BOOST_TEST(first_mismatch(raw1.data(), raw1.size(), at, 1) == npos);
    const auto raw2 = env.raw("sg", big_at, big);
    BOOST_TEST(first_mismatch(raw2.data(), raw2.size(), big_at, 2) == npos);
    const auto gap = env.raw("sg", 0, 8192);
    BOOST_TEST(first_nonzero(gap.data(), gap.size()) == npos);
}

BOOST_DATA_TEST_CASE(iovec_lists_longer_than_iov_max, data::make(all_kinds), k) {
    // 1500 iovecs (> IOV_MAX = 1024, so preadv/pwritev need several calls),
    // and a read of 300 iovecs that runs past the end of the file.
    backend_env env(k);
    REQUIRE_BACKEND(env);
    auto f = env.create("iovmax");
    constexpr std::size_t n = 1500, piece = 512;
    aligned_buffer src(n * piece), dst(n * piece);
    fill(src.data(), src.size, 4096, 21);
    std::vector<asio::const_buffer> w;
    for (std::size_t i = 0; i < n; ++i) w.emplace_back(src.data() + i * piece, piece);
    auto [wec, wn] = env.write(*f, 4096, w);
    BOOST_TEST_REQUIRE(!wec, wec.message());
    BOOST_TEST(wn == n * piece);
    std::vector<asio::mutable_buffer> r;
    for (std::size_t i = 0; i < n; ++i) r.emplace_back(dst.data() + i * piece, piece);
    auto [rec, rn] = env.read(*f, 4096, r);
    BOOST_TEST_REQUIRE(!rec, rec.message());
    BOOST_TEST(rn == n * piece);
    BOOST_TEST(first_mismatch(dst.data(), dst.size, 4096, 21) == npos);
    const auto raw = env.raw("iovmax", 4096, n * piece);
    BOOST_TEST(first_mismatch(raw.data(), raw.size(), 4096, 21) == npos);

    // 300 x 4 KiB from 4096 + 750 KiB - 100 KiB: the last 200 KiB are past EOF.
    const std::uint64_t end = 4096 + n * piece;
    const std::uint64_t at = end - 100 * 4096;
    aligned_buffer big(300 * 4096);
    std::memset(big.data(), 0xee, big.size);
    std::vector<asio::mutable_buffer> rr;
    for (std::size_t i = 0; i < 300; ++i) rr.emplace_back(big.data() + i * 4096, 4096);
    auto [eec, en] = env.read(*f, at, rr);
    BOOST_TEST_REQUIRE(!eec, eec.message());
    BOOST_TEST(en == 300u * 4096);
    BOOST_TEST(first_mismatch(big.data(), 100 * 4096, at, 21) == npos);
    BOOST_TEST(first_nonzero(big.data() + 100 * 4096, 200 * 4096) == npos);
}

BOOST_DATA_TEST_CASE(reads_past_eof_give_zeros, data::make(all_kinds), k) {
    backend_env env(k);
    REQUIRE_BACKEND(env);
    auto f = env.create("eof");
    aligned_buffer src(8192);
    fill(src.data(), 8192, 0, 3);
    BOOST_TEST_REQUIRE(!env.write(*f, 0, src.data(), 8192).first);

    // Partly past the end.
    aligned_buffer dst(16384);
    std::memset(dst.data(), 0xee, 16384);
    auto [ec, n] = env.read(*f, 4096, dst.data(), 16384);
    BOOST_TEST_REQUIRE(!ec, ec.message());
    BOOST_TEST(n == 16384u);
    BOOST_TEST(first_mismatch(dst.data(), 4096, 4096, 3) == npos);
    BOOST_TEST(first_nonzero(dst.data() + 4096, 12288) == npos);

    // Entirely past the end.
    std::memset(dst.data(), 0xee, 16384);
    auto [ec2, n2] = env.read(*f, 1u << 20, dst.data(), 8192);
    BOOST_TEST_REQUIRE(!ec2, ec2.message());
    BOOST_TEST(n2 == 8192u);
    BOOST_TEST(first_nonzero(dst.data(), 8192) == npos);

    // A file whose size is not a multiple of the block size (data right up
    // to the end), read with several buffers that straddle the end.
    auto g = env.create("eof2");
    aligned_buffer src2(12288);
    fill(src2.data(), 12288, 0, 33);
    BOOST_TEST_REQUIRE(!env.write(*g, 0, src2.data(), 12288).first);
    BOOST_TEST_REQUIRE(!env.resize(*g, 10000));
    std::memset(dst.data(), 0xee, 16384);
    std::vector<asio::mutable_buffer> bufs;
    for (int i = 0; i < 4; ++i) bufs.emplace_back(dst.data() + i * 4096, 4096);
    auto [ec3, n3] = env.read(*g, 0, bufs);
    BOOST_TEST_REQUIRE(!ec3, ec3.message());
    BOOST_TEST(n3 == 16384u);
    BOOST_TEST(first_mismatch(dst.data(), 10000, 0, 33) == npos);
    BOOST_TEST(first_nonzero(dst.data() + 10000, 16384 - 10000) == npos);
    // Starting inside the last partial block.
    std::memset(dst.data(), 0xee, 16384);
    auto [ec4, n4] = env.read(*g, 8192, dst.data(), 8192);
    BOOST_TEST_REQUIRE(!ec4, ec4.message());
    BOOST_TEST(n4 == 8192u);
    BOOST_TEST(first_mismatch(dst.data(), 10000 - 8192, 8192, 33) == npos);
    BOOST_TEST(first_nonzero(dst.data() + (10000 - 8192), 8192 - (10000 - 8192)) == npos);
}

BOOST_DATA_TEST_CASE(flush_succeeds, data::make(all_kinds), k) {
    backend_env env(k);
    REQUIRE_BACKEND(env);
    auto f = env.create("flush");
    BOOST_TEST(!env.flush(*f));  // empty file
    aligned_buffer src(4096);
    fill(src.data(), 4096, 0, 4);
    BOOST_TEST_REQUIRE(!env.write(*f, 0, src.data(), 4096).first);
    BOOST_TEST(!env.flush(*f));
    const auto raw = env.raw("flush", 0, 4096);
    BOOST_TEST(first_mismatch(raw.data(), 4096, 0, 4) == npos);
}

BOOST_DATA_TEST_CASE(resize_grow_and_shrink, data::make(all_kinds), k) {
    backend_env env(k);
    REQUIRE_BACKEND(env);
    auto f = env.create("resize");
    std::error_code sec;
    BOOST_TEST(f->size(sec) == 0u);

    BOOST_TEST_REQUIRE(!env.resize(*f, 1u << 20));
    BOOST_TEST(f->size(sec) == (1u << 20));
    if (is_real(k)) BOOST_TEST(qed::test::file_size_of(env.path("resize")) == (1u << 20));
    aligned_buffer dst(8192);
    std::memset(dst.data(), 0xee, 8192);
    BOOST_TEST_REQUIRE(!env.read(*f, (1u << 20) - 8192, dst.data(), 8192).first);
    BOOST_TEST(first_nonzero(dst.data(), 8192) == npos);

    aligned_buffer src(8192);
    fill(src.data(), 8192, 512 * 1024, 5);
    BOOST_TEST_REQUIRE(!env.write(*f, 512 * 1024, src.data(), 8192).first);
    fill(src.data(), 4096, 0, 5);
    BOOST_TEST_REQUIRE(!env.write(*f, 0, src.data(), 4096).first);

    // Shrink: the data past the new end is gone.
    BOOST_TEST_REQUIRE(!env.resize(*f, 4096));
    BOOST_TEST(f->size(sec) == 4096u);
    if (is_real(k)) BOOST_TEST(qed::test::file_size_of(env.path("resize")) == 4096u);
    std::memset(dst.data(), 0xee, 8192);
    auto [ec, n] = env.read(*f, 512 * 1024, dst.data(), 8192);
    BOOST_TEST(!ec);
    BOOST_TEST(n == 8192u);
    BOOST_TEST(first_nonzero(dst.data(), 8192) == npos);
    // What is left is intact.
    BOOST_TEST_REQUIRE(!env.read(*f, 0, dst.data(), 4096).first);
    BOOST_TEST(first_mismatch(dst.data(), 4096, 0, 5) == npos);

    // Grow again: the old bytes don't come back.
    BOOST_TEST_REQUIRE(!env.resize(*f, 1u << 20));
    BOOST_TEST(f->size(sec) == (1u << 20));
    std::memset(dst.data(), 0xee, 8192);
    BOOST_TEST_REQUIRE(!env.read(*f, 512 * 1024, dst.data(), 8192).first);
    BOOST_TEST(first_nonzero(dst.data(), 8192) == npos);

    // Resize to an unaligned size.
    BOOST_TEST_REQUIRE(!env.resize(*f, 12345));
    BOOST_TEST(f->size(sec) == 12345u);
}

BOOST_DATA_TEST_CASE(identity_same_and_different_files, data::make(all_kinds), k) {
    backend_env env(k);
    REQUIRE_BACKEND(env);
    // Three handles on one file at once, two of them writable: what the
    // image locks exist to refuse between images, wanted here at the file level.
    env.locking = qed::lock_mode::off;
    auto a1 = env.create("a");
    auto b = env.create("b");
    auto a2 = env.open("a", false, false);
    auto a3 = env.open("a", true, false);
    BOOST_TEST((a1->identity() == a2->identity()));
    BOOST_TEST((a1->identity() == a3->identity()));
    BOOST_TEST((a1->identity() != b->identity()));
    // Writes through one handle are visible through the other.
    aligned_buffer src(4096), dst(4096);
    fill(src.data(), 4096, 0, 6);
    BOOST_TEST_REQUIRE(!env.write(*a1, 0, src.data(), 4096).first);
    BOOST_TEST_REQUIRE(!env.read(*a3, 0, dst.data(), 4096).first);
    BOOST_TEST(first_mismatch(dst.data(), 4096, 0, 6) == npos);
}

BOOST_DATA_TEST_CASE(read_only_refuses_writes, data::make(all_kinds), k) {
    backend_env env(k);
    REQUIRE_BACKEND(env);
    {
        auto w = env.create("ro");
        aligned_buffer src(8192);
        fill(src.data(), 8192, 0, 7);
        BOOST_TEST_REQUIRE(!env.write(*w, 0, src.data(), 8192).first);
        BOOST_TEST_REQUIRE(!env.flush(*w));
    }
    auto f = env.open("ro", true, false);
    BOOST_TEST(f->read_only());
    aligned_buffer junk(4096);
    std::memset(junk.data(), 0x5a, 4096);
    auto [ec, n] = env.write(*f, 0, junk.data(), 4096);
    BOOST_TEST(static_cast<bool>(ec), "write on a read-only file must fail");
    BOOST_TEST(n == 0u);
    auto [ec2, n2] = env.write(*f, 1u << 20, junk.data(), 4096);  // past EOF too
    BOOST_TEST(static_cast<bool>(ec2));
    BOOST_TEST(n2 == 0u);
    BOOST_TEST(static_cast<bool>(env.resize(*f, 1u << 20)), "resize on a read-only file must fail");
    std::error_code sec;
    BOOST_TEST(f->size(sec) == 8192u);
    // Reading still works and the data is unchanged.
    aligned_buffer dst(8192);
    BOOST_TEST_REQUIRE(!env.read(*f, 0, dst.data(), 8192).first);
    BOOST_TEST(first_mismatch(dst.data(), 8192, 0, 7) == npos);
    const auto raw = env.raw("ro", 0, 8192);
    BOOST_TEST(first_mismatch(raw.data(), 8192, 0, 7) == npos);
}

BOOST_DATA_TEST_CASE(missing_file_is_an_error, data::make(all_kinds), k) {
    backend_env env(k);
    REQUIRE_BACKEND(env);
    std::error_code ec;
    auto f = env.open("does-not-exist", false, false, ec);
    BOOST_TEST(!f);
    BOOST_TEST((ec == std::errc::no_such_file_or_directory), ec.message());
}

BOOST_DATA_TEST_CASE(many_operations_in_flight, data::make(all_kinds), k) {
    backend_env env(k);
    REQUIRE_BACKEND(env);
    auto f = env.create("many");
    constexpr std::size_t n_ops = 512, piece = 4096;
    aligned_buffer src(n_ops * piece);
    fill(src.data(), src.size, 0, 8);
    // Start every write at once, in a shuffled order.
    std::vector<std::size_t> order(n_ops);
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), std::mt19937(42));
    std::size_t done = 0, errors = 0, short_ops = 0;
    for (std::size_t i : order) {
        const asio::const_buffer b(src.data() + i * piece, piece);
        f->async_write_at(i * piece, {&b, 1}, [&](std::error_code ec, std::size_t n) {
            ++done;
            errors += ec ? 1 : 0;
            short_ops += n != piece;
        });
    }
    env.run_until([&] { return done == n_ops; });
    BOOST_TEST(errors == 0u);
    BOOST_TEST(short_ops == 0u);

    // Then all reads at once, mixed with writes to a disjoint region.
    aligned_buffer dst(n_ops * piece);
    aligned_buffer src2(n_ops * piece);
    const std::uint64_t region2 = 8u << 20;
    fill(src2.data(), src2.size, region2, 9);
    done = errors = short_ops = 0;
    for (std::size_t i : order) {
        const asio::mutable_buffer b(dst.data() + i * piece, piece);
        f->async_read_at(i * piece, {&b, 1}, [&](std::error_code ec, std::size_t n) {
            ++done;
            errors += ec ? 1 : 0;
            short_ops += n != piece;
        });
        const asio::const_buffer w(src2.data() + i * piece, piece);
        f->async_write_at(region2 + i * piece, {&w, 1}, [&](std::error_code ec, std::size_t n) {
            ++done;
            errors += ec ? 1 : 0;
            short_ops += n != piece;
        });
    }
    env.run_until([&] { return done == 2 * n_ops; });
    BOOST_TEST(errors == 0u);
    BOOST_TEST(short_ops == 0u);
    BOOST_TEST(first_mismatch(dst.data(), dst.size, 0, 8) == npos);
    BOOST_TEST_REQUIRE(!env.read(*f, region2, dst.data(), dst.size).first);
    BOOST_TEST(first_mismatch(dst.data(), dst.size, region2, 9) == npos);
}

BOOST_DATA_TEST_CASE(handlers_run_on_executor_never_inline, data::make(all_kinds), k) {
    backend_env env(k);
    REQUIRE_BACKEND(env);
    {
        auto w = env.create("ro-target");
        BOOST_TEST_REQUIRE(!env.resize(*w, 8192));
    }
    auto f = env.create("inline");
    auto ro = env.open("ro-target", true, false);
    aligned_buffer buf(65536);
    fill(buf.data(), 4096, 0, 10);

    struct probe {
        std::string what;
        bool returned = false;  // set right after the initiating call returns
        bool ran = false;
        bool ran_before_return = false;
        bool on_executor = false;
    };
    std::vector<std::unique_ptr<probe>> probes;
    auto io_cb = [&](probe& p) {
        return [&p, &env](std::error_code, std::size_t) {
            p.ran = true;
            p.ran_before_return = !p.returned;
            p.on_executor = env.ioc.get_executor().running_in_this_thread();
        };
    };
    auto op_cb = [&](probe& p) {
        return [&p, &env](std::error_code) {
            p.ran = true;
            p.ran_before_return = !p.returned;
            p.on_executor = env.ioc.get_executor().running_in_this_thread();
        };
    };
    auto add = [&](const std::string& what) -> probe& {
        probes.push_back(std::make_unique<probe>());
        probes.back()->what = what;
        return *probes.back();
    };

    // Each operation is started from inside a handler running on the
    // executor (the usual case), where an inline completion would be
    // indistinguishable from a dispatched one if we only checked the thread.
    asio::post(env.ioc, [&] {
        {
            auto& p = add("write");
            const asio::const_buffer b(buf.data(), 4096);
            f->async_write_at(0, {&b, 1}, io_cb(p));
            p.returned = true;
        }
        {
            auto& p = add("read");
            const asio::mutable_buffer b(buf.data() + 8192, 4096);
            f->async_read_at(0, {&b, 1}, io_cb(p));
            p.returned = true;
        }
        {
            auto& p = add("read past EOF");
            const asio::mutable_buffer b(buf.data() + 16384, 4096);
            f->async_read_at(1u << 30, {&b, 1}, io_cb(p));
            p.returned = true;
        }
        {
            auto& p = add("empty read");
            f->async_read_at(0, std::span<const asio::mutable_buffer>{}, io_cb(p));
            p.returned = true;
        }
        {
            auto& p = add("empty write");
            f->async_write_at(0, std::span<const asio::const_buffer>{}, io_cb(p));
            p.returned = true;
        }
        {
            auto& p = add("zero-length buffer read");
            const asio::mutable_buffer b(buf.data() + 20480, 0);
            f->async_read_at(0, {&b, 1}, io_cb(p));
            p.returned = true;
        }
        {
            auto& p = add("flush");
            f->async_flush(op_cb(p));
            p.returned = true;
        }
        {
            auto& p = add("resize");
            f->async_resize(1u << 20, op_cb(p));
            p.returned = true;
        }
        {
            auto& p = add("write on read-only file");
            const asio::const_buffer b(buf.data(), 4096);
            ro->async_write_at(0, {&b, 1}, io_cb(p));
            p.returned = true;
        }
        {
            auto& p = add("resize on read-only file");
            ro->async_resize(1u << 20, op_cb(p));
            p.returned = true;
        }
    });
    // And once from outside any handler.
    {
        auto& p = add("read from outside the executor");
        const asio::mutable_buffer b(buf.data() + 24576, 4096);
        f->async_read_at(0, {&b, 1}, io_cb(p));
        p.returned = true;
    }
    env.run_until([&] {
        if (probes.size() < 11) return false;
        return std::all_of(probes.begin(), probes.end(), [](const auto& p) { return p->ran; });
    });
    for (const auto& p : probes) {
        BOOST_TEST_CONTEXT(p->what) {
            BOOST_TEST(p->ran);
            BOOST_TEST(!p->ran_before_return, "handler ran inside the initiating call");
            BOOST_TEST(p->on_executor, "handler ran outside the file's executor");
        }
    }
}

BOOST_DATA_TEST_CASE(misaligned_transfers_work, data::make(all_kinds), k) {
    // With O_DIRECT these go through the slower buffered path; they must
    // still land at the right place.
    backend_env env(k);
    REQUIRE_BACKEND(env);
    auto f = env.create("mis");
    aligned_buffer zero(65536);
    BOOST_TEST_REQUIRE(!env.write(*f, 0, zero.data(), 65536).first);

    aligned_buffer src(8192);
    fill(src.data() + 3, 1000, 4097, 11);
    auto [ec, n] = env.write(*f, 4097, src.data() + 3, 1000);  // offset, length and address misaligned
    BOOST_TEST_REQUIRE(!ec, ec.message());
    BOOST_TEST(n == 1000u);

    aligned_buffer dst(8192);
    auto [rec, rn] = env.read(*f, 4097, dst.data() + 5, 1000);
    BOOST_TEST_REQUIRE(!rec, rec.message());
    BOOST_TEST(rn == 1000u);
    BOOST_TEST(first_mismatch(dst.data() + 5, 1000, 4097, 11) == npos);

    // An aligned read of the surrounding block sees the bytes in place.
    std::memset(dst.data(), 0xee, 8192);
    BOOST_TEST_REQUIRE(!env.read(*f, 4096, dst.data(), 4096).first);
    BOOST_TEST(dst.data()[0] == 0);
    BOOST_TEST(first_mismatch(dst.data() + 1, 1000, 4097, 11) == npos);
    BOOST_TEST(first_nonzero(dst.data() + 1001, 4096 - 1001) == npos);

    // Aligned offset and length but a misaligned address, and a
    // scatter-gather list with odd sizes.
    fill(src.data() + 1, 4096, 16384, 12);
    BOOST_TEST_REQUIRE(!env.write(*f, 16384, src.data() + 1, 4096).first);
    std::vector<asio::const_buffer> odd{asio::buffer(src.data() + 1, 100), asio::buffer(src.data() + 101, 4000),
                                        asio::buffer(src.data() + 4101, 333)};
    fill(src.data() + 1, 4433, 12345, 13);
    auto [oec, on] = env.write(*f, 12345, odd);
    BOOST_TEST_REQUIRE(!oec, oec.message());
    BOOST_TEST(on == 4433u);
    std::vector<asio::mutable_buffer> odd_r{asio::buffer(dst.data() + 7, 333), asio::buffer(dst.data() + 340, 4100)};
    auto [orec, orn] = env.read(*f, 12345, odd_r);
    BOOST_TEST_REQUIRE(!orec, orec.message());
    BOOST_TEST(orn == 4433u);
    BOOST_TEST(first_mismatch(dst.data() + 7, 4433, 12345, 13) == npos);

    BOOST_TEST_REQUIRE(!env.flush(*f));
    // The file as stored: bytes [4096, 20480).
    const auto raw = env.raw("mis", 4096, 16384);
    BOOST_TEST(raw[0] == 0);
    BOOST_TEST(first_mismatch(raw.data() + 1, 1000, 4097, 11) == npos);
    BOOST_TEST(first_nonzero(raw.data() + 1001, 12345 - 5097) == npos);
    BOOST_TEST(first_mismatch(raw.data() + (12345 - 4096), 4433, 12345, 13) == npos);
    // The odd write covered [12345, 16778); the rest of the 16384 block keeps seed 12.
    BOOST_TEST(first_mismatch(raw.data() + (16778 - 4096), 20480 - 16778, 16778, 12) == npos);
}

// The lock at the file level: a second writer on a file is refused while
// the first holds it, and let in once it is closed; a created file is
// locked before it is truncated, so a refused create leaves it whole.
BOOST_AUTO_TEST_CASE(second_writer_refused_until_close) {
    qed::test::tmp_dir d("lock");
    asio::io_context ioc;
    qed::file_options o;
    o.read_only = false;
    o.create = true;
    std::error_code ec;
    // Two creators share the file, as QEMU's do (create holds write and
    // resize and shares everything); an open writer doesn't share.
    auto made = qed::open_file(ioc.get_executor(), d / "x", o, ec);
    BOOST_TEST_REQUIRE(static_cast<bool>(made), ec.message());
    made.reset();
    o.create = false;
    auto f = qed::open_file(ioc.get_executor(), d / "x", o, ec);
    BOOST_TEST_REQUIRE(static_cast<bool>(f), ec.message());
    aligned_buffer src(4096);
    fill(src.data(), 4096, 0, 9);
    asio::const_buffer cb(src.data(), 4096);
    std::error_code wec;
    f->async_write_at(0, {&cb, 1}, [&](std::error_code e, std::size_t) { wec = e; });
    ioc.run();
    ioc.restart();
    BOOST_TEST_REQUIRE(!wec);
    std::vector<std::string> log;
    o.log = [&](std::string_view l) { log.emplace_back(l); };
    o.create = true;
    auto g = qed::open_file(ioc.get_executor(), d / "x", o, ec);  // create: would truncate
    BOOST_TEST(!g);
    BOOST_TEST((ec == qed::errc::image_locked));
    BOOST_TEST_REQUIRE(log.size() == 1u);
    BOOST_TEST(log[0].find("Failed to get \"write\" lock") != std::string::npos);
    o.create = false;
    o.read_only = true;
    BOOST_TEST(!qed::open_file(ioc.get_executor(), d / "x", o, ec));
    BOOST_TEST(log.back().find("Failed to get shared \"write\" lock") != std::string::npos);
    BOOST_TEST(f->size(ec) == 4096u);
    f.reset();
    o.read_only = false;
    auto h = qed::open_file(ioc.get_executor(), d / "x", o, ec);
    BOOST_TEST(static_cast<bool>(h), ec.message());
}

// Real errors from the kernel, through every real backend: /dev/full takes
// no bytes (ENOSPC) and reads as zeros.
BOOST_DATA_TEST_CASE(write_errors_reach_the_handler, data::make(std::vector<kind>{kind::threads, kind::io_uring}), k) {
    backend_env env(k);
    REQUIRE_BACKEND(env);
    qed::file_options o;
    o.read_only = false;
    o.backend = is_uring(k) ? qed::file_backend::io_uring : qed::file_backend::threads;
    std::error_code ec;
    auto f = qed::open_file(env.ioc.get_executor(), "/dev/full", o, ec);
    if (!f) {
        BOOST_TEST_MESSAGE("/dev/full: " << ec.message() << ": skipped");
        return;
    }
    aligned_buffer buf(16384);
    fill(buf.data(), 16384, 0, 40);
    auto [wec, wn] = env.write(*f, 0, buf.data(), 16384);
    BOOST_TEST((wec == std::errc::no_space_on_device), wec.message());
    BOOST_TEST(wn == 0u);
    std::vector<asio::const_buffer> sg{asio::buffer(buf.data(), 100), asio::buffer(buf.data() + 100, 4000)};
    auto [sec, sn] = env.write(*f, 4096, sg);
    BOOST_TEST((sec == std::errc::no_space_on_device), sec.message());
    BOOST_TEST(sn == 0u);
    auto [rec, rn] = env.read(*f, 0, buf.data(), 16384);
    BOOST_TEST_REQUIRE(!rec, rec.message());
    BOOST_TEST(rn == 16384u);
    BOOST_TEST(first_nonzero(buf.data(), 16384) == npos);
}

namespace {
/// Lowers RLIMIT_FSIZE for the test's lifetime (writes past it fail with
/// EFBIG instead of raising SIGXFSZ, and a write across it comes back short).
struct file_size_limit {
    explicit file_size_limit(rlim_t limit) {
        old_handler = std::signal(SIGXFSZ, SIG_IGN);
        ::getrlimit(RLIMIT_FSIZE, &old);
        rlimit l = old;
        l.rlim_cur = limit;
        ok = ::setrlimit(RLIMIT_FSIZE, &l) == 0;
    }
    ~file_size_limit() {
        ::setrlimit(RLIMIT_FSIZE, &old);
        std::signal(SIGXFSZ, old_handler);
    }
    rlimit old{};
    void (*old_handler)(int) = nullptr;
    bool ok = false;
};
}  // namespace

// A write across the file size limit: the kernel takes the part below it
// (a short write), the backend continues with the rest, which fails with
// EFBIG. The bytes below the limit are in the file; the handler hears the
// error; nothing past the limit exists.
BOOST_DATA_TEST_CASE(short_write_continued_then_failed, data::make(all_kinds), k) {
    if (k == kind::memory) return;  // no kernel behind it
    backend_env env(k);
    REQUIRE_BACKEND(env);
    auto f = env.create("fsize");
    constexpr std::uint64_t limit = 1u << 20;
    aligned_buffer src(65536);
    fill(src.data(), 65536, limit - 16384, 41);
    std::error_code ec;
    {
        file_size_limit lim(limit);
        BOOST_TEST_REQUIRE(lim.ok);
        // Below the limit: fine.
        auto [w0, n0] = env.write(*f, limit - 65536, src.data(), 16384);
        BOOST_TEST_REQUIRE(!w0, w0.message());
        BOOST_TEST(n0 == 16384u);
        // Across it: 16 KiB go in, then EFBIG. As four iovecs, so the short
        // transfer ends inside the list.
        std::vector<asio::const_buffer> sg;
        for (int i = 0; i < 4; ++i) sg.emplace_back(src.data() + i * 8192, 8192);
        auto [w1, n1] = env.write(*f, limit - 16384, sg);
        BOOST_TEST((w1 == std::errc::file_too_large), w1.message());
        // Entirely past it.
        auto [w2, n2] = env.write(*f, limit + 65536, src.data(), 4096);
        BOOST_TEST((w2 == std::errc::file_too_large), w2.message());
        BOOST_TEST(n2 == 0u);
    }
    BOOST_TEST(f->size(ec) == limit);
    const auto raw = env.raw("fsize", limit - 16384, 16384);
    BOOST_TEST(first_mismatch(raw.data(), 16384, limit - 16384, 41) == npos);
}

// The io_context goes away while reads, writes and flushes are in the
// kernel: nothing crashes, no handler runs afterwards, and the writes that
// were in flight each left either their old or their new bytes. Some
// handlers own the file (as an image's do), so it dies during the shutdown;
// the test keeps another file alive past the io_context's end.
BOOST_DATA_TEST_CASE(io_context_destroyed_with_operations_in_flight,
                     data::make(std::vector<kind>{kind::memory, kind::io_uring, kind::io_uring_direct}), k) {
    backend_env env(k);
    REQUIRE_BACKEND(env);
    constexpr std::size_t n = 128, piece = 4096;
    {
        auto f = env.create("gone");
        aligned_buffer zero(n * piece);
        fill(zero.data(), zero.size, 0, 50);
        BOOST_TEST_REQUIRE(!env.write(*f, 0, zero.data(), zero.size).first);
        BOOST_TEST_REQUIRE(!env.flush(*f));
    }
    aligned_buffer src(n * piece), dst(n * piece);
    fill(src.data(), src.size, 0, 51);
    std::atomic<unsigned> ran{0};
    for (int round = 0; round < 20; ++round) {
        auto ioc = std::make_unique<asio::io_context>();
        std::shared_ptr<qed::block_file> kept;
        {
            qed::file_options o;
            o.read_only = false;
            o.direct = is_direct(k);
            o.backend = qed::file_backend::io_uring;
            o.locking = qed::lock_mode::off;  // two handles on one file, on purpose
            std::error_code ec;
            std::shared_ptr<qed::block_file> f = k == kind::memory
                                                     ? qed::make_memory_file(ioc->get_executor(), env.mem.at("gone"))
                                                     : qed::open_file(ioc->get_executor(), env.path("gone"), o, ec);
            BOOST_TEST_REQUIRE(static_cast<bool>(f), ec.message());
            kept = k == kind::memory ? qed::make_memory_file(ioc->get_executor(), env.mem.at("gone"))
                                     : qed::open_file(ioc->get_executor(), env.path("gone"), o, ec);
            BOOST_TEST_REQUIRE(static_cast<bool>(kept), ec.message());
            for (std::size_t i = 0; i < n; ++i) {
                const asio::const_buffer w(src.data() + i * piece, piece);
                f->async_write_at(i * piece, {&w, 1}, [f, &ran](std::error_code, std::size_t) { ++ran; });
                const asio::mutable_buffer r(dst.data() + i * piece, piece);
                kept->async_read_at(i * piece, {&r, 1}, [&ran](std::error_code, std::size_t) { ++ran; });
            }
            f->async_flush([f, &ran](std::error_code) { ++ran; });
        }
        // Let a few completions through on odd rounds, none on even ones.
        if (round % 2) ioc->run_one();
        const unsigned before = ran.load();
        ioc.reset();
        BOOST_TEST(ran.load() == before, "a handler ran after the io_context was destroyed");
        kept.reset();  // after its io_context: must not crash either
    }
    auto f = env.open("gone");
    aligned_buffer got(n * piece);
    BOOST_TEST_REQUIRE(!env.read(*f, 0, got.data(), got.size).first);
    for (std::size_t i = 0; i < n; ++i) {
        const bool old_bytes = first_mismatch(got.data() + i * piece, piece, i * piece, 50) == npos;
        const bool new_bytes = first_mismatch(got.data() + i * piece, piece, i * piece, 51) == npos;
        BOOST_TEST((old_bytes || new_bytes), "block " << i << " has neither its old nor its new bytes");
    }
}

// ===========================================================================
// Files that can't hold an image (issue 15, case 4): a FIFO used to block
// open(2) forever (no writer). Every kind is refused at once, read-only or
// not, buffered or O_DIRECT; a regular file and a block device open.
// ===========================================================================

namespace {

/// Open `p` with open_file; a watchdog thread unblocks an open(2) that waits
/// on a FIFO (by opening its write end) so a regression fails instead of hanging.
std::error_code open_special(const std::string& p, bool read_only, bool direct, bool& blocked) {
    asio::io_context ioc;
    qed::file_options o;
    o.read_only = read_only;
    o.direct = direct;
    std::atomic<bool> done{false};
    blocked = false;
    std::thread watchdog([&] {
        for (int i = 0; i < 100 && !done; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
        if (done) return;
        blocked = true;
        const int fd = ::open(p.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
        if (fd >= 0) ::close(fd);
    });
    std::error_code ec;
    auto f = qed::open_file(ioc.get_executor(), p, o, ec);
    done = true;
    watchdog.join();
    if (f && !ec) return {};
    return ec;
}

}  // namespace

BOOST_AUTO_TEST_CASE(special_files_are_refused_at_once) {
    qed::test::tmp_dir d("special");
    const std::string fifo = d / "fifo", sock = d / "sock", dir = d / "dir", reg = d / "reg";
    BOOST_TEST_REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
    const int s = ::socket(AF_UNIX, SOCK_STREAM, 0);
    BOOST_TEST_REQUIRE(s >= 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    BOOST_TEST_REQUIRE(sock.size() < sizeof addr.sun_path);
    std::strcpy(addr.sun_path, sock.c_str());
    BOOST_TEST_REQUIRE(::bind(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    BOOST_TEST_REQUIRE(::mkdir(dir.c_str(), 0700) == 0);
    { std::ofstream(reg) << "x"; }
    struct special {
        std::string path;
        bool directory;  ///< EISDIR, else errc::not_a_regular_file
    };
    const special cases[] = {
        {fifo, false},
        {sock, false},
        {"/dev/null", false},  // a character device
        {dir, true},
    };
    for (const auto& c : cases)
        for (bool read_only : {true, false})
            for (bool direct : {false, true}) {
                bool blocked = false;
                const auto t0 = std::chrono::steady_clock::now();
                const std::error_code ec = open_special(c.path, read_only, direct, blocked);
                const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
                BOOST_TEST(!blocked, c.path << ": open blocked");
                BOOST_TEST(secs < 2.0, c.path << ": took " << secs << " s");
                // O_DIRECT on tmpfs may fail first with EINVAL: refused either way.
                const bool expected =
                    c.directory ? ec == std::errc::is_a_directory : ec == qed::errc::not_a_regular_file;
                BOOST_TEST((expected || (direct && ec == std::errc::invalid_argument)),
                           c.path << " read_only " << read_only << " direct " << direct << ": " << ec.message());
            }
    ::close(s);
    bool blocked = false;
    BOOST_TEST(!open_special(reg, true, false, blocked));
    BOOST_TEST(!open_special(reg, false, false, blocked));
    BOOST_TEST(make_error_code(qed::errc::not_a_regular_file).message().find("not a regular file") !=
               std::string::npos);
}
